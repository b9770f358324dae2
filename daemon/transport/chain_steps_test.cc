// The chain schedule that NCCL and the base Communicator run: a hand-worked
// schedule, a simulation of NCCL's grouped, in-order matching for many chain
// shapes (every step completes, nothing waits in a cycle), and the base
// StartChain moving real bytes over a Gloo group.
#include <catch2/catch.hpp>
#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "daemon/transport/communicator.h"
#include "daemon/transport/transport_testing.h"

namespace wsync::transport {
namespace {

// (kind, offset into the buffer, bytes, peer) of one transfer.
using Op = std::tuple<char, size_t, size_t, int>;

std::vector<std::vector<Op>> Steps(const std::vector<int>& chain, int rank, size_t bytes, size_t chunk) {
  static char buf[1];
  std::vector<std::vector<Op>> out;
  for (const auto& step : ChainSteps(buf, bytes, chain, rank, /*tag=*/9, chunk)) {
    std::vector<Op> s;
    for (const P2P& p : step) {
      CHECK(p.tag == 9u);
      s.emplace_back(p.kind == P2P::Kind::kSend ? 'S' : 'R', static_cast<char*>(p.data) - buf, p.bytes, p.peer);
    }
    out.push_back(s);
  }
  return out;
}

TEST_CASE("ChainSteps: 10 bytes in chunks of 4 down the chain 2 -> 0 -> 1, worked out by hand") {
  using V = std::vector<std::vector<Op>>;
  CHECK(Steps({2, 0, 1}, 2, 10, 4) == V{{{'S', 0, 4, 0}}, {{'S', 4, 4, 0}}, {{'S', 8, 2, 0}}});
  CHECK(Steps({2, 0, 1}, 0, 10, 4) == V{{{'R', 0, 4, 2}},
                                        {{'R', 4, 4, 2}, {'S', 0, 4, 1}},
                                        {{'R', 8, 2, 2}, {'S', 4, 4, 1}},
                                        {{'S', 8, 2, 1}}});
  CHECK(Steps({2, 0, 1}, 1, 10, 4) == V{{{'R', 0, 4, 0}}, {{'R', 4, 4, 0}}, {{'R', 8, 2, 0}}});
  CHECK(Steps({2, 0, 1}, 0, 0, 4).empty());
  CHECK(Steps({0, 1}, 0, 4, 4) == V{{{'S', 0, 4, 1}}});
}

// Runs every rank's steps the way NCCL runs grouped point-to-point calls on
// one stream: a rank's step completes once every transfer in it has met its
// counterpart (the k-th send from a to b meets the k-th receive at b from
// a, with the same length) in the peer's current step; steps run in order.
// Returns false when no rank can move and some have steps left.
bool RunsToCompletion(const std::vector<int>& chain, size_t bytes, size_t chunk, int group,
                      std::vector<std::vector<bool>>* received) {
  std::vector<std::vector<std::vector<Op>>> steps(group);
  for (int r : chain) steps[r] = Steps(chain, r, bytes, chunk);
  std::vector<size_t> at(group, 0);
  // Ordinal of each transfer among those of its kind on its (from, to) pair.
  std::vector<std::map<std::tuple<int, size_t, size_t>, size_t>> ordinal(group);
  std::map<std::tuple<char, int, int>, size_t> count;
  for (int r = 0; r < group; ++r) {
    for (size_t j = 0; j < steps[r].size(); ++j) {
      for (const Op& op : steps[r][j]) {
        const int peer = std::get<3>(op);
        auto key = std::get<0>(op) == 'S' ? std::make_tuple('S', r, peer) : std::make_tuple('R', peer, r);
        ordinal[r][{peer, j, std::get<1>(op) * 2 + (std::get<0>(op) == 'S')}] = count[key]++;
      }
    }
  }
  auto counterpart_ready = [&](int r, const Op& op) {
    const int peer = std::get<3>(op);
    const size_t k = ordinal[r].at({peer, at[r], std::get<1>(op) * 2 + (std::get<0>(op) == 'S')});
    if (at[peer] >= steps[peer].size()) return false;
    for (const Op& q : steps[peer][at[peer]]) {
      if (std::get<3>(q) != r || std::get<0>(q) == std::get<0>(op)) continue;
      const size_t kq = ordinal[peer].at({r, at[peer], std::get<1>(q) * 2 + (std::get<0>(q) == 'S')});
      if (kq == k) return std::get<2>(q) == std::get<2>(op) && std::get<1>(q) == std::get<1>(op);
    }
    return false;
  };
  while (true) {
    std::vector<int> ready;
    bool left = false;
    for (int r = 0; r < group; ++r) {
      if (at[r] >= steps[r].size()) continue;
      left = true;
      bool ok = true;
      for (const Op& op : steps[r][at[r]]) ok = ok && counterpart_ready(r, op);
      if (ok) ready.push_back(r);
    }
    if (!left) return true;
    if (ready.empty()) return false;
    for (int r : ready) {
      for (const Op& op : steps[r][at[r]]) {
        if (std::get<0>(op) == 'R') (*received)[r][std::get<1>(op) / chunk] = true;
      }
      ++at[r];
    }
  }
}

TEST_CASE("ChainSteps: under NCCL's in-order matching every chain completes and every rank gets every chunk") {
  for (int len = 2; len <= 6; ++len) {
    for (size_t bytes : {size_t{1}, size_t{7}, size_t{8}, size_t{64}, size_t{65}}) {
      // Ranks in a shuffled order, inside a larger group.
      std::vector<int> chain;
      for (int i = 0; i < len; ++i) chain.push_back((i * 5 + 3) % 7);
      const size_t chunk = 8;
      const size_t chunks = (bytes + chunk - 1) / chunk;
      std::vector<std::vector<bool>> received(7, std::vector<bool>(chunks, false));
      INFO("chain of " << len << ", " << bytes << " bytes");
      REQUIRE(RunsToCompletion(chain, bytes, chunk, 7, &received));
      for (size_t i = 1; i < chain.size(); ++i) {
        CHECK(received[chain[i]] == std::vector<bool>(chunks, true));
      }
      CHECK(received[chain[0]] == std::vector<bool>(chunks, false));
    }
  }
}

TEST_CASE("CheckChain refuses short chains, repeats, outsiders and empty chunks, naming the chain") {
  CHECK(CheckChain({0, 1}, 1, 2, 4).ok());
  CHECK_THAT(std::string(CheckChain({0}, 0, 2, 4).message()), Catch::Contains("[0]"));
  CHECK_THAT(std::string(CheckChain({0, 1, 0}, 0, 2, 4).message()), Catch::Contains("names rank 0 twice"));
  CHECK_THAT(std::string(CheckChain({0, 2}, 0, 2, 4).message()), Catch::Contains("rank 2 is outside"));
  CHECK_THAT(std::string(CheckChain({0, 1}, 2, 3, 4).message()), Catch::Contains("not in it"));
  CHECK(CheckChain({0, 1}, 0, 2, 0).code() == absl::StatusCode::kInvalidArgument);
}

// A communicator that only has what every transport has (Exchange), so
// StartChain is the base implementation: ChainSteps, one Exchange per step.
class ExchangeOnly final : public Communicator {
 public:
  explicit ExchangeOnly(std::unique_ptr<Communicator> c) : c_(std::move(c)) {}
  int rank() const override { return c_->rank(); }
  int size() const override { return c_->size(); }
  absl::Status Exchange(const std::vector<P2P>& ops) override {
    ++exchanges_;
    return c_->Exchange(ops);
  }
  absl::Status Broadcast(void* data, size_t bytes, int root) override { return c_->Broadcast(data, bytes, root); }
  void Abort(const std::string& reason) override { c_->Abort(reason); }
  absl::Status error() const override { return c_->error(); }
  int exchanges_ = 0;

