// ChooseWireTransport against small parts written out by hand.
#include "daemon/core/dist_plan.h"

#include <catch2/catch.hpp>

namespace wsync::core::internal {
namespace {

PlanEndpoint On(const std::string& daemon, const std::string& gpu) {
  PlanEndpoint e;
  e.daemon_id = daemon;
  e.gpu_uuid = gpu;
  return e;
}

PeerMember Member(const std::string& daemon, bool nccl) {
  PeerMember m;
  m.daemon_id = daemon;
  m.nccl = nccl;
  return m;
}

// Trainer daemon "t" (two source ranks), generator daemon "g" (one target).
PlanPart Part(const std::string& t_gpu0, const std::string& t_gpu1, const std::string& g_gpu, bool t_nccl = true,
              bool g_nccl = true) {
  PlanPart p;
  p.members = {Member("g", g_nccl), Member("t", t_nccl)};
  p.sources = {On("t", t_gpu0), On("t", t_gpu1)};
  p.targets = {On("g", g_gpu)};
  return p;
}

TEST_CASE("NCCL when every pair of members connects: one GPU each, distinct, both able") {
  std::string why = "stale";
  CHECK(ChooseWireTransport(Part("GPU-a", "GPU-a", "GPU-b"), &why) == WireTransport::kNccl);
  CHECK(why.empty());
}

TEST_CASE("Gloo, and why, when any pair does not connect over NCCL") {
  std::string why;
  CHECK(ChooseWireTransport(Part("GPU-a", "GPU-a", "GPU-b", true, false), &why) == WireTransport::kGloo);
  CHECK(why == "daemon 'g' cannot run NCCL (no CUDA build or no visible GPU)");
  CHECK(ChooseWireTransport(Part("GPU-a", "", "GPU-b"), &why) == WireTransport::kGloo);
  CHECK(why == "daemon 't' holds ranks in host memory");
  CHECK(ChooseWireTransport(Part("GPU-a", "GPU-c", "GPU-b"), &why) == WireTransport::kGloo);
  CHECK(why == "daemon 't' holds ranks on 2 GPUs (an NCCL part takes one GPU per daemon)");
  // Two daemons on one GPU (NCCL refuses two ranks on one device).
  CHECK(ChooseWireTransport(Part("GPU-a", "GPU-a", "GPU-a"), &why) == WireTransport::kGloo);
  CHECK(why == "daemons 'g' and 't' share GPU GPU-a (NCCL connects distinct GPUs)");
}

TEST_CASE("Gloo without a word when nothing is on a GPU, or nothing crosses daemons") {
  std::string why;
  CHECK(ChooseWireTransport(Part("", "", ""), &why) == WireTransport::kGloo);
  CHECK(why.empty());
  PlanPart one = Part("GPU-a", "GPU-a", "GPU-b");
  for (PlanEndpoint& e : one.targets) e.daemon_id = "t";
  one.members = {Member("t", true)};
  CHECK(ChooseWireTransport(one, &why) == WireTransport::kGloo);
  CHECK(why.empty());
}

}  // namespace
}  // namespace wsync::core::internal
