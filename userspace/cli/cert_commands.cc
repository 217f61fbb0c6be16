// ktrust cert inspect
#include <iostream>

#include "absl/strings/str_cat.h"
#include "commands.h"
#include "ktrust/common/files.h"
#include "ktrust/identity/peer_verifier.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"
#include "render.h"

namespace ktrust::cli {
namespace {

struct InspectFlags {
  std::string file;
  std::string bundle;
  std::string skew = "60s";
};

std::string Relative(absl::Time t, absl::Time now) {
  return t >= now ? absl::StrCat("in ", FormatAge(t - now))
                  : absl::StrCat(FormatAge(now - t), " ago");
}

void PrintCertificate(X509* cert, size_t index, size_t count, absl::Time now) {
  std::cout << "certificate " << index + 1 << " of " << count << "\n";
  std::vector<std::string> uris = UriSans(cert);
  if (IsCa(cert)) {
    std::cout << "  kind         CA certificate"
              << (X509_check_issued(cert, cert) == X509_V_OK ? " (self-signed root)" : "") << "\n";
    for (const auto& uri : uris) std::cout << "  trust domain " << EscapeForTerminal(uri) << "\n";
  } else {
    PeerVerdict shape = CheckLeafSvidRules(cert);
    if (shape.ok()) {
      std::cout << "  SPIFFE ID    " << shape.peer_id->ToString() << "\n"
                << "  kind         workload X.509-SVID\n";
    } else {
      // The certificate's author chose these: escaped, like all peer text.
      for (const auto& uri : uris) std::cout << "  URI SAN      " << EscapeForTerminal(uri) << "\n";
      std::cout << "  kind         not an X.509-SVID: " << EscapeForTerminal(shape.explanation)
                << "\n";
    }
  }
  absl::Time nb = NotBefore(cert), na = NotAfter(cert);
  std::cout << "  subject      " << EscapeForTerminal(SubjectString(cert)) << "\n"
            << "  issuer       " << EscapeForTerminal(IssuerString(cert)) << "\n"
            << "  serial       " << SerialHex(cert) << "\n"
            << "  valid from   " << FormatTimestamp(nb) << " (" << Relative(nb, now) << ")\n"
            << "  valid until  " << FormatTimestamp(na) << " (" << Relative(na, now) << ")"
            << (na < now   ? "  EXPIRED"
                : nb > now ? "  NOT YET VALID"
                           : "")
            << "\n";
}

// The trust domain a bundle file belongs to: its roots' URI SAN when they
// carry one (ktrust roots do), else the one the leaf claims.
absl::StatusOr<TrustDomain> BundleTrustDomain(absl::string_view bundle_pem, const std::string& path,
                                              const TrustDomain& fallback) {
  auto roots = ParseCertificates(bundle_pem, path);
  if (!roots.ok()) return roots.status();
  for (const auto& root : *roots) {
    for (const auto& uri : UriSans(root.get())) {
      if (auto td = TrustDomain::Parse(uri); td.ok()) return td;
    }
  }
  return fallback;
}

int RunInspect(const InspectFlags& f) {
  auto skew = ParseAllowance(f.skew);
  if (!skew.ok()) return ReportError(skew.status());
  auto pem = ReadFile(f.file);
  if (!pem.ok()) return ReportError(pem.status());
  auto chain = ParseCertificates(*pem, f.file);
  if (!chain.ok()) return ReportError(chain.status());
  absl::Time now = absl::Now();
  std::cout << f.file << "\n";
  for (size_t i = 0; i < chain->size(); ++i)
    PrintCertificate((*chain)[i].get(), i, chain->size(), now);
  if (f.bundle.empty()) return kOk;

  X509* leaf = chain->front().get();
  PeerVerdict shape = CheckLeafSvidRules(leaf);
  PeerVerdict verdict = shape;
  if (shape.ok()) {
    auto bundle_pem = ReadFile(f.bundle);
    if (!bundle_pem.ok()) return ReportError(bundle_pem.status());
    auto td = BundleTrustDomain(*bundle_pem, f.bundle, shape.peer_id->trust_domain());
    if (!td.ok()) return ReportError(td.status());
    auto bundle = TrustBundle::FromPem(*td, *bundle_pem);
    if (!bundle.ok()) {
      return ReportError(
          absl::InvalidArgumentError(absl::StrCat(f.bundle, ": ", bundle.status().message())));
    }
    TrustStore store;
    store.Put(*std::move(bundle));
    std::vector<X509*> intermediates;
    for (size_t i = 1; i < chain->size(); ++i) intermediates.push_back((*chain)[i].get());
    VerifyOptions options;
    options.clock_skew = *skew;
    verdict = VerifyPeerChain(store, leaf, intermediates, options, now);
  }
  if (verdict.ok()) {
    std::cout << "verifies against " << f.bundle << ": yes, as " << verdict.peer_id->ToString()
              << " until " << FormatTimestamp(verdict.not_after) << "\n";
    return kOk;
  }
  std::cout << "verifies against " << f.bundle << ": NO (" << ReasonCode(verdict.reason)
            << "): " << EscapeForTerminal(verdict.explanation) << "\n";
  return kFailed;
}

}  // namespace

void AddCertCommands(CLI::App& app, int& exit_code) {
  CLI::App* cert = app.add_subcommand("cert", "Look at certificates");
  cert->require_subcommand(1);
  auto inspect = std::make_shared<InspectFlags>();
  CLI::App* c = cert->add_subcommand("inspect",
                                     "Show a certificate file's SPIFFE ID and validity, "
                                     "and whether it verifies against a bundle");
  c->add_option("file", inspect->file, "PEM file (a chain: leaf first)")->required();
  c->add_option("--bundle", inspect->bundle, "Trust bundle PEM to verify against");
  c->add_option("--clock-skew", inspect->skew, "Allowed clock skew (default 60s)");
  c->callback([inspect, &exit_code] { exit_code = RunInspect(*inspect); });
}

}  // namespace ktrust::cli
