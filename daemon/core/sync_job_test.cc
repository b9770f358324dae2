// SyncJob's phases, one at a time, on host memory: a 2 x 4 fp32 weight with
// a rank-1 PEFT adapter, values worked out by hand:
//   W = [1 2 3 4; 5 6 7 8], A = [1 0 -1 2], B = [2; -1], s = 0.5
//   W + s*B@A = [2 2 2 6; 4.5 6 7.5 7]
#include "daemon/core/sync_job.h"

#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "daemon/core/core_impl.h"

namespace wsync::core::internal {
namespace {

using layout::DType;

struct Fixture {
  layout::ModelSpec spec = *layout::ModelSpec::Create({{"w", layout::Shape::Of({2, 4}), DType::kF32},
                                                       {"w.lora_A", layout::Shape::Of({1, 4}), DType::kF32},
                                                       {"w.lora_B", layout::Shape::Of({2, 1}), DType::kF32}});
  layout::ShardSpec shard{"w", layout::Shape::Of({2, 4}), DType::kF32, {}};
  std::vector<float> w = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> live = std::vector<float>(8, 0);
  std::vector<float> a = {1, 0, -1, 2}, b = {2, -1};
  std::map<int32_t, Adapter> adapters = {{0, Adapter{1, 2, 1, 0.5, LoraConvention::kPeft}}};
  layout::CopyOp op;
  RankReg rank;
  Replica replica;
  std::unique_ptr<Executor> host = Executor::Host(1);
  std::unique_ptr<ExecContext> ctx = *host->NewContext();

