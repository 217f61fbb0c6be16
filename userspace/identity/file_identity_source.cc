#include "ktrust/identity/file_identity_source.h"

#include <openssl/evp.h>

#include "absl/strings/str_cat.h"
#include "ktrust/common/files.h"
#include "ktrust/identity/x509.h"

namespace ktrust {

absl::StatusOr<std::unique_ptr<FileIdentitySource>> FileIdentitySource::Create(
    std::string dir, Clock clock, VerifyOptions verify) {
  std::unique_ptr<FileIdentitySource> source(
      new FileIdentitySource(std::move(dir), std::move(clock), verify));
  Digest digest{};
  auto identity = source->LoadFiles(digest);
  if (!identity.ok()) return identity.status();
  source->current_.store(std::make_shared<const FileIdentity>(*std::move(identity)));
  absl::MutexLock lock(&source->mu_);
  source->loaded_digest_ = digest;
  return source;
}

FileIdentitySource::~FileIdentitySource() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
}

absl::StatusOr<FileIdentity> FileIdentitySource::LoadFiles(Digest& digest) const {
  std::string crt_path = absl::StrCat(dir_, "/tls.crt");
  std::string key_path = absl::StrCat(dir_, "/tls.key");
  std::string ca_path = absl::StrCat(dir_, "/ca.crt");
  auto crt = ReadFile(crt_path);
  if (!crt.ok()) return crt.status();
  auto key = ReadPrivateKeyFile(key_path);
  if (!key.ok()) return key.status();
  auto ca = ReadFile(ca_path);
  if (!ca.ok()) return ca.status();

  // Hash what was read, not file metadata: cert-manager swaps a symlink, and
  // mtimes can repeat within a second.
  unsigned int len = 0;
  std::unique_ptr<EVP_MD_CTX, OpenSslDeleter<EVP_MD_CTX_free>> md(EVP_MD_CTX_new());
  if (!md || EVP_DigestInit_ex(md.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(md.get(), crt->data(), crt->size()) != 1 ||
      EVP_DigestUpdate(md.get(), key->view().data(), key->view().size()) != 1 ||
      EVP_DigestUpdate(md.get(), ca->data(), ca->size()) != 1 ||
      EVP_DigestFinal_ex(md.get(), digest.data(), &len) != 1) {
    return OpenSslError("hash identity files");
  }

  auto svid = Svid::FromPem(*crt, *key);
  if (!svid.ok())
    return absl::InvalidArgumentError(absl::StrCat(crt_path, ": ", svid.status().message()));
  auto bundle = TrustBundle::FromPem(svid->id().trust_domain(), *ca);
  if (!bundle.ok())
    return absl::InvalidArgumentError(absl::StrCat(ca_path, ": ", bundle.status().message()));

  // Our own SVID must pass the checks our peers will apply.
  TrustStore store;
  store.Put(*bundle);
  std::vector<X509*> intermediates;
  for (size_t i = 1; i < svid->chain().size(); ++i) intermediates.push_back(svid->chain()[i].get());
  PeerVerdict verdict = VerifyPeerChain(store, svid->leaf(), intermediates, verify_, clock_());
  if (!verdict.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat(crt_path, " does not verify against ", ca_path, ": ", verdict.explanation));
  }
  return FileIdentity{*std::move(svid), *std::move(bundle)};
}

absl::StatusOr<bool> FileIdentitySource::ReloadIfChanged() {
  Digest digest{};
  auto identity = LoadFiles(digest);
  absl::MutexLock lock(&mu_);
  if (!identity.ok()) {
    last_error_ = absl::StrCat("keeping the previous identity: ", identity.status().message());
    return absl::Status(identity.status().code(), last_error_);
  }
  last_error_.clear();
  if (digest == loaded_digest_) return false;
  loaded_digest_ = digest;
  current_.store(std::make_shared<const FileIdentity>(*std::move(identity)));
  reloads_.fetch_add(1);
  return true;
}

void FileIdentitySource::StartWatching(absl::Duration interval) {
  watcher_ = std::thread([this, interval] {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval)) return;
      }
      (void)ReloadIfChanged();  // errors are kept in last_error()
    }
  });
}

std::string FileIdentitySource::last_error() const {
  absl::MutexLock lock(&mu_);
  return last_error_;
}

}  // namespace ktrust
