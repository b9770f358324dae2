#include "daemon/core/core.h"

#include <unistd.h>

#include <catch2/catch.hpp>

namespace wsync::core {
namespace {

TEST_CASE("a new core reports its identity and serves") {
  CoreOptions options;
  options.daemon_id = "node-a";
  options.gpus = {"none: no driver"};
  auto core = Core::Create(options);
  core->AddEndpoint({"unix", "/tmp/x.sock", false});
  DaemonStatus s = core->GetStatus();
  CHECK(s.daemon_id == "node-a");
  CHECK(s.pid == getpid());
  CHECK(s.serving);
  CHECK(s.uptime_s >= 0);
  REQUIRE(s.endpoints.size() == 1);
  CHECK(s.endpoints[0].address == "/tmp/x.sock");
  CHECK(s.gpus == std::vector<std::string>{"none: no driver"});
  CHECK(s.models.empty());
  CHECK(s.jobs.empty());
  CHECK(!s.version.empty());
}

TEST_CASE("shutdown is reported and idempotent") {
  auto core = Core::Create({});
  core->BeginShutdown();
  core->BeginShutdown();
  CHECK_FALSE(core->GetStatus().serving);
}

}  // namespace
}  // namespace wsync::core