  explicit Fixture(UpdateMode mode) {
    shard.pieces.push_back({0, layout::Box::Whole(shard.shape), layout::Box::Whole(shard.shape)});
    op.tensor = 0;
    op.canonical = op.src_box = op.dst_box = layout::Box::Whole(shard.shape);
    rank.session_id = "s1";
    rank.role = Role::kTarget;
    rank.replica_id = "rep";
    rank.shards = {shard};
    rank.live = {live.data()};
    rank.strides = {{}};
    rank.staging.resize(1);
    rank.base.resize(1);
    replica.id = "rep";
    replica.mode = mode;
  }
  layout::ShardView Source() { return {&shard, nullptr, w.data()}; }
  std::vector<float> Read(const memory::Buffer& buf) {
    std::vector<float> out(8);
    std::memcpy(out.data(), buf.data(), 32);
    return out;
  }
  // The job over this daemon's replica and one another daemon holds.
  std::unique_ptr<SyncJob> Job(LoraMode lora, std::set<int32_t> active) {
    auto sj = std::make_unique<SyncJob>(&spec, lora, adapters, std::move(active));
    sj->AddTarget(&rank, &replica, "rep", -1);
    sj->AddTarget(nullptr, nullptr, "far", -1);
    return sj;
  }
  // AddWrite of `op` into target 0, run and waited for.
  uint64_t Write(SyncJob* sj) {
    TargetWrite tw;
    uint64_t word = 0;
    const uint64_t bytes = sj->AddWrite(0, op, Source(), /*merge_dims=*/true, &word, &tw);
    REQUIRE(RunTargetWrite(ctx.get(), -1, tw, 0).ok());
    REQUIRE(ctx->Finish(1).ok());
    return bytes;
  }
};

TEST_CASE("staged: the write goes to staging, the commit copies it to live, settle records the version") {
  Fixture f(UpdateMode::kStaged);
  auto sj = f.Job(LoraMode::kNone, {});
  CHECK(sj->full());
  CHECK(sj->Sessions() == SessionReplicas{{"s1", {"rep"}}});  // the other daemon's target is not here
  CHECK(sj->Sessions(UpdateMode::kStaged) == SessionReplicas{{"s1", {"rep"}}});
  CHECK(sj->Sessions(UpdateMode::kInPlace).empty());
  CHECK(sj->Devices() == std::set<int>{-1});

  REQUIRE(sj->PrepareTargets(f.ctx.get()).ok());
  REQUIRE(f.rank.staging[0] != nullptr);
  REQUIRE(f.rank.base[0] != nullptr);  // w has an adapter, idle in this sync: W refreshes its fp32 base
  CHECK(f.Write(sj.get()) == 32);
  CHECK(f.Read(*f.rank.staging[0]) == f.w);
  CHECK(f.Read(*f.rank.base[0]) == f.w);
  CHECK(f.live == std::vector<float>(8, 0));  // live memory untouched until the commit
  CHECK_FALSE(sj->LiveWritten("rep"));

  sj->Paused({{"s1", {"rep"}}});
  REQUIRE(sj->CommitStaged(f.ctx.get()).ok());
  CHECK(f.live == f.w);
  CHECK(sj->LiveWritten("rep"));  // a failure from here on would leave it mixed

  std::vector<std::string> refused;
  auto notices = sj->Settle("m", 3, absl::OkStatus(), {{"rep", "d3"}}, /*has_adapters=*/false, &refused);
  CHECK(refused.empty());
  CHECK(f.replica.version == 3);
  CHECK(f.replica.digest == "d3");
  CHECK(f.replica.health() == Replica::Health::kCurrent);
  REQUIRE(notices.size() == 2);
  CHECK(notices[0].session == "s1");
  CHECK(notices[0].event.kind == Event::Kind::kResume);
  CHECK(notices[0].event.replica_id == "rep");
  CHECK_FALSE(notices[0].event.poisoned);
  CHECK(notices[1].event.kind == Event::Kind::kCommitted);
  CHECK(notices[1].event.version == 3);
  CHECK(notices[1].event.digest == "d3");
}

TEST_CASE("in place, merge: W + s*B@A in live memory; a failure then poisons the replica and its LoRA base") {
  Fixture f(UpdateMode::kInPlace);
  REQUIRE(f.replica.Commit(1, "d1", /*full=*/true, /*has_adapters=*/true));
  REQUIRE(f.replica.base_valid());
  auto sj = f.Job(LoraMode::kMerge, {0});
  REQUIRE(sj->PrepareTargets(f.ctx.get()).ok());
  CHECK(f.rank.staging[0] == nullptr);
  REQUIRE(f.rank.base[0] != nullptr);  // w has an adapter: its pristine fp32 base is kept
  REQUIRE(sj->PrepareLoraOperands(f.ctx.get(), {{1, 4}, {2, 2}}).ok());
  std::memcpy(sj->LoraOperand(-1, 1), f.a.data(), 16);
  std::memcpy(sj->LoraOperand(-1, 2), f.b.data(), 8);
  sj->Paused(sj->Sessions(UpdateMode::kInPlace));

  CHECK(f.Write(sj.get()) == 32);
  CHECK(f.live == std::vector<float>{2, 2, 2, 6, 4.5, 6, 7.5, 7});
  CHECK(f.Read(*f.rank.base[0]) == f.w);
  CHECK(sj->LiveWritten("rep"));

  std::vector<std::string> refused;
  auto notices = sj->Settle("m", 2, absl::AbortedError("daemon 'b' died"), {}, /*has_adapters=*/true, &refused);
  CHECK(f.replica.poisoned());
  CHECK(f.replica.version == 1);
  CHECK_FALSE(f.replica.base_valid());  // its twin was being rewritten
  REQUIRE(notices.size() == 2);
  CHECK(notices[0].event.kind == Event::Kind::kResume);
  CHECK(notices[0].event.poisoned);
  CHECK(notices[1].event.kind == Event::Kind::kFailed);
  CHECK(notices[1].event.code == static_cast<int>(absl::StatusCode::kAborted));
  CHECK(notices[1].event.message == "daemon 'b' died");
}

TEST_CASE("a failure before live memory is written leaves the replica current and unpoisoned") {
  Fixture f(UpdateMode::kStaged);
  REQUIRE(f.replica.Commit(1, "d1", true, false));
  auto sj = f.Job(LoraMode::kNone, {});
  REQUIRE(sj->PrepareTargets(f.ctx.get()).ok());
  f.Write(sj.get());  // staging only
  std::vector<std::string> refused;
  auto notices = sj->Settle("m", 2, absl::DataLossError("digest mismatch"), {}, false, &refused);
  CHECK(f.replica.health() == Replica::Health::kCurrent);
  CHECK(f.replica.version == 1);
  REQUIRE(notices.size() == 1);  // nothing was paused
  CHECK(notices[0].event.kind == Event::Kind::kFailed);
}

TEST_CASE("adapter_only writes only active adapters, from the pristine base; it cannot repair a poisoned replica") {
  Fixture f(UpdateMode::kInPlace);
  auto idle = f.Job(LoraMode::kAdapterOnly, {});
  CHECK_FALSE(idle->full());
  CHECK_FALSE(idle->Writes(f.op));
  TargetWrite tw;
  uint64_t word = 0;
  CHECK(idle->AddWrite(0, f.op, {}, true, &word, &tw) == 0);
  CHECK(tw.copies.empty());
  CHECK(tw.loras.empty());
  CHECK_FALSE(idle->AnyLiveWritten());

  f.replica.Poison();
  auto sj = f.Job(LoraMode::kAdapterOnly, {0});
  REQUIRE(sj->PrepareTargets(f.ctx.get()).ok());
  CHECK(f.rank.base[0] == nullptr);  // W does not move: no base is made here
  std::vector<std::string> refused;
  sj->Settle("m", 5, absl::OkStatus(), {{"rep", "d5"}}, true, &refused);
  CHECK(refused == std::vector<std::string>{"rep"});
  CHECK(f.replica.poisoned());
  CHECK(f.replica.version == 0);
}

TEST_CASE("verify re-reads what each check wrote and names the checks whose memory changed since") {
  Fixture f(UpdateMode::kInPlace);
  auto sj = f.Job(LoraMode::kNone, {});
  REQUIRE(sj->PrepareTargets(f.ctx.get()).ok());
  TargetWrite tw;
  uint64_t word = 0;
  sj->AddWrite(0, f.op, f.Source(), /*merge_dims=*/false, &word, &tw);
  REQUIRE(RunTargetWrite(f.ctx.get(), -1, tw, 0).ok());
  auto written = f.ctx->Finish(1);
  REQUIRE(written.ok());
  const size_t c = sj->AddCheck(0, tw.boxes, tw.box_words, word);
  sj->SetWritten(c, (*written)[0]);
  CHECK(word == 4);  // 8 floats: 4 payload words

  auto same = sj->Verify(f.ctx.get());
  REQUIRE(same.ok());
  CHECK(same->empty());
  CHECK(sj->check(c).reread.s1 == (*written)[0].s1);
  CHECK(sj->check(c).reread.s2 == (*written)[0].s2);

  f.live[5] = -6;  // the client writes its weights during the sync
  auto changed = sj->Verify(f.ctx.get());
  REQUIRE(changed.ok());
  CHECK(*changed == std::vector<size_t>{c});
}

TEST_CASE("zero fills land where the job writes and are committed with the rest") {
  Fixture f(UpdateMode::kStaged);
  f.live.assign(8, 9);
  auto sj = f.Job(LoraMode::kNone, {});
  REQUIRE(sj->PrepareTargets(f.ctx.get()).ok());
  std::memcpy(f.rank.staging[0]->data(), f.w.data(), 32);
  layout::FillOp fill;
  fill.dst_shard = 0;
  fill.dst_box = layout::Box::Whole(f.shard.shape);
  fill.dst_box.off[0] = 1;  // the second row: padding
  fill.dst_box.size[0] = 1;
  REQUIRE(sj->WriteFills(f.ctx.get(), {{0, &fill}}).ok());
  REQUIRE(f.ctx->Finish(0).ok());
  CHECK(f.Read(*f.rank.staging[0]) == std::vector<float>{1, 2, 3, 4, 0, 0, 0, 0});
  CHECK(f.live == std::vector<float>(8, 9));
  REQUIRE(sj->CommitStaged(f.ctx.get()).ok());
  CHECK(f.live == std::vector<float>{9, 9, 9, 9, 0, 0, 0, 0});  // only the recorded box was committed
}

}  // namespace
}  // namespace wsync::core::internal
