#include "ca_secret.h"

#include <openssl/crypto.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/files.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"

namespace ktrust::cli {

namespace {

// RFC 1123 label (a namespace) or subdomain (a Secret's name), as the API
// server checks them: a name that fails here would fail `kubectl apply`.
absl::Status CheckName(const std::string& name, bool subdomain, absl::string_view what) {
  size_t limit = subdomain ? 253 : 63;
  bool ok = !name.empty() && name.size() <= limit && absl::ascii_isalnum(name.front()) &&
            absl::ascii_isalnum(name.back());
  for (char c : name) {
    ok = ok && ((absl::ascii_islower(c) || absl::ascii_isdigit(c) || c == '-') ||
                (subdomain && c == '.'));
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, " \"", name, "\" is not a Kubernetes name: lower-case letters, digits and '-'",
      subdomain ? " or '.'" : "", ", starting and ending with a letter or digit, at most ", limit,
      " characters"));
}

}  // namespace

absl::StatusOr<CaSecret> KubernetesCaSecret(const CaSecretOptions& options, absl::Time now) {
  if (auto st = CheckName(options.name, /*subdomain=*/true, "Secret name"); !st.ok()) return st;
  if (auto st = CheckName(options.kubernetes_namespace, /*subdomain=*/false, "namespace");
      !st.ok()) {
    return st;
  }
  auto ca = CertificateAuthority::Load(options.ca_dir, now);
  if (!ca.ok()) return ca.status();
  if (ca->is_root()) {
    return absl::FailedPreconditionError(absl::StrCat(
        options.ca_dir,
        " holds a root CA: its key must never enter the cluster. Make a cluster intermediate "
        "from it (ktrust ca intermediate --ca-dir ",
        options.ca_dir, " --name cluster --dir cluster-ca --scope 'spiffe://",
        ca->trust_domain().name(), "/ns/*') and give that directory"));
  }
  // The files as they are: Load checked them, and the agent reads these bytes.
  auto file = [&](absl::string_view name) { return absl::StrCat(options.ca_dir, "/", name); };
  auto cert = ReadFile(file("ca.crt"));
  if (!cert.ok()) return cert.status();
  auto key = ReadPrivateKeyFile(file("ca.key"));
  if (!key.ok()) return key.status();
  auto bundle = ReadFile(file("bundle.crt"));
  if (!bundle.ok()) return bundle.status();

  auto scope = IssuerScope(ca->certificate());
  std::string may_sign = scope.ok() && *scope
                             ? ScopeString(**scope)
                             : absl::StrCat("any ID of ", ca->trust_domain().IdString());
  std::string not_after = FormatTimestamp(NotAfter(ca->certificate()));
  CaSecret out;
  std::string key_base64 = absl::Base64Escape(key->view());
  out.yaml = Secret(
      absl::StrCat("# The CA of ktrust's DaemonSet (tools/kubernetes, docs/kubernetes.md): an\n"
                   "# intermediate of ",
                   ca->trust_domain().IdString(), ", valid until ", not_after,
                   ". Made by `ktrust ca kubernetes-secret`.\n"
                   "# It holds a private key: apply it, do not commit it.\n"
                   "apiVersion: v1\n"
                   "kind: Secret\n"
                   "metadata:\n"
                   "  name: ",
                   options.name,
                   "\n"
                   "  namespace: ",
                   options.kubernetes_namespace,
                   "\n"
                   "type: Opaque\n"
                   "data:\n"
                   "  bundle.crt: ",
                   absl::Base64Escape(*bundle),
                   "\n"
                   "  ca.crt: ",
                   absl::Base64Escape(*cert),
                   "\n"
                   "  ca.key: ",
                   key_base64, "\n"));
  OPENSSL_cleanse(key_base64.data(), key_base64.size());
  out.summary = {
      absl::StrCat("Secret ", options.kubernetes_namespace, "/", options.name,
                   ": the intermediate \"", SubjectString(ca->certificate()), "\" of ",
                   ca->trust_domain().IdString(), ", valid until ", not_after),
      absl::StrCat("  it may sign ", may_sign),
      absl::StrCat("  the ConfigMap's trust_domain must be ", ca->trust_domain().name())};
  return out;
}

}  // namespace ktrust::cli
