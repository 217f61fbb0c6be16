// Secret bytes (private keys in PEM form, traffic secrets): move-only, and
// wiped with OPENSSL_cleanse when dropped so they do not linger in freed heap.
#pragma once

#include <openssl/crypto.h>

#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/string_view.h"
namespace ktrust {

class Secret {
 public:
  Secret() = default;
  explicit Secret(std::string bytes) : bytes_(std::move(bytes)) {}
  Secret(const Secret&) = delete;
  Secret& operator=(const Secret&) = delete;
  Secret(Secret&& other) noexcept : bytes_(std::move(other.bytes_)) { other.Wipe(); }
  Secret& operator=(Secret&& other) noexcept {
    if (this != &other) {
      Wipe();
      bytes_ = std::move(other.bytes_);
      other.Wipe();
    }
    return *this;
  }
  ~Secret() { Wipe(); }

  absl::string_view view() const { return bytes_; }
  bool empty() const { return bytes_.empty(); }

 private:
  void Wipe() {
    // Cleanse the whole capacity: a short string may live in the SSO buffer.
    if (bytes_.capacity() > 0) OPENSSL_cleanse(bytes_.data(), bytes_.capacity());
    bytes_.clear();
  }
  std::string bytes_;
};

}  // namespace ktrust
