// ktrust ca init | intermediate | revoke | issue | kubernetes-secret
#include <sys/stat.h>

#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "ca_secret.h"
#include "commands.h"
#include "ktrust/common/files.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"
#include "render.h"

namespace ktrust::cli {

namespace {

absl::StatusOr<absl::Duration> ParseDays(const std::string& text) {
  absl::Duration d;
  int64_t days = 0;
  if (!text.empty() && text.back() == 'd' &&
      absl::SimpleAtoi(absl::string_view(text).substr(0, text.size() - 1), &days)) {
    d = absl::Hours(24) * days;
  } else if (!absl::ParseDuration(text, &d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a duration (examples: 1h, 90m, 30d)"));
  }
  return d;
}

}  // namespace

absl::StatusOr<absl::Duration> ParseTtl(const std::string& text) {
  auto d = ParseDays(text);
  if (d.ok() && *d < absl::Seconds(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lifetime \"", text, "\" is too short: certificate times have one-second resolution"));
  }
  return d;
}

absl::StatusOr<absl::Duration> ParseAllowance(const std::string& text) {
  auto d = ParseDays(text);
  if (d.ok() && *d < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat("\"", text, "\" must not be negative"));
  }
  return d;
}

int ReportError(const absl::Status& status) {
  std::cerr << "ktrust: error: " << status.message() << "\n";
  return kFailed;
}

