#include "daemon/server/options.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace wsync::server {
namespace {

absl::StatusOr<CommandLine> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "wsyncd");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return ParseCommandLine(static_cast<int>(argv.size()), argv.data());
}

std::string TempFile(const std::string& contents) {
  char path[] = "/tmp/wsyncd-options-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  std::ofstream(path) << contents;
  return path;
}

std::string Message(const absl::StatusOr<CommandLine>& r) {
  return std::string(r.status().message());
}

TEST_CASE("defaults") {
  auto r = Parse({});
  REQUIRE(r.ok());
  CHECK(r->options.socket == "/run/wsync/wsyncd.sock");
  CHECK(r->options.listen.empty());
  CHECK(r->options.grace_period_ms == 10000);
  CHECK(r->options.log.level == "info");
  CHECK(r->options.log.format == LogFormat::kText);
  CHECK_FALSE(r->exit_early);
}

TEST_CASE("flags set options") {
  auto r = Parse({"--socket", "/tmp/a/b.sock", "--listen", "127.0.0.1:0", "--insecure",
                  "--log-level", "debug", "--log-format", "json", "--log-levels", "core=trace",
                  "--grace-period-ms", "250", "--daemon-id", "node-7"});
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->options.socket == "/tmp/a/b.sock");
  CHECK(r->options.listen == "127.0.0.1:0");
  CHECK(r->options.insecure);
  CHECK(r->options.log.level == "debug");
  CHECK(r->options.log.levels == "core=trace");
  CHECK(r->options.log.format == LogFormat::kJson);
  CHECK(r->options.grace_period_ms == 250);
  CHECK(r->options.daemon_id == "node-7");
}

TEST_CASE("--help and --version exit early with text") {
  auto r = Parse({"--help"});
  REQUIRE(r.ok());
  CHECK(r->exit_early);
  CHECK_THAT(r->output, Catch::Contains("--socket"));
  CHECK_THAT(r->output, Catch::Contains("--config"));
  r = Parse({"--version"});
  REQUIRE(r.ok());
  CHECK(r->exit_early);
  CHECK_THAT(r->output, Catch::StartsWith("wsyncd 0."));
}

TEST_CASE("an unknown flag is an error that names it") {
  auto r = Parse({"--sockett", "/tmp/x.sock"});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(Message(r), Catch::Contains("--sockett"));
}

TEST_CASE("bad values are errors that name the flag") {
  auto r = Parse({"--log-format", "xml"});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(Message(r), Catch::Contains("--log-format"));
  r = Parse({"--grace-period-ms", "-5"});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(Message(r), Catch::Contains("--grace-period-ms"));
  r = Parse({"--log-level", "chatty"});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(Message(r), Catch::Contains("'chatty'"));
}

TEST_CASE("the TOML config file uses the flag names as keys") {
  std::string path = TempFile(
      "# wsyncd config\n"
      "socket = \"/tmp/from-config.sock\"\n"
      "log-level = \"warn\"\n"
      "grace-period-ms = 1500\n");
  auto r = Parse({"--config", path});
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->options.config == path);
  CHECK(r->options.socket == "/tmp/from-config.sock");
  CHECK(r->options.log.level == "warn");
  CHECK(r->options.grace_period_ms == 1500);

  SECTION("flags override the file") {
    auto o = Parse({"--config", path, "--log-level", "debug"});
    REQUIRE(o.ok());
    CHECK(o->options.log.level == "debug");
    CHECK(o->options.socket == "/tmp/from-config.sock");
  }
  unlink(path.c_str());
}

TEST_CASE("an unknown config key is an error that names it") {
  std::string path = TempFile("socket = \"/tmp/x.sock\"\nlog-levle = \"debug\"\n");
  auto r = Parse({"--config", path});
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(Message(r), Catch::Contains("log-levle"));
  unlink(path.c_str());
}

TEST_CASE("a missing config file is an error that names it") {
  auto r = Parse({"--config", "/nonexistent/wsyncd.toml"});
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(Message(r), Catch::Contains("/nonexistent/wsyncd.toml"));
}

TEST_CASE("bad combinations are rejected before anything starts") {
  struct Case {
    std::vector<std::string> args;
    const char* expect;
  };
  const Case cases[] = {
      {{"--listen", "0.0.0.0:7070"}, "--insecure"},
      {{"--listen", "7070", "--insecure"}, "host:port"},
      {{"--insecure"}, "--insecure applies only to --listen"},
      {{"--tls-cert", "c.pem", "--tls-key", "k.pem"}, "apply only to --listen"},
      {{"--listen", "h:1", "--tls-cert", "c.pem"}, "given together"},
      {{"--listen", "h:1", "--tls-client-ca", "ca.pem", "--insecure"}, "--tls-client-ca needs"},
      {{"--listen", "h:1", "--tls-cert", "c.pem", "--tls-key", "k.pem", "--insecure"},
       "contradicts"},
      {{"--socket", ""}, "nothing to listen on"},
      {{"--socket", "relative.sock"}, "absolute path"},
      {{"--socket", "/tmp/" + std::string(120, 'x')}, "Unix socket path must be under"},
      {{"--socket", "", "--listen", "h:1", "--insecure", "--socket-group", "wsync"},
       "--socket-group needs"},
  };
  for (const Case& c : cases) {
    auto r = Parse(c.args);
    INFO(c.args.front() << " -> " << r.status().ToString());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(Message(r), Catch::Contains(c.expect));
  }
}

TEST_CASE("TLS and insecure TCP are valid combinations") {
  CHECK(Parse({"--listen", "127.0.0.1:0", "--insecure"}).ok());
  CHECK(Parse({"--listen", "[::1]:0", "--tls-cert", "c.pem", "--tls-key", "k.pem"}).ok());
  CHECK(Parse({"--socket", "", "--listen", "h:1", "--tls-cert", "c", "--tls-key", "k",
               "--tls-client-ca", "ca"})
            .ok());
}

}  // namespace
}  // namespace wsync::server
