#include "ktrust/identity/peer_verifier.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "ktrust/identity/svid_rules.h"
#include "ktrust/identity/x509.h"

namespace ktrust {
namespace {

PeerVerdict RejectChainError(int error, X509* failing, const SpiffeId& id, int depth) {
  std::string who = depth == 0 ? absl::StrCat("the certificate for ", id.ToString())
                               : absl::StrCat("CA certificate \"", SubjectString(failing), "\"");
  switch (error) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      return PeerVerdict::Reject(
          RejectReason::kUnknownAuthority,
          absl::StrCat(who, " is issued by an authority not in the trust bundle for ",
                       id.trust_domain().name(), " (issuer ",
                       failing ? IssuerString(failing) : "unknown", ")"));
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
      return PeerVerdict::Reject(RejectReason::kBadSignature,
                                 absl::StrCat("the signature on ", who, " does not verify"));
    case X509_V_ERR_CERT_REVOKED:
      return PeerVerdict::Reject(
          RejectReason::kRevoked,
          absl::StrCat(who, " (serial ", failing ? SerialHex(failing) : "?", ") is revoked"));
    case X509_V_ERR_UNABLE_TO_GET_CRL:
      return PeerVerdict::Reject(
          RejectReason::kRevoked,
          absl::StrCat("no CRL covers ", who, ", and the trust bundle for ",
                       id.trust_domain().name(), " requires revocation checks"));
    case X509_V_ERR_INVALID_PURPOSE:
      return PeerVerdict::Reject(
          RejectReason::kBadKeyUsage,
          absl::StrCat(who, " is not allowed for this TLS role (extended key usage)"));
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
      return PeerVerdict::Reject(RejectReason::kChainInvalid,
                                 absl::StrCat("the chain for ", id.ToString(), " is too long"));
    default:
      return PeerVerdict::Reject(
          RejectReason::kChainInvalid,
          absl::StrCat(who, " failed chain verification: ", X509_verify_cert_error_string(error)));
  }
}

// Validity with the skew allowance. OpenSSL's own time check has no allowance
// and no useful wording, so the chain is built without it and every
// certificate of the built chain is checked here instead.
PeerVerdict CheckValidity(STACK_OF(X509) * chain, const SpiffeId& id, const VerifyOptions& options,
                          absl::Time now) {
  absl::Time earliest_not_after = absl::InfiniteFuture();
  for (int i = 0; i < sk_X509_num(chain); ++i) {
    X509* cert = sk_X509_value(chain, i);
    std::string who =
        i == 0 ? "certificate" : absl::StrCat("CA certificate \"", SubjectString(cert), "\"");
    std::string suffix = i == 0 ? absl::StrCat(" for ", id.ToString()) : "";
    absl::Time not_before = NotBefore(cert);
    absl::Time not_after = NotAfter(cert);
    if (now > not_after + options.clock_skew) {
      return PeerVerdict::Reject(RejectReason::kExpired,
                                 absl::StrCat(who, suffix, " expired ", FormatAge(now - not_after),
                                              " ago (notAfter ", FormatTimestamp(not_after), ")"));
    }
    if (now + options.clock_skew < not_before) {
      return PeerVerdict::Reject(
          RejectReason::kNotYetValid,
          absl::StrCat(who, suffix, " is not valid until ", FormatTimestamp(not_before), ", ",
                       FormatAge(not_before - now), " from now; the allowed clock skew is ",
                       FormatAge(options.clock_skew),
                       ", so check that this node's clock and the issuer's are synchronised"));
    }
    earliest_not_after = std::min(earliest_not_after, not_after);
  }
  return PeerVerdict::Accept(id, earliest_not_after);
}

}  // namespace

PeerVerdict VerifyPeerChain(const TrustStore& trust, X509* leaf,
                            const std::vector<X509*>& untrusted, const VerifyOptions& options,
                            absl::Time now) {
  if (leaf == nullptr) {
    return PeerVerdict::Reject(RejectReason::kNoCertificate, "the peer sent no certificate");
  }
  PeerVerdict shape = CheckLeafSvidRules(leaf);
  if (!shape.ok()) return shape;
  const SpiffeId& id = *shape.peer_id;

  const TrustBundle* bundle = trust.Find(id.trust_domain());
  if (bundle == nullptr) {
    std::vector<std::string> known = trust.TrustDomainNames();
    return PeerVerdict::Reject(RejectReason::kUntrustedTrustDomain,
                               absl::StrCat("trust domain ", id.trust_domain().name(), " (of ",
                                            id.ToString(), ") is not trusted here; trusted: ",
                                            known.empty() ? "none" : absl::StrJoin(known, ", ")));
  }

  X509StackPtr chain_in(sk_X509_new_null());
  for (X509* cert : untrusted) sk_X509_push(chain_in.get(), cert);
  X509StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), bundle->store(), leaf, chain_in.get()) != 1) {
    ERR_clear_error();
    return PeerVerdict::Reject(RejectReason::kChainInvalid, "could not set up chain verification");
  }
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
  // Time is checked below with the skew allowance (CheckValidity), never skipped.
  unsigned long flags = X509_V_FLAG_NO_CHECK_TIME | X509_V_FLAG_X509_STRICT;
  if (bundle->has_crls()) flags |= X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL;
  X509_VERIFY_PARAM_set_flags(param, flags);
  // OpenSSL's depth counts the certificates above the leaf, root excluded.
  X509_VERIFY_PARAM_set_depth(param, options.max_chain_length - 2);
  if (options.purpose != 0) X509_STORE_CTX_set_purpose(ctx.get(), options.purpose);

  if (X509_verify_cert(ctx.get()) != 1) {
    int error = X509_STORE_CTX_get_error(ctx.get());
    int depth = X509_STORE_CTX_get_error_depth(ctx.get());
    X509* failing = X509_STORE_CTX_get_current_cert(ctx.get());
    ERR_clear_error();
    return RejectChainError(error, failing, id, depth);
  }
  return CheckValidity(X509_STORE_CTX_get0_chain(ctx.get()), id, options, now);
}

}  // namespace ktrust