 private:
  std::unique_ptr<Communicator> c_;
};

TEST_CASE("the base StartChain moves every byte down the chain over a real Gloo group, step by step") {
  auto store = KvStore::InMemory();
  const int n = 5;
  const size_t bytes = 10007, chunk = 1024;  // 10 chunks, the last one short
  std::vector<std::vector<uint8_t>> buf(n, std::vector<uint8_t>(bytes, 0));
  std::vector<absl::Status> status(n);
  std::vector<int> exchanges(n, 0);
  const std::vector<int> chain = {3, 1, 0, 2};  // rank 4 takes no part
  for (size_t i = 0; i < bytes; ++i) buf[3][i] = static_cast<uint8_t>(i * 31 + 7);
  OnEveryRank(n, [&](int r) {
    GlooOptions o;
    o.timeout = std::chrono::milliseconds(20000);
    auto c = CreateGlooCommunicator(store.get(), "base-chain", r, n, o);
    if (!c.ok()) {
      status[r] = c.status();
      return;
    }
    if (r == 4) return;
    ExchangeOnly comm(std::move(*c));
    auto t = comm.StartChain(buf[r].data(), bytes, chain, /*tag=*/5, chunk);
    status[r] = t.ok() ? (*t)->Wait() : t.status();
    exchanges[r] = comm.exchanges_;
  });
  for (int r : chain) {
    INFO("rank " << r << ": " << status[r].ToString());
    REQUIRE(status[r].ok());
    CHECK(buf[r] == buf[3]);
  }
  CHECK(exchanges[3] == 10);  // the head: one send per chunk
  CHECK(exchanges[1] == 11);  // the middle: receive j and forward j-1
  CHECK(exchanges[2] == 10);  // the tail
  CHECK(buf[4] == std::vector<uint8_t>(bytes, 0));
}

}  // namespace
}  // namespace wsync::transport
