#include "daemon/common/logging.h"

#include <unistd.h>

#include <ctime>
#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/ascii.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "spdlog/details/fmt_helper.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/sinks/stdout_sinks.h"
#include "spdlog/spdlog.h"
#include "daemon/common/mutex.h"

namespace wsync {
namespace {

// Formats a record as one JSON object per line.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using std::chrono::duration_cast;
    using std::chrono::milliseconds;
    auto ms = duration_cast<milliseconds>(msg.time.time_since_epoch()).count();
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char ts[64];
    size_t n = std::strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(ts + n, sizeof(ts) - n, ".%03lldZ", static_cast<long long>(ms % 1000));
    Append(dest, "{\"ts\":\"");
    Append(dest, ts);
    Append(dest, "\",\"level\":\"");
    auto level = spdlog::level::to_string_view(msg.level);
    dest.append(level.data(), level.data() + level.size());
    Append(dest, "\",\"logger\":\"");
    AppendEscaped(dest, absl::string_view(msg.logger_name.data(), msg.logger_name.size()));
    Append(dest, "\",\"pid\":");
    Append(dest, std::to_string(getpid()));
    Append(dest, ",\"msg\":\"");
    AppendEscaped(dest, absl::string_view(msg.payload.data(), msg.payload.size()));
    Append(dest, "\"}\n");
  }

  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }

 private:
  static void Append(spdlog::memory_buf_t& dest, absl::string_view s) {
    dest.append(s.data(), s.data() + s.size());
  }
  static void AppendEscaped(spdlog::memory_buf_t& dest, absl::string_view s) {
    for (char c : s) {
      switch (c) {
        case '"': Append(dest, "\\\""); break;
        case '\\': Append(dest, "\\\\"); break;
        case '\n': Append(dest, "\\n"); break;
        case '\r': Append(dest, "\\r"); break;
        case '\t': Append(dest, "\\t"); break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            Append(dest, buf);
          } else {
            dest.push_back(c);
          }
      }
    }
  }
};

bool ParseLevel(absl::string_view text, spdlog::level::level_enum* out) {
  static const std::pair<const char*, spdlog::level::level_enum> kLevels[] = {
      {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
      {"info", spdlog::level::info},   {"warn", spdlog::level::warn},
      {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
      {"off", spdlog::level::off},
  };
  for (const auto& [name, level] : kLevels) {
    if (text == name) {
      *out = level;
      return true;
    }
  }
  return false;
}

bool KnownComponent(absl::string_view name) {
  for (const char* c : kLogComponents) {
    if (name == c) return true;
  }
  return false;
}

struct Parsed {
  spdlog::level::level_enum level = spdlog::level::info;
  std::vector<std::pair<std::string, spdlog::level::level_enum>> overrides;
};

absl::Status Parse(const LogOptions& options, Parsed* out) {
  if (!ParseLevel(options.level, &out->level)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown log level '", options.level,
        "' (expected trace, debug, info, warn, error, critical or off)"));
  }
  if (options.levels.empty()) return absl::OkStatus();
  for (absl::string_view item : absl::StrSplit(options.levels, ',', absl::SkipWhitespace())) {
    item = absl::StripAsciiWhitespace(item);
    std::vector<absl::string_view> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
    if (kv.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed log level override '", item, "' (expected component=level)"));
    }
    if (!KnownComponent(kv[0])) {
      std::string known;
      for (const char* c : kLogComponents) absl::StrAppend(&known, known.empty() ? "" : ", ", c);
      return absl::InvalidArgumentError(absl::StrCat("unknown log component '", kv[0],
                                                     "' in '", item, "' (known: ", known, ")"));
    }
    spdlog::level::level_enum level;
    if (!ParseLevel(kv[1], &level)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown log level '", kv[1], "' for component '", kv[0], "'"));
    }
    out->overrides.emplace_back(std::string(kv[0]), level);
  }
  return absl::OkStatus();
}

class Registry {
 public:
  static Registry& Get() {
    static Registry* r = new Registry();
    return *r;
  }

  absl::Status Configure(const LogOptions& options) {
    Parsed parsed;
    if (absl::Status s = Parse(options, &parsed); !s.ok()) return s;
    wsync::MutexLock lock(&mu_);
    parsed_ = parsed;
    format_ = options.format;
    for (auto& [name, logger] : loggers_) Apply(name, logger.get());
    return absl::OkStatus();
  }

  std::shared_ptr<spdlog::logger> Logger(const std::string& component) {
    wsync::MutexLock lock(&mu_);
    auto it = loggers_.find(component);
    if (it != loggers_.end()) return it->second;
    auto logger = std::make_shared<spdlog::logger>(component, sink_);
    Apply(component, logger.get());
    loggers_.emplace(component, logger);
    return logger;
  }

 private:
  Registry() : sink_(std::make_shared<spdlog::sinks::stderr_sink_mt>()) {}

  void Apply(const std::string& name, spdlog::logger* logger) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    spdlog::level::level_enum level = parsed_.level;
    for (const auto& [component, l] : parsed_.overrides) {
      if (component == name) level = l;
    }
    logger->set_level(level);
    logger->flush_on(spdlog::level::trace);
    if (format_ == LogFormat::kJson) {
      logger->set_formatter(std::make_unique<JsonFormatter>());
    } else {
      logger->set_formatter(std::make_unique<spdlog::pattern_formatter>(
          "%Y-%m-%dT%H:%M:%S.%eZ %-5l [%n] %v", spdlog::pattern_time_type::utc));
    }
  }

  wsync::Mutex mu_;
  spdlog::sink_ptr sink_;
  Parsed parsed_ ABSL_GUARDED_BY(mu_);
  LogFormat format_ ABSL_GUARDED_BY(mu_) = LogFormat::kText;
  std::map<std::string, std::shared_ptr<spdlog::logger>> loggers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::Status ValidateLogOptions(const LogOptions& options) {
  Parsed parsed;
  return Parse(options, &parsed);
}

absl::Status ConfigureLogging(const LogOptions& options) {
  return Registry::Get().Configure(options);
}

std::shared_ptr<spdlog::logger> Logger(const std::string& component) {
  return Registry::Get().Logger(component);
}

}  // namespace wsync
