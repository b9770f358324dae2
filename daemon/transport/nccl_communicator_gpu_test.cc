// GPU test (one GPU): a 1-rank NCCL communicator: init, a self send/recv,
// a broadcast, and a receive nobody sends refused and poisoning it.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "daemon/transport/nccl_communicator.h"

namespace wsync::transport {
namespace {

TEST_CASE("1-rank NCCL communicator: transfers, then an unmatched receive poisons it", "[gpu]") {
  auto store = KvStore::InMemory();
  NcclOptions o;
  o.timeout = std::chrono::milliseconds(2000);
  auto c = CreateNcclCommunicator(store.get(), "gpu-test", 0, 1, o);
  INFO(c.status().ToString());
  REQUIRE(c.ok());
  void* a = nullptr;
  void* b = nullptr;
  REQUIRE(cudaMalloc(&a, 1 << 20) == cudaSuccess);
  REQUIRE(cudaMalloc(&b, 1 << 20) == cudaSuccess);
  std::vector<char> host(1 << 20, 7), back(1 << 20, 0);
  REQUIRE(cudaMemcpy(a, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess);
  absl::Status s = (*c)->Exchange({{P2P::Kind::kSend, a, host.size(), 0, 1}, {P2P::Kind::kRecv, b, host.size(), 0, 1}});
  INFO(s.ToString());
  REQUIRE(s.ok());
  REQUIRE(cudaMemcpy(back.data(), b, back.size(), cudaMemcpyDeviceToHost) == cudaSuccess);
  CHECK(back == host);
  CHECK((*c)->Broadcast(a, 1024, 0).ok());

  // A receive from itself with no matching send: NCCL refuses the group
  // (invalid usage) instead of hanging, and the communicator is poisoned.
  // (The watchdog aborting a receive whose peer never sends needs two GPUs.)
  s = (*c)->Exchange({{P2P::Kind::kRecv, b, 1024, 0, 2}});
  INFO(s.ToString());
  CHECK_FALSE(s.ok());
  CHECK_THAT(std::string(s.message()), Catch::Contains("ncclGroupEnd"));
  CHECK((*c)->Broadcast(a, 1024, 0).code() == absl::StatusCode::kFailedPrecondition);
  cudaFree(a);
  cudaFree(b);
}

TEST_CASE("a chain over NCCL on two GPUs delivers every chunk, two chains in flight", "[gpu]") {
  int devices = 0;
  REQUIRE(cudaGetDeviceCount(&devices) == cudaSuccess);
  if (devices < 2) {
    WARN("one GPU: the NCCL chain needs two, not run");
    return;
  }
  auto store = KvStore::InMemory();
  const size_t bytes = (3 << 20) + 5, chunk = 1 << 20;  // 4 chunks, the last one short
  std::vector<char> src(bytes), back[2];
  for (size_t i = 0; i < bytes; ++i) src[i] = static_cast<char>(i * 17 + 3);
  absl::Status status[2];
  std::thread t[2];
  for (int r = 0; r < 2; ++r) {
    t[r] = std::thread([&, r] {
      NcclOptions o;
      o.device = r;
      o.timeout = std::chrono::milliseconds(20000);
      auto c = CreateNcclCommunicator(store.get(), "gpu-chain", r, 2, o);
      if (!c.ok()) {
        status[r] = c.status();
        return;
      }
      void *a = nullptr, *b = nullptr;
      cudaMalloc(&a, bytes);
      cudaMalloc(&b, bytes);
      cudaMemset(a, 0, bytes);
      if (r == 1) cudaMemcpy(a, src.data(), bytes, cudaMemcpyHostToDevice);
      // Bucket 1 goes 1 -> 0, bucket 2 goes 0 -> 1 back, both queued at once.
      auto x = (*c)->StartChain(a, bytes, {1, 0}, 1, chunk);
      if (r == 0 && x.ok()) status[r] = (*x)->Wait();
      if (r == 0) cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice);
      auto y = (*c)->StartChain(b, bytes, {0, 1}, 2, chunk);
      if (!x.ok() || !y.ok()) {
        status[r] = !x.ok() ? x.status() : y.status();
      } else {
        if (status[r].ok()) status[r] = (*x)->Wait();
        if (status[r].ok()) status[r] = (*y)->Wait();
      }
      back[r].resize(bytes);
      cudaMemcpy(back[r].data(), r == 0 ? a : b, bytes, cudaMemcpyDeviceToHost);
      cudaFree(a);
      cudaFree(b);
    });
  }
  for (auto& x : t) x.join();
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << status[r].ToString());
    REQUIRE(status[r].ok());
    CHECK(back[r] == src);
  }
}

}  // namespace
}  // namespace wsync::transport
