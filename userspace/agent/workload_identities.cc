#include "ktrust/agent/workload_identities.h"

#include <map>

#include "absl/strings/str_cat.h"
#include "ktrust/common/files.h"
#include "ktrust/common/log.h"
#include "ktrust/identity/x509.h"

namespace ktrust {
namespace {

absl::StatusOr<CertificateAuthority> LoadOrCreateCa(const Config& config, absl::Time now) {
  const std::string& dir = config.identity.ca_dir;
  if (PathExists(dir + "/ca.crt") || PathExists(dir + "/ca.key")) {
    return CertificateAuthority::Load(dir, now);
  }
  // First start of a single-node install: a fresh root, key mode 0600.
  auto td = TrustDomain::Parse(config.trust_domain);
  if (!td.ok()) return td.status();
  auto ca = CertificateAuthority::CreateRoot(*td, kDefaultRootValidity, now);
  if (!ca.ok()) return ca.status();
  if (auto st = ca->Save(dir, /*force=*/false); !st.ok()) return st;
  LogEvent(spdlog::level::warn,
           {{"event", "ca_created"},
            {"dir", dir},
            {"reason", "no CA in the configured directory: a new root CA was generated"}});
  return ca;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WorkloadIdentities>> WorkloadIdentities::Create(const Config& config,
                                                                               absl::Time now) {
  std::unique_ptr<WorkloadIdentities> ids(new WorkloadIdentities(config.identity));
  if (config.identity.source == IdentityConfig::Source::kEmbeddedCa) {
    auto ca = LoadOrCreateCa(config, now);
    if (!ca.ok()) return ca.status();
    if (ca->trust_domain().name() != config.trust_domain) {
      return absl::FailedPreconditionError(
          absl::StrCat("the CA in ", config.identity.ca_dir, " belongs to trust domain ",
                       ca->trust_domain().name(), ", not ", config.trust_domain));
    }
    absl::MutexLock lock(&ids->mu_);
    ids->ca_pem_ = ToPem(ca->chain());
    ids->roots_pem_ = ToPem(ca->roots());
    ids->ca_ = std::make_shared<const CertificateAuthority>(*std::move(ca));
  }
  return ids;
}

std::shared_ptr<const CertificateAuthority> WorkloadIdentities::ca() const {
  absl::MutexLock lock(&mu_);
  return ca_;
}

absl::StatusOr<WorkloadIdentities::Entry> WorkloadIdentities::MakeEntry(
    const SpiffeId& id, const std::string& workload) const {
  Entry entry;
  entry.workload = workload;
  if (ca()) {
    absl::Duration ttl = config_.svid_ttl;
    // The issuer asks for the CA each time, so renewals after a CA rotation
    // come from the new CA.
    auto rotator = SvidRotator::Create(
        [this, id, ttl](absl::Time now) { return ca()->IssueSvid(id, ttl, now); }, absl::Now());
    if (!rotator.ok()) return rotator.status();
    entry.rotator = *std::move(rotator);
    return entry;
  }
  std::string dir = absl::StrCat(config_.svid_dir, "/", workload);
  auto source = FileIdentitySource::Create(dir);
  if (!source.ok()) return source.status();
  if ((*source)->Current()->svid.id() != id) {
    return absl::FailedPreconditionError(absl::StrCat("the SVID in ", dir, " is for ",
                                                      (*source)->Current()->svid.id().ToString(),
                                                      ", but the workload is ", id.ToString()));
  }
  (*source)->StartWatching(absl::Seconds(5));
  entry.file_source = *std::move(source);
  return entry;
}

absl::StatusOr<SvidProvider> WorkloadIdentities::ProviderFor(const SpiffeId& id,
                                                             const std::string& workload) {
  std::string key = id.ToString();
  std::optional<Entry> found;
  {
    absl::MutexLock lock(&mu_);
    if (auto it = entries_.find(key); it != entries_.end()) found = it->second;
  }
  if (!found) {
    // Issued without the lock: issuing reads the CA under it.
    auto made = MakeEntry(id, workload);
    if (!made.ok()) return made.status();
    absl::MutexLock lock(&mu_);
    found = entries_.emplace(key, *std::move(made)).first->second;
  }
  if (auto rotator = found->rotator) {
    return SvidProvider([rotator] { return rotator->Current(); });
  }
  auto source = found->file_source;
  return SvidProvider([source] {
    auto current = source->Current();
    return std::shared_ptr<const Svid>(current, &current->svid);
  });
}

absl::StatusOr<std::shared_ptr<const TrustStore>> WorkloadIdentities::LoadTrustStore(
    const Config& config, const CertificateAuthority* next_ca) const {
  auto td = TrustDomain::Parse(config.trust_domain);
  if (!td.ok()) return td.status();
  // Roots per trust domain, from files bound to that domain only: a root
  // never vouches for a domain the configuration did not give it to.
  std::map<std::string, std::string> roots;
  std::shared_ptr<const CertificateAuthority> in_use = ca();
  if (const CertificateAuthority* issuing = next_ca ? next_ca : in_use.get()) {
    roots[td->name()] = ToPem(issuing->roots());
  } else {
    auto bundle = ReadFile(config.identity.svid_dir + "/bundle.crt");
    if (bundle.ok()) roots[td->name()] = *bundle;
  }
  for (const TrustBundleFile& file : config.trust_bundles) {
    auto pem = ReadFile(file.path);
    if (!pem.ok()) return pem.status();
    absl::StrAppend(&roots[file.trust_domain], *pem);
  }
  // A missing CRL file fails the load: a typo must not quietly unrevoke.
  std::string crls;
  for (const std::string& path : config.crls) {
    auto pem = ReadFile(path);
    if (!pem.ok()) return pem.status();
    if (auto parsed = ParseCrls(*pem, path); !parsed.ok()) return parsed.status();
    absl::StrAppend(&crls, *pem);
  }
  auto store = std::make_shared<TrustStore>();
  for (const auto& [name, pem] : roots) {
    auto domain = TrustDomain::Parse(name);
    if (!domain.ok()) return domain.status();
    auto bundle = TrustBundle::FromPem(*domain, pem, crls);
    if (!bundle.ok()) return bundle.status();
    store->Put(*std::move(bundle));
  }
  if (store->Find(*td) == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("no roots for the local trust domain ",
                                                      td->name(), " (", config.identity.svid_dir,
                                                      "/bundle.crt or a trust_bundles entry)"));
  }
  return store;
}

std::vector<std::string> WorkloadIdentities::RotateDue(absl::Time now) {
  std::vector<std::shared_ptr<SvidRotator>> rotators;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, entry] : entries_) {
      if (entry.rotator) rotators.push_back(entry.rotator);
    }
  }
  std::vector<std::string> errors;
  for (auto& r : rotators) {
    if (auto st = r->RotateIfDue(now); !st.ok()) errors.push_back(std::string(st.message()));
  }
  return errors;
}