namespace {

struct InitFlags {
  std::string trust_domain, dir, ttl = "365d";
  bool force = false;
};
struct IntermediateFlags {
  std::string ca_dir, name, dir, ttl = "30d";
  std::vector<std::string> scope;
  bool force = false;
};
struct RevokeFlags {
  std::string ca_dir, serial, cert;
};
struct IssueFlags {
  std::string ca_dir, id, out, ttl = "1h";
  bool force = false;
};
struct KubernetesSecretFlags {
  CaSecretOptions secret;
  std::string output;
  bool force = false;
};

int RunInit(const InitFlags& f) {
  auto td = TrustDomain::Parse(f.trust_domain);
  if (!td.ok()) return ReportError(td.status());
  auto ttl = ParseTtl(f.ttl);
  if (!ttl.ok()) return ReportError(ttl.status());
  auto ca = CertificateAuthority::CreateRoot(*td, *ttl, absl::Now());
  if (!ca.ok()) return ReportError(ca.status());
  if (auto st = ca->Save(f.dir, f.force); !st.ok()) return ReportError(st);
  std::cout << "created root CA for " << td->IdString() << " in " << f.dir << "\n"
            << "  ca.crt      the root certificate (valid until "
            << FormatTimestamp(NotAfter(ca->certificate())) << ")\n"
            << "  ca.key      its private key (mode 0600): keep it off the nodes\n"
            << "  bundle.crt  the trust bundle to distribute\n";
  return kOk;
}

int RunIntermediate(const IntermediateFlags& f) {
  auto ttl = ParseTtl(f.ttl);
  if (!ttl.ok()) return ReportError(ttl.status());
  absl::Time now = absl::Now();
  std::vector<SpiffeIdPattern> scope;
  for (const std::string& text : f.scope) {
    auto pattern = SpiffeIdPattern::Parse(text);
    if (!pattern.ok()) return ReportError(pattern.status());
    scope.push_back(*std::move(pattern));
  }
  auto root = CertificateAuthority::Load(f.ca_dir, now);
  if (!root.ok()) return ReportError(root.status());
  auto ca = root->CreateIntermediate(f.name, *ttl, now, scope);
  if (!ca.ok()) return ReportError(ca.status());
  if (auto st = ca->Save(f.dir, f.force); !st.ok()) return ReportError(st);
  auto bound = IssuerScope(ca->certificate());
  std::cout << "created intermediate CA \"" << f.name << "\" for " << ca->trust_domain().IdString()
            << " in " << f.dir << " (valid until " << FormatTimestamp(NotAfter(ca->certificate()))
            << ")\n  it may sign only " << (bound.ok() && *bound ? ScopeString(**bound) : "?")
            << "\n";
  return kOk;
}

int RunRevoke(const RevokeFlags& f) {
  if (f.serial.empty() == f.cert.empty()) {
    return ReportError(absl::InvalidArgumentError("give exactly one of --serial and --cert"));
  }
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::Load(f.ca_dir, now);
  if (!ca.ok()) return ReportError(ca.status());
  std::string serial = f.serial;
  std::string what = absl::StrCat("serial ", serial);
  if (!f.cert.empty()) {
    auto pem = ReadFile(f.cert);
    if (!pem.ok()) return ReportError(pem.status());
    auto certs = ParseCertificates(*pem, f.cert);
    if (!certs.ok()) return ReportError(certs.status());
    X509* cert = certs->front().get();
    // A CRL only speaks for certificates its signer issued.
    if (X509_check_issued(ca->certificate(), cert) != X509_V_OK ||
        X509_verify(cert, X509_get0_pubkey(ca->certificate())) != 1) {
      ERR_clear_error();
      return ReportError(absl::InvalidArgumentError(absl::StrCat(
          f.cert, " (", SubjectString(cert), ") was not issued by the CA in ", f.ca_dir,
          " but by \"", IssuerString(cert), "\": revoke it with the CA that issued it")));
    }
    serial = SerialHex(cert);
    what = absl::StrCat("\"", SubjectString(cert), "\" (serial ", serial, ")");
  }
  std::string crl_path = absl::StrCat(f.ca_dir, "/crl.pem");
  std::string current;
  if (PathExists(crl_path)) {
    auto pem = ReadFile(crl_path);
    if (!pem.ok()) return ReportError(pem.status());
    current = *pem;
  }
  auto crl = ca->Revoke(serial, current, now);
  if (absl::IsAlreadyExists(crl.status())) {
    std::cout << what << " is already revoked in " << crl_path << "\n";
    return kOk;
  }
  if (!crl.ok()) return ReportError(crl.status());
  if (auto st = WriteFileAtomically(crl_path, *crl, 0644); !st.ok()) return ReportError(st);
  std::cout << "revoked " << what << " in " << crl_path << "\n"
            << "  copy it to every node and list it under `crls:`; agents reload it when it "
               "changes\n";
  return kOk;
}

int RunIssue(const IssueFlags& f) {
  auto id = SpiffeId::ParseWorkload(f.id);
  if (!id.ok()) return ReportError(id.status());
  auto ttl = ParseTtl(f.ttl);
  if (!ttl.ok()) return ReportError(ttl.status());
  absl::Time now = absl::Now();
  auto ca = CertificateAuthority::Load(f.ca_dir, now);
  if (!ca.ok()) return ReportError(ca.status());
  auto svid = ca->IssueSvid(*id, *ttl, now);
  if (!svid.ok()) return ReportError(svid.status());
  std::string crt = absl::StrCat(f.out, "/tls.crt");
  std::string key = absl::StrCat(f.out, "/tls.key");
  std::string bundle = absl::StrCat(f.out, "/ca.crt");
  if (!f.force && (PathExists(crt) || PathExists(key))) {
    return ReportError(absl::AlreadyExistsError(
        absl::StrCat(f.out, " already holds tls.crt or tls.key; pass --force to replace them")));
  }
  if (auto st = EnsureDirectory(f.out, 0700); !st.ok()) return ReportError(st);
  auto key_pem = svid->KeyPem();
  if (!key_pem.ok()) return ReportError(key_pem.status());
  // Key first: a reader that sees the new certificate also finds its key.
  if (auto st = WriteFileAtomically(key, key_pem->view(), 0600); !st.ok()) return ReportError(st);
  if (auto st = WriteFileAtomically(crt, svid->ChainPem(), 0644); !st.ok()) return ReportError(st);
  std::string roots;
  for (const auto& root : ca->roots()) roots += ToPem(root.get());
  if (auto st = WriteFileAtomically(bundle, roots, 0644); !st.ok()) return ReportError(st);
  std::cout << "issued " << id->ToString() << " valid until " << FormatTimestamp(svid->not_after())
            << " into " << f.out << " (tls.crt, tls.key, ca.crt)\n";
  return kOk;
}

// The YAML goes to stdout (for `| kubectl apply -f -`) or to --output, what
// it holds to stderr, so that the YAML stays exactly the Secret.
int RunKubernetesSecret(const KubernetesSecretFlags& f) {
  auto secret = KubernetesCaSecret(f.secret, absl::Now());
  if (!secret.ok()) return ReportError(secret.status());
  if (f.output.empty()) {
    std::cout << secret->yaml.view() << std::flush;
  } else {
    if (!f.force && PathExists(f.output)) {
      return ReportError(absl::AlreadyExistsError(
          absl::StrCat(f.output, " already exists; pass --force to replace it")));
    }
    // It holds the CA's private key.
    if (auto st = WriteFileAtomically(f.output, secret->yaml.view(), 0600); !st.ok()) {
      return ReportError(st);
    }
  }
  for (const std::string& line : secret->summary) std::cerr << EscapeForTerminal(line) << "\n";
  if (!f.output.empty()) std::cerr << "  written to " << f.output << " (mode 0600)\n";
  return kOk;
}

}  // namespace

