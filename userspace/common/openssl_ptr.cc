#include "ktrust/common/openssl_ptr.h"

#include <openssl/err.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace ktrust {

CertChain ShareChain(const CertChain& chain) {
  CertChain copy;
  copy.reserve(chain.size());
  for (const auto& cert : chain) copy.push_back(ShareX509(cert.get()));
  return copy;
}

absl::Status OpenSslError(absl::string_view operation, absl::StatusCode code) {
  std::string message(operation);
  const char* sep = ": ";
  while (unsigned long err = ERR_get_error()) {
    // Out of memory is a resource the caller may want to tell apart (a
    // refusal under memory pressure, not a bug).
    if (ERR_GET_REASON(err) == ERR_R_MALLOC_FAILURE && code == absl::StatusCode::kInternal) {
      code = absl::StatusCode::kResourceExhausted;
    }
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    absl::StrAppend(&message, sep, buf);
    sep = "; ";
  }
  return absl::Status(code, message);
}

}  // namespace ktrust
