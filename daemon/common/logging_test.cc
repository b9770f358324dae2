#include "daemon/common/logging.h"

#include <catch2/catch.hpp>

namespace wsync {
namespace {

TEST_CASE("log options accept levels and per-component overrides") {
  LogOptions options;
  options.level = "debug";
  options.levels = "core=trace, service=warn";
  REQUIRE(ValidateLogOptions(options).ok());
  REQUIRE(ConfigureLogging(options).ok());
  CHECK(Logger("core")->level() == spdlog::level::trace);
  CHECK(Logger("service")->level() == spdlog::level::warn);
  CHECK(Logger("server")->level() == spdlog::level::debug);
}

TEST_CASE("reconfiguring changes existing loggers") {
  auto logger = Logger("memory");
  LogOptions options;
  options.level = "error";
  REQUIRE(ConfigureLogging(options).ok());
  CHECK(logger->level() == spdlog::level::err);
  options.level = "info";
  REQUIRE(ConfigureLogging(options).ok());
  CHECK(logger->level() == spdlog::level::info);
}

TEST_CASE("bad log options name the offending text") {
  LogOptions options;
  options.level = "verbose";
  absl::Status s = ValidateLogOptions(options);
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(s.message()), Catch::Contains("'verbose'"));

  options.level = "info";
  options.levels = "planner=debug";
  s = ValidateLogOptions(options);
  CHECK_THAT(std::string(s.message()), Catch::Contains("unknown log component 'planner'"));

  options.levels = "core";
  s = ValidateLogOptions(options);
  CHECK_THAT(std::string(s.message()), Catch::Contains("malformed"));

  options.levels = "core=loud";
  s = ValidateLogOptions(options);
  CHECK_THAT(std::string(s.message()), Catch::Contains("'loud' for component 'core'"));
}

}  // namespace
}  // namespace wsync
