#include "ktrust/bpf/libbpf_log.h"

#include <bpf/libbpf.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <mutex>
#include <string>

#include "ktrust/common/log.h"

namespace ktrust {
namespace {

spdlog::level::level_enum LevelOf(libbpf_print_level level) {
  switch (level) {
    case LIBBPF_WARN:
      return spdlog::level::warn;
    case LIBBPF_INFO:
      return spdlog::level::debug;  // libbpf's info is development detail
    case LIBBPF_DEBUG:
      break;
  }
  return spdlog::level::trace;
}

int PrintToSpdlog(libbpf_print_level level, const char* format, va_list args) {
  spdlog::level::level_enum spd_level = LevelOf(level);
  if (!spdlog::should_log(spd_level)) return 0;
  va_list copy;
  va_copy(copy, args);
  int needed = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  if (needed <= 0) return 0;
  std::string message(static_cast<size_t>(needed) + 1, '\0');
  int written = std::vsnprintf(message.data(), message.size(), format, args);
  message.resize(static_cast<size_t>(std::clamp(written, 0, needed)));
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) {
    message.pop_back();
  }
  if (message.empty()) return 0;
  LogEvent(spd_level, {{"event", "libbpf"}, {"message", message}});
  return needed;
}

}  // namespace

void RouteLibbpfLogsToSpdlog() {
  static std::once_flag once;
  std::call_once(once, [] { libbpf_set_print(PrintToSpdlog); });
}

}  // namespace ktrust
