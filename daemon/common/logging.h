#ifndef WSYNC_DAEMON_COMMON_LOGGING_H_
#define WSYNC_DAEMON_COMMON_LOGGING_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "spdlog/logger.h"

namespace wsync {

// Output format of every logger.
enum class LogFormat {
  kText,  // "2026-11-21T10:00:00.123Z info  [server] message"
  kJson,  // One JSON object per line: {"ts","level","logger","msg","pid"}.
};

// Logging settings. `levels` overrides `level` per component and has the
// form "core=debug,service=warn".
struct LogOptions {
  std::string level = "info";
  std::string levels;
  LogFormat format = LogFormat::kText;
};

// Validates `options` without applying them: unknown levels, components or
// malformed overrides are INVALID_ARGUMENT naming the offending text.
absl::Status ValidateLogOptions(const LogOptions& options);

// Applies `options` to every component logger, existing and future. All
// loggers write to stderr. May be called again (e.g. on SIGHUP). Thread-safe.
absl::Status ConfigureLogging(const LogOptions& options);

// The logger of `component` (one of kLogComponents), created on first use
// with the current settings. Never null. Thread-safe.
std::shared_ptr<spdlog::logger> Logger(const std::string& component);

// Components that have loggers; `levels` may name only these.
inline constexpr const char* kLogComponents[] = {
    "main", "server", "service", "core", "layout", "memory", "transport", "kernels", "client",
};

}  // namespace wsync

#endif  // WSYNC_DAEMON_COMMON_LOGGING_H_
