#include "daemon/service/metrics_http.h"

#include <httplib.h>

#include <catch2/catch.hpp>
#include <string>

namespace wsync::service {
namespace {

TEST_CASE("GET /metrics serves counters and status gauges; other paths are 404") {
  auto metrics = Metrics::Create();
  core::CoreOptions o;
  o.daemon_id = "metrics-test";
  o.metrics = metrics.get();
  auto core = core::Core::Create(o);
  metrics->Add("wsync_syncs_total", {{"model", "policy"}, {"outcome", "ok"}}, 1);
  auto server = MetricsServer::Start("127.0.0.1:0", core.get(), metrics.get());
  INFO(server.status().ToString());
  REQUIRE(server.ok());
  REQUIRE((*server)->port() > 0);

  httplib::Client http("127.0.0.1", (*server)->port());
  auto res = http.Get("/metrics");
  REQUIRE(res);
  CHECK(res->status == 200);
  CHECK(res->get_header_value("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
  const std::string& body = res->body;
  CHECK_THAT(body, Catch::Contains("\nwsync_syncs_total{model=\"policy\",outcome=\"ok\"} 1\n"));
  CHECK_THAT(body, Catch::Contains("# TYPE wsync_sessions gauge\nwsync_sessions 0\n"));
  CHECK_THAT(body, Catch::Contains("wsync_build_info{daemon_id=\"metrics-test\","));
  CHECK_THAT(body, Catch::Contains("\nwsync_serving 1\n"));
  CHECK(http.Get("/")->status == 404);

  // A second server cannot take the same port.
  auto twin = MetricsServer::Start("127.0.0.1:" + std::to_string((*server)->port()), core.get(), metrics.get());
  CHECK(twin.status().code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(twin.status().message()), Catch::Contains("cannot listen on 127.0.0.1:"));

  (*server)->Stop();
  (*server)->Stop();  // a second stop does nothing
  CHECK(!http.Get("/metrics"));
}

TEST_CASE("malformed addresses are refused before anything binds") {
  auto metrics = Metrics::Create();
  auto core = core::Core::Create({});
  for (const char* bad : {"9100", ":9100", "127.0.0.1:port", "127.0.0.1:70000"}) {
    INFO(bad);
    auto s = MetricsServer::Start(bad, core.get(), metrics.get());
    CHECK(s.status().code() == absl::StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace wsync::service
