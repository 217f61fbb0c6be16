// errno in words, safe from any thread (strerror may use a shared buffer).
#pragma once

#include <string.h>

#include <string>

namespace ktrust {

inline std::string ErrnoText(int err) {
  const char* text = strerrordesc_np(err);
  return text ? text : "error " + std::to_string(err);
}

}  // namespace ktrust
