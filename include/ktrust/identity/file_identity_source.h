// An identity provided as files in the cert-manager / spiffe-helper layout:
//   tls.crt  the SVID, then its intermediates
//   tls.key  its private key
//   ca.crt   the trust bundle of the SVID's trust domain
// Reloaded when the files change. A broken update (torn write, key mismatch,
// expired certificate, garbage) keeps the previous identity and says why.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/identity/peer_verifier.h"
#include "ktrust/identity/svid.h"
#include "ktrust/identity/trust_bundle.h"

namespace ktrust {

struct FileIdentity {
  Svid svid;
  TrustBundle bundle;
};

class FileIdentitySource {
 public:
  using Clock = std::function<absl::Time()>;

  // The first load must succeed: an agent without an identity cannot enforce.
  static absl::StatusOr<std::unique_ptr<FileIdentitySource>> Create(std::string dir,
                                                                    Clock clock = absl::Now,
                                                                    VerifyOptions verify = {});
  ~FileIdentitySource();

  std::shared_ptr<const FileIdentity> Current() const { return current_.load(); }

  // Re-reads the files; swaps in the new identity if their content changed
  // and it is valid. Returns whether it swapped. On error the previous
  // identity stays and last_error() reports why until the next success.
  absl::StatusOr<bool> ReloadIfChanged();

  // Polls every `interval` on a background thread until destruction.
  void StartWatching(absl::Duration interval);

  std::string last_error() const;
  // How many times a new identity was swapped in.
  uint64_t reloads() const { return reloads_.load(); }

 private:
  using Digest = std::array<unsigned char, 32>;
  FileIdentitySource(std::string dir, Clock clock, VerifyOptions verify)
      : dir_(std::move(dir)), clock_(std::move(clock)), verify_(verify) {}

  // Reads and validates the three files; `digest` identifies their content.
  absl::StatusOr<FileIdentity> LoadFiles(Digest& digest) const;

  const std::string dir_;
  const Clock clock_;
  const VerifyOptions verify_;
  std::atomic<std::shared_ptr<const FileIdentity>> current_;
  std::atomic<uint64_t> reloads_{0};

  mutable absl::Mutex mu_;
  Digest loaded_digest_ ABSL_GUARDED_BY(mu_){};
  std::string last_error_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watcher_;
};

}  // namespace ktrust