void AddCaCommands(CLI::App& app, int& exit_code) {
  CLI::App* ca = app.add_subcommand("ca", "Run the embedded certificate authority");
  ca->require_subcommand(1);

  auto init = std::make_shared<InitFlags>();
  CLI::App* c = ca->add_subcommand("init", "Create a root CA for a trust domain");
  c->add_option("--trust-domain", init->trust_domain, "e.g. example.org")->required();
  c->add_option("--dir", init->dir, "Directory to create the CA in")->required();
  c->add_option("--ttl", init->ttl, "Root validity (default 365d)");
  c->add_flag("--force", init->force, "Replace an existing CA in --dir");
  c->callback([init, &exit_code] { exit_code = RunInit(*init); });

  auto inter = std::make_shared<IntermediateFlags>();
  c = ca->add_subcommand("intermediate", "Create a per-node intermediate CA signed by the root");
  c->add_option("--ca-dir", inter->ca_dir, "The root CA directory")->required();
  c->add_option("--name", inter->name, "Name of the intermediate, e.g. the node name")->required();
  c->add_option("--dir", inter->dir, "Directory to create the intermediate in")->required();
  c->add_option("--ttl", inter->ttl, "Validity (default 30d, never past the root's)");
  c->add_option("--scope", inter->scope,
                "SPIFFE IDs it may sign, exact or a \"/*\" prefix; repeatable (default "
                "spiffe://<trust domain>/<name>/*)");
  c->add_flag("--force", inter->force, "Replace an existing CA in --dir");
  c->callback([inter, &exit_code] { exit_code = RunIntermediate(*inter); });

  auto revoke = std::make_shared<RevokeFlags>();
  c = ca->add_subcommand("revoke",
                         "Revoke a certificate this CA issued (a node's intermediate: use the "
                         "root); writes <ca-dir>/crl.pem");
  c->add_option("--ca-dir", revoke->ca_dir, "The CA that issued the certificate")->required();
  c->add_option("--serial", revoke->serial, "Its serial, hexadecimal (colons allowed)");
  c->add_option("--cert", revoke->cert, "Its PEM file (the first certificate in it)");
  c->callback([revoke, &exit_code] { exit_code = RunRevoke(*revoke); });

  auto issue = std::make_shared<IssueFlags>();
  c = ca->add_subcommand("issue", "Issue an X.509-SVID to files, for peers outside the mesh");
  c->add_option("--ca-dir", issue->ca_dir, "The CA (root or intermediate) directory")->required();
  c->add_option("--id", issue->id, "SPIFFE ID, e.g. spiffe://example.org/ns/prod/web")->required();
  c->add_option("--out", issue->out, "Directory for tls.crt, tls.key and ca.crt")->required();
  c->add_option("--ttl", issue->ttl, "Lifetime (default 1h)");
  c->add_flag("--force", issue->force, "Replace existing files in --out");
  c->callback([issue, &exit_code] { exit_code = RunIssue(*issue); });

  auto secret = std::make_shared<KubernetesSecretFlags>();
  c = ca->add_subcommand("kubernetes-secret",
                         "Print an intermediate CA as the Secret the Kubernetes DaemonSet mounts "
                         "(never a root)");
  c->add_option("--ca-dir", secret->secret.ca_dir,
                "The intermediate's directory (ktrust ca intermediate --dir)")
      ->required();
  c->add_option("--name", secret->secret.name, "The Secret's name (default ktrust-ca)");
  c->add_option("--namespace", secret->secret.kubernetes_namespace,
                "Its namespace (default ktrust-system)");
  c->add_option("--output", secret->output, "Write the YAML here (mode 0600), not to stdout");
  c->add_flag("--force", secret->force, "Replace an existing --output file");
  c->callback([secret, &exit_code] { exit_code = RunKubernetesSecret(*secret); });
}

}  // namespace ktrust::cli
