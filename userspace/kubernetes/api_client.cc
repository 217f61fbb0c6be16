#include "api_client.h"

#include <openssl/x509.h>

#include <algorithm>
#include <chrono>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "ktrust/common/files.h"
#include "ktrust/common/secret.h"
#include "ktrust/common/version.h"
#include "ktrust/identity/x509.h"

namespace ktrust::kubernetes_internal {
namespace {

constexpr size_t kMaxTokenBytes = 64 << 10;
constexpr size_t kMaxCaFileBytes = 1 << 20;

// The token as it is now (the kubelet rewrites it before it expires). It goes
// into a header, so anything but visible ASCII would be a header injection.
absl::StatusOr<Secret> ReadToken(const std::string& path) {
  auto content = ReadSecretFile(path, kMaxTokenBytes);
  if (!content.ok()) {
    return absl::Status(content.status().code(),
                        absl::StrCat("service-account token: ", content.status().message()));
  }
  absl::string_view token = absl::StripAsciiWhitespace(content->view());
  if (token.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("service-account token ", path, " is empty"));
  }
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          absl::StrCat("service-account token ", path, " holds a byte that is not visible ASCII"));
    }
  }
  return Secret(std::string(token));
}

// cpp-httplib only says "failed to load"; reading the file first says why.
absl::Status CheckCaFile(const std::string& path) {
  auto pem = ReadFile(path, kMaxCaFileBytes);
  if (!pem.ok()) {
    return absl::Status(pem.status().code(),
                        absl::StrCat("API server CA file: ", pem.status().message()));
  }
  auto certs = ParseCertificates(*pem, absl::StrCat("API server CA file ", path));
  return certs.status();
}

std::chrono::microseconds Micros(absl::Duration d) {
  return std::chrono::microseconds(std::max<int64_t>(1, absl::ToInt64Microseconds(d)));
}

}  // namespace

absl::StatusOr<ApiClient::Response> ApiClient::Get(
    const std::string& path, const httplib::Params& params, absl::Duration read_timeout,
    size_t max_body, const std::function<bool(absl::string_view)>& on_data) {
  auto token = ReadToken(options_.token_file);
  if (!token.ok()) return token.status();
  if (auto s = CheckCaFile(options_.ca_file); !s.ok()) return s;

  httplib::SSLClient client(options_.host, options_.port);
  if (!client.is_valid()) return absl::InternalError("cannot create a TLS client context");
  // Only the CA file's roots: an empty path would make cpp-httplib add the
  // system's default roots.
  client.set_ca_cert_path(options_.ca_file.c_str());
  client.enable_server_certificate_verification(true);
  SSL_CTX_set_min_proto_version(client.ssl_context(), TLS1_2_VERSION);
  client.set_connection_timeout(Micros(options_.connect_timeout));
  client.set_read_timeout(Micros(read_timeout));
  client.set_write_timeout(Micros(options_.connect_timeout));
  client.set_keep_alive(false);
  client.set_follow_location(false);
  client.set_bearer_token_auth(std::string(token->view()));
  // identity: a compressing server may hold a watch's events back until
  // its compressor flushes.
  const httplib::Headers headers = {{"Accept", "application/json"},
                                    {"Accept-Encoding", "identity"},
                                    {"User-Agent", absl::StrCat("ktrustd/", kVersion)}};

  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return absl::CancelledError("the Kubernetes API client is stopping");
    in_flight_ = &client;
  }
  absl::Cleanup done = [this] {
    absl::MutexLock lock(&mu_);
    in_flight_ = nullptr;
  };

  Response response;
  bool too_large = false;
  auto result = client.Get(
      path, params, headers,
      [&](const httplib::Response& head) {
        response.status = head.status;
        return true;
      },
      [&](const char* data, size_t size) {
        if (on_data && response.status >= 200 && response.status < 300) {
          if (on_data(absl::string_view(data, size))) return true;
          response.stopped_by_reader = true;
          return false;
        }
        if (response.body.size() + size > max_body) {
          too_large = true;
          return false;
        }
        response.body.append(data, size);
        return true;
      });
  if (result) return response;

  const std::string where = absl::StrCat("GET https://", options_.Endpoint(), path);
  if (too_large) {
    return absl::ResourceExhaustedError(
        absl::StrCat(where, ": response larger than ", max_body, " bytes"));
  }
  if (response.stopped_by_reader) return response;
  {
    absl::MutexLock lock(&mu_);
    if (cancelled_) return absl::CancelledError("the Kubernetes API client is stopping");
  }
  switch (result.error()) {
    case httplib::Error::SSLServerVerification: {
      long verify = client.get_openssl_verify_result();
      return absl::UnavailableError(absl::StrCat(
          where, ": the API server's certificate was refused: ",
          verify != X509_V_OK ? X509_verify_cert_error_string(verify)
                              : absl::StrCat("it does not name ", options_.host).c_str(),
          " (verified against ", options_.ca_file, ")"));
    }
    case httplib::Error::SSLLoadingCerts:
      return absl::FailedPreconditionError(
          absl::StrCat(where, ": cannot load the CA file ", options_.ca_file));
    case httplib::Error::SSLConnection:
      return absl::UnavailableError(absl::StrCat(where, ": TLS handshake failed"));
    case httplib::Error::Connection:
    case httplib::Error::ConnectionTimeout:
      return absl::UnavailableError(absl::StrCat(where, ": cannot connect"));
    case httplib::Error::Read:
      return absl::UnavailableError(absl::StrCat(
          where, ": connection closed or read timed out (status ", response.status, ")"));
    default:
      return absl::UnavailableError(absl::StrCat(where, ": ", httplib::to_string(result.error())));
  }
}

void ApiClient::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  // Shuts the socket down: a read blocked in it returns at once.
  if (in_flight_ != nullptr) in_flight_->stop();
}

}  // namespace ktrust::kubernetes_internal
