// The mixed context's routing, with a host context standing in for the GPU:
// work lands in host memory either way, and Finish sums both contexts.
#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "daemon/core/executor.h"
#include "kernels/box_copy.h"

namespace wsync::core {
namespace {

kernels::BoxCopyOp Copy1d(const void* src, void* dst, int64_t n) {
  kernels::BoxCopyOp op;
  op.src = src;
  op.dst = dst;
  op.src_dtype = op.dst_dtype = kernels::DType::kF32;
  op.ndim = 1;
  op.extent[0] = n;
  op.src_stride[0] = op.dst_stride[0] = 1;
  return op;
}

TEST_CASE("a mixed context routes host and (stand-in) GPU work and sums their digests") {
  auto host = Executor::Host(1);
  auto ctx = MixedContext::Create(host.get(), nullptr, absl::OkStatus(), /*stand_in=*/true);
  REQUIRE(ctx.ok());
  std::vector<float> src(1000), a(1000, 0), b(1000, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<float>(i) * 0.5f;
  auto shared = (*ctx)->AllocateShared(4000, "wire", /*for_gpus=*/true);
  REQUIRE(shared.ok());
  REQUIRE((*shared)->size() >= 4000);
  float* wire = static_cast<float*>((*shared)->data());

  // Device 0 (standing in) packs into the shared buffer, the host unpacks.
  kernels::BoxCopyOp pack = Copy1d(src.data(), wire, 1000), unpack = Copy1d(wire, a.data(), 1000);
  uint64_t base = 0;
  REQUIRE((*ctx)->CopyDigest(0, &pack, 1, &base, 0).ok());
  REQUIRE((*ctx)->CopyDigest(-1, &unpack, 1, &base, 1).ok());
  auto sums = (*ctx)->Finish(2);
  REQUIRE(sums.ok());
  REQUIRE(sums->size() == 2);
  CHECK(a == src);
  CHECK((*sums)[0].s1 == (*sums)[1].s1);  // the same bytes at the same words
  CHECK((*sums)[0].s2 == (*sums)[1].s2);

  // Both contexts adding into one slot: the sum of the two digests.
  kernels::BoxCopyOp half1 = Copy1d(src.data(), b.data(), 500), half2 = Copy1d(src.data() + 500, b.data() + 500, 500);
  uint64_t base1 = 0, base2 = 250;  // 500 floats = 250 words
  REQUIRE((*ctx)->CopyDigest(0, &half1, 1, &base1, 0).ok());
  REQUIRE((*ctx)->CopyDigest(-1, &half2, 1, &base2, 0).ok());
  auto whole = (*ctx)->Finish(1);
  REQUIRE(whole.ok());
  CHECK(b == src);
  CHECK((*whole)[0].s1 == (*sums)[0].s1);
  CHECK((*whole)[0].s2 == (*sums)[0].s2);
}

TEST_CASE("GPU work without a GPU executor fails with the executor's reason; host work still runs") {
  auto host = Executor::Host(1);
  auto ctx = MixedContext::Create(host.get(), nullptr, absl::FailedPreconditionError("built without CUDA"), false);
  REQUIRE(ctx.ok());
  std::vector<float> src(8, 1.0f), dst(8, 0.0f);
  kernels::BoxCopyOp op = Copy1d(src.data(), dst.data(), 8);
  absl::Status s = (*ctx)->Copy(0, &op, 1);
  CHECK(s.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(s.message() == "built without CUDA");
  CHECK((*ctx)->AllocateShared(64, "wire", true).status().code() == absl::StatusCode::kFailedPrecondition);
  REQUIRE((*ctx)->Copy(-1, &op, 1).ok());
  REQUIRE((*ctx)->Finish(0).ok());
  CHECK(dst == src);
}

}  // namespace
}  // namespace wsync::core
