// GPU test (one GPU): a 1-rank NCCL communicator: init, a self send/recv,
// a broadcast, and the watchdog aborting a receive nobody sends.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <vector>

#include "daemon/transport/nccl_communicator.h"

namespace wsync::transport {
namespace {

TEST_CASE("1-rank NCCL communicator: transfers, then the watchdog aborts a stuck receive", "[gpu]") {
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

  // A receive with no matching send never completes: the watchdog aborts it.
  s = (*c)->Exchange({{P2P::Kind::kRecv, b, 1024, 0, 2}});
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(s.message()), Catch::Contains("the NCCL communicator was aborted"));
  CHECK((*c)->Broadcast(a, 1024, 0).code() == absl::StatusCode::kFailedPrecondition);
  cudaFree(a);
  cudaFree(b);
}

}  // namespace
}  // namespace wsync::transport
