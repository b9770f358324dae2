#include "daemon/common/metrics.h"

#include <catch2/catch.hpp>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace wsync {
namespace {

// The exposition format's grammar (text format 0.0.4), written from the
// Prometheus documentation: comment lines, and samples with optional labels.
const std::regex kSample(
    R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})? (-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?|\+Inf|-Inf|NaN)$)");
const std::regex kComment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");

// sample text (name and labels as printed) -> value; fails on a bad line.
std::map<std::string, std::string> Parse(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    INFO(line);
    if (line.rfind("#", 0) == 0) {
      CHECK(std::regex_match(line, kComment));
      continue;
    }
    REQUIRE(std::regex_match(line, kSample));
    const size_t sp = line.rfind(' ');
    CHECK(out.emplace(line.substr(0, sp), line.substr(sp + 1)).second);  // no duplicate sample
  }
  return out;
}

TEST_CASE("counters add up per label set and render in the exposition format") {
  auto m = Metrics::Create();
  m->Add("wsync_syncs_total", {{"model", "policy"}, {"outcome", "ok"}}, 1);
  m->Add("wsync_syncs_total", {{"model", "policy"}, {"outcome", "ok"}}, 1);
  m->Add("wsync_syncs_total", {{"model", "policy"}, {"outcome", "aborted"}}, 1);
  m->Add("wsync_sync_bytes_total", {{"model", "policy"}, {"path", "host"}}, 3e9);
  std::string text;
  m->Render(&text);
  auto s = Parse(text);
  CHECK(s.at(R"(wsync_syncs_total{model="policy",outcome="ok"})") == "2");
  CHECK(s.at(R"(wsync_syncs_total{model="policy",outcome="aborted"})") == "1");
  CHECK(s.at(R"(wsync_sync_bytes_total{model="policy",path="host"})") == "3000000000");
  CHECK(s.at("wsync_watchdog_aborts_total") == "0");
  CHECK(text.find("# TYPE wsync_syncs_total counter\n") != std::string::npos);
  CHECK(text.find("# TYPE wsync_sync_duration_seconds histogram\n") != std::string::npos);
}

TEST_CASE("histograms: cumulative buckets, +Inf equals the count, the sum") {
  auto m = Metrics::Create();
  for (double v : {0.0005, 0.003, 0.003, 7.0, 5000.0}) m->Observe("wsync_sync_duration_seconds", {{"model", "m"}}, v);
  std::string text;
  m->Render(&text);
  auto s = Parse(text);
  // Worked by hand against the bounds 0.001, 0.0025, 0.005, ..., 5, 10, ...
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="0.001"})") == "1");
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="0.0025"})") == "1");
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="0.005"})") == "3");
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="5"})") == "3");
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="10"})") == "4");
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="1200"})") == "4");
  CHECK(s.at(R"(wsync_sync_duration_seconds_bucket{model="m",le="+Inf"})") == "5");
  CHECK(s.at(R"(wsync_sync_duration_seconds_count{model="m"})") == "5");
  CHECK(std::stod(s.at(R"(wsync_sync_duration_seconds_sum{model="m"})")) == Approx(5007.0065));
}

TEST_CASE("label values are escaped; unknown families and misuse are counted, not rendered") {
  auto m = Metrics::Create();
  m->Add("wsync_syncs_total", {{"model", "a\"b\\c\nd"}, {"outcome", "ok"}}, 1);
  m->Add("wsync_no_such_total", {}, 1);
  m->Observe("wsync_syncs_total", {}, 1);                // a counter used as a histogram
  m->Add("wsync_syncs_total", {{"model", "x"}}, -1);     // counters only go up
  std::string text;
  m->Render(&text);
  auto s = Parse(text);
  CHECK(s.count(R"(wsync_syncs_total{model="a\"b\\c\nd",outcome="ok"})") == 1);
  CHECK(s.at("wsync_metrics_errors_total") == "3");
  CHECK(text.find("wsync_no_such_total") == std::string::npos);
  CHECK(s.count(R"(wsync_syncs_total{model="x"})") == 0);
}

TEST_CASE("gauges render with HELP and TYPE") {
  std::string text;
  RenderGauge("wsync_replica_version", "Version.", {{{{"model", "m"}, {"replica", "r"}}, 7}, {{}, 0.5}}, &text);
  CHECK(text == "# HELP wsync_replica_version Version.\n# TYPE wsync_replica_version gauge\n"
                "wsync_replica_version{model=\"m\",replica=\"r\"} 7\nwsync_replica_version 0.5\n");
}

TEST_CASE("concurrent updates are all counted") {
  auto m = Metrics::Create();
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) m->Add("wsync_syncs_total", {{"model", "m"}, {"outcome", "ok"}}, 1);
    });
  }
  for (auto& t : ts) t.join();
  std::string text;
  m->Render(&text);
  CHECK(Parse(text).at(R"(wsync_syncs_total{model="m",outcome="ok"})") == "4000");
}

}  // namespace
}  // namespace wsync
