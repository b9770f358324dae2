// GPU test (one GPU): a 1-rank NCCL communicator: init, a self send/recv,
// a broadcast, and a receive nobody sends refused and poisoning it.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
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

}  // namespace
}  // namespace wsync::transport
