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
      return PeerVerdict::Reject(RejectReason::kBadSignature,
                                 absl::StrCat("the signature on ", who, " does not verify"));
    case X509_V_ERR_INVALID_PURPOSE:
      return PeerVerdict::Reject(
          RejectReason::kBadKeyUsage,
          absl::StrCat(who, " is not allowed for this TLS role (extended key usage)"));
    case X509_V_ERR_PERMITTED_VIOLATION:
    case X509_V_ERR_EXCLUDED_VIOLATION:
      return PeerVerdict::Reject(
          RejectReason::kOutsideIssuerScope,
          absl::StrCat(id.ToString(), " is outside the name constraints of an issuing CA"));
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

// Each certificate against the CRLs its issuer (the next one up the built
// chain) signed. A CRL is matched by issuer name and then by signature, so a
// same-named CA under another root (rotation) cannot revoke, nor be
// revoked by, the wrong CRL.
PeerVerdict CheckRevocation(STACK_OF(X509) * chain, const TrustBundle& bundle, const SpiffeId& id) {
  for (int i = 0; i + 1 < sk_X509_num(chain); ++i) {
    X509* cert = sk_X509_value(chain, i);
    X509* issuer = sk_X509_value(chain, i + 1);
    for (const X509CrlPtr& crl : bundle.crls()) {
      if (X509_NAME_cmp(X509_CRL_get_issuer(crl.get()), X509_get_subject_name(issuer)) != 0) {
        continue;
      }
      if (X509_CRL_verify(crl.get(), X509_get0_pubkey(issuer)) != 1) {
        ERR_clear_error();
        continue;
      }
      X509_REVOKED* entry = nullptr;
      if (X509_CRL_get0_by_cert(crl.get(), &entry, cert) == 1) {
        std::string who = i == 0 ? absl::StrCat("the certificate for ", id.ToString())
                                 : absl::StrCat("CA certificate \"", SubjectString(cert), "\"");
        const ASN1_TIME* when = X509_REVOKED_get0_revocationDate(entry);
        struct tm tm {};
        std::string since;
        if (when != nullptr && ASN1_TIME_to_tm(when, &tm) == 1) {
          since = absl::StrCat(" since ", FormatTimestamp(absl::FromTimeT(timegm(&tm))));
        }
        return PeerVerdict::Reject(
            RejectReason::kRevoked,
            absl::StrCat(who, " (serial ", SerialHex(cert), ") is revoked by \"",
                         SubjectString(issuer), "\"", since));
      }
    }
  }
  return PeerVerdict::Accept(id, absl::InfinitePast());
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
  // Revocation is checked below (CheckRevocation): OpenSSL's CRL_CHECK_ALL
  // would demand a CRL from every issuer.
  X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME | X509_V_FLAG_X509_STRICT);
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
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
  if (PeerVerdict v = CheckRevocation(chain, *bundle, id); !v.ok()) return v;
  if (PeerVerdict v = CheckIssuerScopes(chain, id); !v.ok()) return v;
  return CheckValidity(chain, id, options, now);
}

}  // namespace ktrust
