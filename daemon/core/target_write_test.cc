// AddTargetOp/RunTargetWrite on a 2 x 4 fp32 weight with a rank-1 PEFT
// adapter, every LoRA mode, against values worked out by hand:
//   W = [1 2 3 4; 5 6 7 8], A = [1 0 -1 2], B = [2; -1], s = 0.5
//   s*B@A = [1 0 -1 2; -0.5 0 0.5 -1]
#include <catch2/catch.hpp>
#include <vector>

#include "daemon/core/target_write.h"
#include "kernels/box_copy.h"

namespace wsync::core {
namespace {

using layout::DType;

struct Fixture {
  layout::ModelSpec spec = *layout::ModelSpec::Create({{"w", layout::Shape::Of({2, 4}), DType::kF32},
                                                       {"w.lora_A", layout::Shape::Of({1, 4}), DType::kF32},
                                                       {"w.lora_B", layout::Shape::Of({2, 1}), DType::kF32}});
  layout::ShardSpec shard{"w", layout::Shape::Of({2, 4}), DType::kF32, {}};
  std::vector<float> w = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> a = {1, 0, -1, 2}, b = {2, -1};
  Adapter adapter{1, 2, 1, 0.5, LoraConvention::kPeft};
  layout::CopyOp op;
  Fixture() {
    op.tensor = 0;
    op.canonical = op.src_box = op.dst_box = layout::Box::Whole(shard.shape);
  }
  layout::ShardView View(std::vector<float>& v) { return {&shard, nullptr, v.data()}; }

  // Runs the write of `op` in `mode` into `target`; returns the written
  // digest and checks it against a re-read of the boxes.
  kernels::DigestSums Run(LoraMode mode, const TargetOp& in, bool merge_dims, TargetWrite* tw) {
    auto host = Executor::Host(1);
    auto ctx = host->NewContext();
    REQUIRE(ctx.ok());
    uint64_t word = 10;
    AddTargetOp(spec, mode, op, in, merge_dims, &word, tw);
    CHECK(word == 10 + 4);  // 8 floats: 4 payload words
    REQUIRE(RunTargetWrite(ctx->get(), -1, *tw, 0).ok());
    auto sums = (*ctx)->Finish(1);
    REQUIRE(sums.ok());
    kernels::DigestSums reread = kernels::BoxDigestCpu(tw->boxes.data(), tw->boxes.size(), tw->box_words.data(), 1);
    CHECK((*sums)[0].s1 == reread.s1);
    CHECK((*sums)[0].s2 == reread.s2);
    return (*sums)[0];
  }
};

TEST_CASE("a plain copy, with the pristine base refreshed; merged or boxed dimensions digest alike") {
  Fixture f;
  std::vector<float> target(8, 0), base(8, -1), target2(8, 0);
  layout::ShardView base_view = f.View(base);
  TargetOp in;
  in.src = f.View(f.w);
  in.dst = in.live = f.View(target);
  in.base = &base_view;
  TargetWrite tw;
  kernels::DigestSums merged = f.Run(LoraMode::kNone, in, /*merge_dims=*/true, &tw);
  CHECK(target == f.w);
  CHECK(base == f.w);
  REQUIRE(tw.copies.size() == 1);
  CHECK(tw.copies[0].ndim == 1);  // 2 x 4 contiguous: one row of 8
  CHECK(tw.loras.empty());
  CHECK(tw.box_words == std::vector<uint64_t>{10});

  TargetOp in2 = in;
  in2.dst = in2.live = f.View(target2);
  in2.base = nullptr;
  TargetWrite tw2;
  kernels::DigestSums boxed = f.Run(LoraMode::kNone, in2, /*merge_dims=*/false, &tw2);
  CHECK(target2 == f.w);
  CHECK(tw2.copies[0].ndim == 2);
  CHECK(tw2.base_copies.empty());
  CHECK(boxed.s1 == merged.s1);  // same bytes, same words
  CHECK(boxed.s2 == merged.s2);
}

TEST_CASE("merge writes W + s*B@A, and the base keeps W") {
  Fixture f;
  std::vector<float> target(8, 0), base(8, 0);
  layout::ShardView base_view = f.View(base);
  TargetOp in;
  in.src = f.View(f.w);
  in.dst = in.live = f.View(target);
  in.base = &base_view;
  in.adapter = &f.adapter;
  in.lora_a = f.a.data();
  in.lora_b = f.b.data();
  TargetWrite tw;
  f.Run(LoraMode::kMerge, in, true, &tw);
  CHECK(target == std::vector<float>{2, 2, 2, 6, 4.5, 6, 7.5, 7});
  CHECK(base == f.w);
  CHECK(tw.copies.empty());
  CHECK(tw.loras.size() == 1);
}

TEST_CASE("merge without an adapter active, and mode none with one, copy W") {
  Fixture f;
  std::vector<float> target(8, 0);
  TargetOp in;
  in.src = f.View(f.w);
  in.dst = in.live = f.View(target);
  TargetWrite tw;
  f.Run(LoraMode::kMerge, in, true, &tw);
  CHECK(target == f.w);
  std::vector<float> target2(8, 0);
  in.dst = in.live = f.View(target2);
  in.adapter = &f.adapter;
  in.lora_a = f.a.data();
  in.lora_b = f.b.data();
  TargetWrite tw2;
  f.Run(LoraMode::kNone, in, true, &tw2);
  CHECK(target2 == f.w);
  CHECK(tw2.loras.empty());
}

TEST_CASE("adapter_only rebuilds base + s*B@A with no bytes moving; unmerge subtracts from live") {
  Fixture f;
  std::vector<float> target(8, 0), base = {10, 10, 10, 10, 20, 20, 20, 20};
  layout::ShardView base_view = f.View(base);
  TargetOp in;  // no src: nothing moves
  in.dst = in.live = f.View(target);
  in.base = &base_view;
  in.adapter = &f.adapter;
  in.lora_a = f.a.data();
  in.lora_b = f.b.data();
  TargetWrite tw;
  f.Run(LoraMode::kAdapterOnly, in, true, &tw);
  CHECK(target == std::vector<float>{11, 10, 9, 12, 19.5, 20, 20.5, 19});
  CHECK(base == std::vector<float>{10, 10, 10, 10, 20, 20, 20, 20});  // never written
  CHECK(tw.base_copies.empty());
  CHECK(tw.boxes[0].ndim == 2);  // no source to merge dimensions with: the box as it is

  std::vector<float> live = {2, 2, 2, 6, 4.5, 6, 7.5, 7};
  TargetOp un;
  un.dst = un.live = f.View(live);  // in place
  un.adapter = &f.adapter;
  un.lora_a = f.a.data();
  un.lora_b = f.b.data();
  TargetWrite tw2;
  f.Run(LoraMode::kUnmerge, un, true, &tw2);
  CHECK(live == f.w);
}

}  // namespace
}  // namespace wsync::core
