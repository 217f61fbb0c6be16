// The SVIDs this node presents, one per workload SPIFFE ID: issued on first
// need by the embedded CA (or read from per-workload SVID files) and renewed
// at half-life. Handshakes fetch the current SVID through an SvidProvider,
// so renewal never disturbs an established connection.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "ktrust/config/config.h"
#include "ktrust/dataplane/engine.h"
#include "ktrust/identity/certificate_authority.h"
#include "ktrust/identity/file_identity_source.h"
#include "ktrust/identity/svid_rotator.h"
#include "ktrust/identity/trust_bundle.h"

namespace ktrust {

class WorkloadIdentities {
 public:
  // Embedded CA: loads identity.ca_dir, or creates a root CA there when the
  // directory holds none. SVID files: identity.svid_dir/<workload>/.
  static absl::StatusOr<std::unique_ptr<WorkloadIdentities>> Create(const Config& config,
                                                                    absl::Time now);

  // The provider for a workload's ID; the first call issues its SVID (an
  // error here refuses the connection, never presents another identity).
  absl::StatusOr<SvidProvider> ProviderFor(const SpiffeId& id, const std::string& workload);

  // What peers are verified against: for the local trust domain the CA's
  // bundle plus its trust_bundles entries (several roots during a CA
  // rotation); for each other domain its own entries; the configured CRLs. With `next_ca`, the
  // bundle of that CA instead of the one in use (a reload about to install it).
  absl::StatusOr<std::shared_ptr<const TrustStore>> LoadTrustStore(
      const Config& config, const CertificateAuthority* next_ca = nullptr) const;

  // Renews what is due; returns the errors (the old SVIDs stay in use).
  std::vector<std::string> RotateDue(absl::Time now);

  // For a reload, changing nothing yet: the CA now in identity.ca_dir when
  // its certificates or its bundle differ from the one in use; nullptr when
  // they are the same, or with SVID files. An error when the directory does
  // not hold a valid CA of the trust domain.
  absl::StatusOr<std::shared_ptr<const CertificateAuthority>> LoadChangedCa(const Config& config,
                                                                            absl::Time now) const;
  // Puts a CA from LoadChangedCa in use. When the issuing certificate changed
  // (CA rotation), every workload gets an SVID from it at once; established
  // connections keep theirs. Returns how many SVIDs were re-issued; a failed
  // one is logged and its workload keeps the SVID it had.
  size_t InstallCa(std::shared_ptr<const CertificateAuthority> ca, absl::Time now);

  struct Issued {
    std::string id;
    std::string workload;
    absl::Time not_after;
  };
  std::vector<Issued> Snapshot() const;
  // The issuing CA's expiry (InfinitePast in SVID-files mode).
  absl::Time ca_expires_at() const;

 private:
  struct Entry {
    std::string workload;
    std::shared_ptr<SvidRotator> rotator;             // embedded CA
    std::shared_ptr<FileIdentitySource> file_source;  // SVID files
  };
  explicit WorkloadIdentities(IdentityConfig config) : config_(std::move(config)) {}
  std::shared_ptr<const CertificateAuthority> ca() const;
  absl::StatusOr<Entry> MakeEntry(const SpiffeId& id, const std::string& workload) const;

  IdentityConfig config_;
  mutable absl::Mutex mu_;
  std::shared_ptr<const CertificateAuthority> ca_ ABSL_GUARDED_BY(mu_);
  std::string ca_pem_ ABSL_GUARDED_BY(mu_);     // to notice a replaced CA...
  std::string roots_pem_ ABSL_GUARDED_BY(mu_);  // ...or a new bundle.crt
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
};

}  // namespace ktrust