absl::StatusOr<std::shared_ptr<const CertificateAuthority>> WorkloadIdentities::LoadChangedCa(
    const Config& config, absl::Time now) const {
  // The source is chosen at start; with SVID files there is no CA to reload.
  if (config.identity.source != IdentityConfig::Source::kEmbeddedCa || !ca()) return nullptr;
  auto ca = CertificateAuthority::Load(config.identity.ca_dir, now);
  if (!ca.ok()) return ca.status();
  if (ca->trust_domain().name() != config.trust_domain) {
    return absl::FailedPreconditionError(
        absl::StrCat("the CA in ", config.identity.ca_dir, " belongs to trust domain ",
                     ca->trust_domain().name(), ", not ", config.trust_domain));
  }
  {
    absl::MutexLock lock(&mu_);
    if (ToPem(ca->chain()) == ca_pem_ && ToPem(ca->roots()) == roots_pem_) return nullptr;
  }
  return std::make_shared<const CertificateAuthority>(*std::move(ca));
}

size_t WorkloadIdentities::InstallCa(std::shared_ptr<const CertificateAuthority> ca,
                                     absl::Time now) {
  std::string chain_pem = ToPem(ca->chain());
  std::vector<std::pair<std::string, std::shared_ptr<SvidRotator>>> rotators;
  {
    absl::MutexLock lock(&mu_);
    bool new_issuer = chain_pem != ca_pem_;
    ca_pem_ = chain_pem;
    roots_pem_ = ToPem(ca->roots());
    ca_ = std::move(ca);
    if (!new_issuer) return 0;  // only the bundle changed: the SVIDs still chain to it
    for (auto& [id, entry] : entries_) {
      if (entry.rotator) rotators.emplace_back(id, entry.rotator);
    }
  }
  // New handshakes present SVIDs of the new CA from now on; established
  // connections keep theirs. Issued at `now`: renewals read the CA each time.
  size_t reissued = 0;
  for (auto& [id, rotator] : rotators) {
    if (auto st = rotator->RotateNow(now); !st.ok()) {
      LogEvent(spdlog::level::err,
               {{"event", "svid_renewal_failed"}, {"id", id}, {"reason", st.message()}});
    } else {
      ++reissued;
    }
  }
  return reissued;
}

std::vector<WorkloadIdentities::Issued> WorkloadIdentities::Snapshot() const {
  std::vector<Issued> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : entries_) {
    std::shared_ptr<const Svid> svid;
    if (entry.rotator) {
      svid = entry.rotator->Current();
    } else {
      auto current = entry.file_source->Current();
      svid = std::shared_ptr<const Svid>(current, &current->svid);
    }
    out.push_back({id, entry.workload, svid->not_after()});
  }
  return out;
}

absl::Time WorkloadIdentities::ca_expires_at() const {
  auto ca_now = ca();
  return ca_now ? NotAfter(ca_now->certificate()) : absl::InfinitePast();
}

}  // namespace ktrust
