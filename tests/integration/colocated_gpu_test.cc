// GPU test (tag gpu): syncs between a trainer process and a generator
// process that hold cudaMalloc'ed buffers registered through CUDA IPC:
// colocated, through a real daemon in this process; and across two wsyncd
// processes on one GPU (the host-staged path: pinned wire buffers, Gloo).
// The expected generator bytes are computed here from the canonical tensors
// with a bf16 rounding written for this test, independent of the planner
// and the kernels.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/testing/gpu_child.h"
#include "tests/testing/process.h"
#include "tests/testing/wsyncd_process.h"

namespace wsync {
namespace {

using testing::GpuChild;
using testing::GpuRank;
using testing::GpuScenario;

// Canonical tensors: a column-parallel weight (rows split over TP), a
// row-parallel weight (columns split), a replicated norm.
struct Tensor {
  const char* name;
  int64_t rows, cols;
  int split;  // dimension split over TP; -1 = replicated
};
const Tensor kTensors[] = {{"layers.0.qkv.weight", 256, 64, 0}, {"layers.0.proj.weight", 64, 96, 1}, {"norm.weight", 1, 64, -1}};

std::vector<float> Canonical(int t, uint64_t seed) {
  std::mt19937_64 rng(seed * 1000 + t);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> v(kTensors[t].rows * kTensors[t].cols);
  for (float& x : v) x = nd(rng);
  return v;
}

uint16_t Bf16(float f) {  // round to nearest even; the data has no NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

std::vector<int64_t> Shape(const Tensor& t) {
  return t.rows == 1 ? std::vector<int64_t>{t.cols} : std::vector<int64_t>{t.rows, t.cols};
}

void SetBox(v1::Box* b, std::vector<int64_t> off, std::vector<int64_t> size) {
  for (int64_t o : off) b->add_offsets(o);
  for (int64_t s : size) b->add_sizes(s);
}

// "trainer-tp1", "trainer-tp2": fp32 sources; "gen-staged", "gen-in_place":
// one bf16 TP=1 replica "gen", zero-filled. A "-remote" generator also
// registers the model, on its own daemon.
GpuScenario Scenario(const std::string& name, uint64_t seed) {
  GpuScenario sc;
  const bool trainer = name.rfind("trainer", 0) == 0;
  const bool remote = name.size() > 7 && name.substr(name.size() - 7) == "-remote";
  const int tp = name == "trainer-tp2" ? 2 : 1;
  if (trainer || remote) {
    v1::RegisterModelRequest m;
    m.set_model_id("m");
    for (const Tensor& t : kTensors) {
      auto* ct = m.add_tensors();
      ct->set_name(t.name);
      for (int64_t d : Shape(t)) ct->add_shape(d);
      ct->set_dtype(v1::FLOAT32);
    }
    sc.model = m;
  }
  for (int r = 0; r < tp; ++r) {
    GpuRank rank;
    rank.request = testing::RankRequest("m", name, r, tp);
    auto& req = rank.request;
    for (int t = 0; t < 3; ++t) {
      const Tensor& T = kTensors[t];
      const int64_t rows = T.split == 0 ? T.rows / tp : T.rows, cols = T.split == 1 ? T.cols / tp : T.cols;
      const int64_t r0 = T.split == 0 ? r * rows : 0, c0 = T.split == 1 ? r * cols : 0;
      auto* b = req.add_buffers();
      b->set_name(T.name);
      b->set_dtype(trainer ? v1::FLOAT32 : v1::BFLOAT16);
      auto* p = b->add_pieces();
      p->set_tensor(T.name);
      if (T.rows == 1) {
        b->add_shape(cols);
        SetBox(p->mutable_canonical(), {c0}, {cols});
        SetBox(p->mutable_shard(), {0}, {cols});
      } else {
        b->add_shape(rows);
        b->add_shape(cols);
        SetBox(p->mutable_canonical(), {r0, c0}, {rows, cols});
        SetBox(p->mutable_shard(), {0, 0}, {rows, cols});
      }
      std::vector<uint8_t> bytes;
      if (trainer) {
        std::vector<float> full = Canonical(t, seed), shard;
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t j = 0; j < cols; ++j) shard.push_back(full[(r0 + i) * T.cols + c0 + j]);
        bytes.resize(shard.size() * 4);
        std::memcpy(bytes.data(), shard.data(), bytes.size());
      } else {
        bytes.assign(rows * cols * 2, 0);
      }
      rank.bytes.push_back(std::move(bytes));
    }
    sc.ranks.push_back(std::move(rank));
  }
  return sc;
}

std::vector<uint8_t> ExpectedBf16(int t, uint64_t seed) {
  std::vector<uint8_t> out;
  for (float f : Canonical(t, seed)) {
    uint16_t h = Bf16(f);
    out.push_back(h & 0xff);
    out.push_back(h >> 8);
  }
  return out;
}

// A daemon here, a trainer and a generator child; fails the test if any
// part does not come up.
std::unique_ptr<testing::ColocatedDaemon> Start(const std::string& trainer, const std::string& gen,
                                                int64_t delay_ms = 0) {
  server::Options o;
  o.fault_bucket_delay_ms = delay_ms;
  auto d = testing::ColocatedDaemon::Start(trainer, gen, o);
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  return std::move(*d);
}

void CheckGenerator(testing::ColocatedDaemon& d, uint64_t seed) {
  for (int t = 0; t < 3; ++t) {
    auto got = d.generator().Read(0, t);
    REQUIRE(got.ok());
    INFO("tensor " << kTensors[t].name << ", seed " << seed);
    CHECK(*got == ExpectedBf16(t, seed));
  }
}

TEST_CASE("colocated GPU sync: TP=2 fp32 trainer -> TP=1 bf16 generator, staged and in place", "[gpu]") {
  for (const char* mode : {"gen-staged", "gen-in_place"}) {
    INFO(mode);
    auto d = Start("trainer-tp2", mode);
    auto r1 = d->Sync("m", 1);
    INFO(r1.status().ToString());
    REQUIRE(r1.ok());
    CHECK(r1->version() == 1);
    CheckGenerator(*d, 1);
    REQUIRE(d->trainer().Fill(2).ok());
    auto r2 = d->Sync("m", 2, 4096);  // several buckets (4096 is the smallest bucket)
    INFO(r2.status().ToString());
    REQUIRE(r2.ok());
    CHECK(r2->buckets() > 3);
    CheckGenerator(*d, 2);
    auto again = d->Sync("m", 2);  // a retry of a committed version moves nothing
    REQUIRE(again.ok());
  }
}

TEST_CASE("colocated GPU sync: TP=1 -> TP=1", "[gpu]") {
  auto d = Start("trainer-tp1", "gen-staged");
  auto r = d->Sync("m", 1);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CheckGenerator(*d, 1);
}

TEST_CASE("killing the trainer mid-sync leaves the generator on its previous version", "[gpu]") {
  auto d = Start("trainer-tp2", "gen-staged", /*delay_ms=*/150);
  REQUIRE(d->Sync("m", 1).ok());
  CheckGenerator(*d, 1);
  REQUIRE(d->trainer().Fill(2).ok());
  absl::StatusOr<v1::SyncResult> r2 = absl::UnknownError("not run");
  std::thread t([&] { r2 = d->Sync("m", 2, 4096); });
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  d->trainer().Kill();
  t.join();
  INFO(r2.status().ToString());
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.status().code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(r2.status().message()), Catch::Contains("trainer"));
  CheckGenerator(*d, 1);  // staged: the live buffers still hold version 1
  auto st = d->driver().GetStatus();
  REQUIRE(st.ok());
  REQUIRE(st->models_size() == 1);
  for (const auto& rep : st->models(0).replicas()) CHECK(rep.version() == 1);
  auto r3 = d->Sync("m", 3);  // the trainer's ranks are gone: a precise refusal
  REQUIRE_FALSE(r3.ok());
  CHECK(r3.status().code() == absl::StatusCode::kFailedPrecondition);
}

// Two wsyncd processes on one GPU: "a" (coordinator) serves the trainer,
// "b" the generator. NCCL cannot join two ranks on one GPU, so the bytes
// take the host-staged path.
std::unique_ptr<testing::WsyncdProcess> StartWsyncd(const std::string& id, const std::string& dir,
                                                    std::vector<std::string> extra) {
  extra.push_back("--insecure");
  auto d = testing::WsyncdProcess::Start(id, dir, extra);
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  return std::move(*d);
}

TEST_CASE("two daemons on one GPU: TP=2 fp32 trainer on one, TP=1 bf16 generator on the other (host-staged)", "[gpu]") {
  for (const char* mode : {"gen-staged-remote", "gen-in_place-remote"}) {
    INFO(mode);
    const std::string dir = testing::MakeTempDir();
    auto a = StartWsyncd("a", dir, {});
    auto b = StartWsyncd("b", dir, {"--peers", a->address()});
    auto trainer = GpuChild::Spawn(a->socket(), "trainer", "trainer-tp2");
    REQUIRE(trainer.ok());
    auto gen = GpuChild::Spawn(b->socket(), "generator", mode);
    REQUIRE(gen.ok());
    absl::Status ts = (*trainer)->WaitRegistered(), gs = (*gen)->WaitRegistered();
    INFO(ts.ToString() << " / " << gs.ToString() << "\na:\n" << a->proc().Stderr() << "\nb:\n" << b->proc().Stderr());
    REQUIRE(ts.ok());
    REQUIRE(gs.ok());
    auto driver = a->Attach("driver");
    REQUIRE(driver.ok());
    for (uint64_t v : {1, 2}) {
      if (v == 2) REQUIRE((*trainer)->Fill(2).ok());
      v1::SyncRequest req;
      req.set_model_id("m");
      req.set_version(v);
      req.set_max_bucket_bytes(4096);  // several wire buckets
      auto r = (*driver)->Sync(req, nullptr);
      INFO(r.status().ToString() << "\na:\n" << a->proc().Stderr() << "\nb:\n" << b->proc().Stderr());
      REQUIRE(r.ok());
      CHECK(r->version() == v);
      for (int t = 0; t < 3; ++t) {
        auto got = (*gen)->Read(0, t);
        REQUIRE(got.ok());
        INFO("tensor " << kTensors[t].name << ", version " << v);
        CHECK(*got == ExpectedBf16(t, v));
      }
    }
  }
}

}  // namespace
}  // namespace wsync

int main(int argc, char** argv) {
  int child = wsync::testing::MaybeRunGpuChild(argc, argv, wsync::Scenario);
  if (child >= 0) return child;
  return Catch::Session().run(argc, argv);
}
