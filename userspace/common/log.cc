#include "ktrust/common/log.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace ktrust {

void SetUpLogging(spdlog::level::level_enum level) {
  auto logger = spdlog::stderr_logger_mt("ktrust");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%eZ %l %v", spdlog::pattern_time_type::utc);
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace ktrust
