// The wire pipeline over real Gloo groups on loopback, one thread per rank.
#include "daemon/transport/wire_pipeline.h"

#include <catch2/catch.hpp>
#include <algorithm>
#include <map>
#include <vector>

#include "daemon/transport/transport_testing.h"

namespace wsync::transport {
namespace {

unsigned char Pattern(size_t bucket, size_t byte) { return static_cast<unsigned char>(bucket * 31 + byte * 7); }

std::vector<WireBucket> Buckets() {
  // Chains of every shape over 3 ranks, odd sizes, one empty bucket.
  return {{5000, {0, 1, 2}}, {70000, {1, 0}}, {300, {2}},     {0, {0, 1}},      {12345, {2, 1, 0}},
          {4096, {0, 2}},    {1, {1, 2}},     {99999, {0, 1}}, {777, {1, 2, 0}}, {65536, {2, 0}}};
}

TEST_CASE("every rank drains, in order, exactly the buckets of its chains, with the source's bytes") {
  const int n = 3;
  for (size_t depth : {1, 2, 3}) {
    auto store = KvStore::InMemory();
    const std::vector<WireBucket> buckets = Buckets();
    std::vector<std::vector<size_t>> filled(n), drained(n);
    std::vector<std::vector<std::string>> bad(n);
    std::vector<absl::Status> status(n);
    OnEveryRank(n, [&](int r) {
      GlooOptions o;
      o.timeout = std::chrono::milliseconds(20000);
      auto c = CreateGlooCommunicator(store.get(), "pipe-" + std::to_string(depth), r, n, o);
      if (!c.ok()) {
        status[r] = c.status();
        return;
      }
      std::vector<std::vector<char>> mem(depth, std::vector<char>(100000));
      std::vector<char*> bufs;
      for (auto& m : mem) bufs.push_back(m.data());
      std::map<size_t, char*> filled_into;
      WirePipelineHooks hooks;
      hooks.fill = [&](size_t i, char* buf) {
        filled[r].push_back(i);
        for (size_t j = 0; j < buckets[i].bytes; ++j) buf[j] = static_cast<char>(Pattern(i, j));
        return absl::OkStatus();
      };
      hooks.drain = [&](size_t i, char* buf) {
        drained[r].push_back(i);
        for (size_t j = 0; j < buckets[i].bytes; ++j) {
          if (static_cast<unsigned char>(buf[j]) != Pattern(i, j)) {
            bad[r].push_back("bucket " + std::to_string(i) + " byte " + std::to_string(j));
            break;
          }
        }
        return absl::OkStatus();
      };
      status[r] = RunWirePipeline(c->get(), r, buckets, bufs, /*chunk_bytes=*/4096, hooks);
    });
    for (int r = 0; r < n; ++r) {
      INFO("rank " << r << ", depth " << depth << ": " << status[r].ToString());
      REQUIRE(status[r].ok());
      std::vector<size_t> want_fill, want_drain;
      for (size_t i = 0; i < buckets.size(); ++i) {
        const auto& ch = buckets[i].chain;
        if (ch[0] == r) want_fill.push_back(i);
        if (std::find(ch.begin(), ch.end(), r) != ch.end()) want_drain.push_back(i);
      }
      CHECK(filled[r] == want_fill);
      CHECK(drained[r] == want_drain);
      CHECK(bad[r].empty());
    }
  }
}

TEST_CASE("a failing hook stops the pipeline with its own error and aborts what is in flight; the other ranks end with errors") {
  const int n = 2;
  auto store = KvStore::InMemory();
  const std::vector<WireBucket> buckets = {{1000, {0, 1}}, {1000, {0, 1}}, {1000, {0, 1}}, {1000, {0, 1}}};
  std::vector<absl::Status> status(n);
  std::vector<int> drains(n, 0);
  std::vector<int> poisoned(n, 0);  // not vector<bool>: ranks write from their threads
  OnEveryRank(n, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(500);
    auto c = CreateGlooCommunicator(store.get(), "pipe-fail", r, n, o);
    REQUIRE(c.ok());
    std::vector<std::vector<char>> mem(2, std::vector<char>(1000));
    std::vector<char*> bufs{mem[0].data(), mem[1].data()};
    WirePipelineHooks hooks;
    hooks.fill = [&](size_t i, char*) {
      return i == 2 ? absl::DataLossError("bucket 2 would not pack") : absl::OkStatus();
    };
    hooks.drain = [&](size_t, char*) {
      ++drains[r];
      return absl::OkStatus();
    };
    hooks.on_wire_error = [](size_t i, const absl::Status& s) {
      return absl::Status(s.code(), "wire bucket " + std::to_string(i) + " from daemon 'd0': " +
                                        std::string(s.message()));
    };
    status[r] = RunWirePipeline(c->get(), r, buckets, bufs, 256, hooks);
    poisoned[r] = !(*c)->error().ok();
  });
  CHECK(status[0].code() == absl::StatusCode::kDataLoss);
  CHECK(status[0].message() == "bucket 2 would not pack");
  CHECK_FALSE(status[1].ok());
  CHECK(std::string(status[1].message()).find("wire bucket 2 from daemon 'd0'") != std::string::npos);
  CHECK(drains[1] == 2);
  // Rank 0 still had bucket 1 posted: aborted, not left to time out.
  CHECK(poisoned[0]);
}

}  // namespace
}  // namespace wsync::transport
