// Real Gloo groups over loopback TCP, one thread per rank.
#include <catch2/catch.hpp>
#include <numeric>
#include <thread>
#include <vector>

#include "daemon/transport/communicator.h"
#include "daemon/transport/transport_testing.h"

namespace wsync::transport {
namespace {

TEST_CASE("a ring exchange and a broadcast move the right bytes") {
  auto store = KvStore::InMemory();
  const int n = 3;
  std::vector<std::vector<int>> got(n), bcast(n);
  std::vector<absl::Status> status(n);
  OnEveryRank(n, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(10000);
    auto c = CreateGlooCommunicator(store.get(), "ring-0", r, n, o);
    if (!c.ok()) {
      status[r] = c.status();
      return;
    }
    std::vector<int> mine(1000), in(1000);
    std::iota(mine.begin(), mine.end(), r * 1000);
    P2P send{P2P::Kind::kSend, mine.data(), mine.size() * 4, (r + 1) % n, 7};
    P2P recv{P2P::Kind::kRecv, in.data(), in.size() * 4, (r + n - 1) % n, 7};
    status[r] = (*c)->Exchange({send, recv});
    got[r] = in;
    bcast[r].assign(64, r == 1 ? 42 : 0);
    if (status[r].ok()) status[r] = (*c)->Broadcast(bcast[r].data(), 64 * 4, /*root=*/1);
  });
  for (int r = 0; r < n; ++r) {
    INFO(status[r].ToString());
    REQUIRE(status[r].ok());
    CHECK(got[r][0] == ((r + n - 1) % n) * 1000);
    CHECK(got[r][999] == ((r + n - 1) % n) * 1000 + 999);
    CHECK(bcast[r] == std::vector<int>(64, 42));
  }
}

TEST_CASE("a peer that never sends: the wait times out naming it, then the communicator is poisoned") {
  auto store = KvStore::InMemory();
  std::vector<absl::Status> status(2), again(2);
  OnEveryRank(2, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(300);
    auto c = CreateGlooCommunicator(store.get(), "silent", r, 2, o);
    REQUIRE(c.ok());
    std::vector<char> buf(16);
    if (r == 0) {
      status[r] = (*c)->Exchange({{P2P::Kind::kRecv, buf.data(), buf.size(), 1, 3}});
      again[r] = (*c)->Exchange({{P2P::Kind::kRecv, buf.data(), buf.size(), 1, 3}});
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(800));  // alive, silent
    }
  });
  CHECK(status[0].code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(status[0].message() == "rank 0: recv from rank 1 (tag 3, 16 bytes) did not complete within 300 ms (peer stopped?)");
  CHECK(again[0].code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(again[0].message()), Catch::Contains("failed earlier and is not reused"));
}

TEST_CASE("a peer that goes away: the transfer fails naming the ranks involved") {
  auto store = KvStore::InMemory();
  absl::Status status;
  OnEveryRank(2, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(5000);
    auto c = CreateGlooCommunicator(store.get(), "gone", r, 2, o);
    REQUIRE(c.ok());
    if (r == 0) {
      std::vector<char> buf(16);
      status = (*c)->Exchange({{P2P::Kind::kRecv, buf.data(), buf.size(), 1, 3}});
    }
    // rank 1 returns at once: its communicator closes its connections
  });
  CHECK(status.code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(status.message()), Catch::StartsWith("rank 0: transfer with rank(s) 1 failed (peer gone?)"));
}

TEST_CASE("rendezvous without the other ranks ends with a clear error") {
  auto store = KvStore::InMemory();
  GlooOptions o;
  o.timeout = std::chrono::milliseconds(200);
  auto c = CreateGlooCommunicator(store.get(), "alone", 0, 2, o);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("could not join gloo group 'alone'"));
  CHECK(CreateGlooCommunicator(store.get(), "x", 2, 2, o).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("a chain broadcast delivers every byte to every rank of the chain, in chunks") {
  auto store = KvStore::InMemory();
  const int n = 4;
  // 1 MiB + 3 bytes, so the last chunk is short; rank 2 is the root and
  // rank 0 is left out of one transfer.
  const size_t bytes = (1 << 20) + 3;
  std::vector<std::vector<uint8_t>> a(n, std::vector<uint8_t>(bytes)), b(n, std::vector<uint8_t>(bytes));
  std::vector<absl::Status> status(n);
  OnEveryRank(n, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(20000);
    auto c = CreateGlooCommunicator(store.get(), "chain", r, n, o);
    if (!c.ok()) {
      status[r] = c.status();
      return;
    }
    if (r == 2) {
      for (size_t i = 0; i < bytes; ++i) a[r][i] = static_cast<uint8_t>(i * 7 + 1);
      for (size_t i = 0; i < bytes; ++i) b[r][i] = static_cast<uint8_t>(i * 13 + 5);
    }
    // Two transfers in flight at once, told apart by their tags.
    auto t1 = (*c)->StartChain(a[r].data(), bytes, {2, 0, 3, 1}, /*tag=*/1, /*chunk_bytes=*/64 << 10);
    std::unique_ptr<Transfer> t2;
    if (r != 0) {
      auto x = (*c)->StartChain(b[r].data(), bytes, {2, 1, 3}, /*tag=*/2, /*chunk_bytes=*/100000);
      if (!x.ok()) {
        status[r] = x.status();
        return;
      }
      t2 = std::move(*x);
    }
    if (!t1.ok()) {
      status[r] = t1.status();
      return;
    }
    status[r] = (*t1)->Wait();
    if (status[r].ok() && t2) status[r] = t2->Wait();
  });
  for (int r = 0; r < n; ++r) {
    INFO("rank " << r << ": " << status[r].ToString());
    REQUIRE(status[r].ok());
    CHECK(a[r] == a[2]);
    if (r != 0) CHECK(b[r] == b[2]);
  }
}

TEST_CASE("a chain that names a rank twice is refused before anything moves") {
  auto store = KvStore::InMemory();
  auto c = CreateGlooCommunicator(store.get(), "solo", 0, 1, GlooOptions{});
  REQUIRE(c.ok());
  char buf[8];
  auto t = (*c)->StartChain(buf, 8, {0, 0}, 1, 4);
  REQUIRE(!t.ok());
  CHECK(t.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK((*c)->error().ok());
}

TEST_CASE("Abort from another thread ends a wait on a silent peer at once, naming the reason") {
  auto store = KvStore::InMemory();
  std::vector<absl::Status> status(2);
  std::vector<std::unique_ptr<Communicator>> comms(2);
  OnEveryRank(2, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(600000);  // only Abort can end the wait
    auto c = CreateGlooCommunicator(store.get(), "abort", r, 2, o);
    REQUIRE(c.ok());
    comms[r] = std::move(*c);
  });
  std::vector<char> buf(1 << 16);
  std::thread aborter([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    comms[1]->Abort("coordinator said so");
  });
  auto t = comms[1]->StartChain(buf.data(), buf.size(), {0, 1}, 5, 4096);  // rank 0 never sends
  REQUIRE(t.ok());
  absl::Status s = (*t)->Wait();
  aborter.join();
  CHECK(s.code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(s.message()), Catch::Contains("coordinator said so"));
  CHECK(comms[1]->error().code() == absl::StatusCode::kAborted);
  CHECK(comms[1]->Exchange({{P2P::Kind::kSend, buf.data(), 8, 0, 1}}).code() ==
        absl::StatusCode::kFailedPrecondition);
  t->reset();
}

}  // namespace
}  // namespace wsync::transport
