// Core sync semantics on real shared memory, in one process: registration,
// staged and in-place commits, versions, LoRA modes, digests, cancellation,
// leases. Multi-process behaviour is covered by tests/python.
#include "daemon/core/core.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/layout_testing.h"
#include "kernels/fp8.h"
#include "daemon/core/pause_acker.h"
#include "daemon/layout/model_config.h"

namespace wsync::core {
namespace {

using layout::DType;

struct Shm {
  std::string name;
  void* ptr = nullptr;
  size_t size = 0;
  explicit Shm(size_t bytes) : size(bytes) {
    static int n = 0;
    name = absl::StrCat("/wsync-core-test-", getpid(), "-", n++);
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, static_cast<off_t>(bytes)) == 0);
    ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
  }
  ~Shm() {
    munmap(ptr, size);
    shm_unlink(name.c_str());
  }
};

using Sink = PauseAcker;

// The test process as the daemon would see it over its socket: a local
// caller, not an administrator.
Caller Me() { return Caller::Local(getuid(), getgid(), getpid(), false); }

// A client process in miniature: a session and the shm it registered.
struct Client {
  Core* core;
  std::string session;
  Sink sink;
  std::vector<std::unique_ptr<Shm>> shms;
  Client(Core* c, const std::string& name) : core(c), sink(c, &session) {
    auto s = core->OpenSession({name, getpid(), Me()}, &sink);
    REQUIRE(s.ok());
    session = *s;
  }
  // Registers one rank's recipe shards; returns their memory.
  // Shards named by the recipe go without pieces; the others (LoRA tensors)
  // list theirs, with tensor names from `spec`.
  std::vector<void*> Register(const std::string& model, Role role, const std::string& replica,
                              const std::vector<layout::ShardSpec>& shards, const std::string& recipe,
                              layout::RankCoords rank, UpdateMode mode = UpdateMode::kStaged,
                              const layout::ModelSpec* spec = nullptr, size_t recipe_shards = SIZE_MAX) {
    std::vector<void*> ptrs;
    auto r = TryRegister(model, role, replica, shards, recipe, rank, mode, spec, recipe_shards, &ptrs);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    return ptrs;
  }
  // Register, returning the daemon's answer; *ptrs receives the memory.
  absl::StatusOr<ShardsRegistered> TryRegister(const std::string& model, Role role, const std::string& replica,
                                               const std::vector<layout::ShardSpec>& shards,
                                               const std::string& recipe, layout::RankCoords rank,
                                               UpdateMode mode, const layout::ModelSpec* spec,
                                               size_t recipe_shards, std::vector<void*>* out) {
    RegisterShardsArgs a;
    a.caller = Me();
    a.session_id = session;
    a.model_id = model;
    a.role = role;
    a.replica_id = replica;
    a.rank = rank;
    a.recipe = recipe;
    a.mode = mode;
    std::vector<void*>& ptrs = *out;
    for (const auto& s : shards) {
      size_t bytes = s.shape.NumElements() * kernels::DTypeSize(s.dtype);
      shms.push_back(std::make_unique<Shm>(bytes));
      BufferArg b;
      b.name = s.name;
      b.shm_name = shms.back()->name;
      b.nbytes = bytes;
      b.shape = s.shape;
      b.dtype = s.dtype;
      if (ptrs.size() >= recipe_shards) {
        for (const auto& p : s.pieces) b.pieces.push_back({spec->tensor(p.tensor).name, p.canonical, p.shard});
      }
      a.buffers.push_back(b);
      ptrs.push_back(shms.back()->ptr);
    }
    return core->RegisterShards(a);
  }
};

constexpr char kConfig[] = R"({"model_type": "qwen3_moe", "hidden_size": 16,
  "intermediate_size": 32, "moe_intermediate_size": 8, "num_experts": 4,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
  "num_hidden_layers": 2, "vocab_size": 70, "tie_word_embeddings": false})";

struct World {
  std::unique_ptr<Core> core = Core::Create({"test", {}, 60000, 2000, 4096, 2});
  layout::ModelConfig config = *layout::ParseHfConfig(kConfig);
  layout::ModelSpec spec;
  layout::testing::CanonicalData data;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::vector<void*>> src_mem;
  std::vector<layout::Endpoint> src_eps;

  explicit World(bool lora = false) {
    clients.push_back(std::make_unique<Client>(core.get(), "trainer"));
    RegisterModelArgs m;
    m.caller = Me();
    m.session_id = clients[0]->session;
    m.model_id = "m";
    m.has_config = true;
    m.config = config;
    if (lora) {
      for (int l = 0; l < 2; ++l) {
        for (const char* p : {"q_proj", "o_proj"}) {
          std::string base = absl::StrCat("model.layers.", l, ".self_attn.", p);
          m.adapters.push_back({base + ".weight", base + ".lora_A.weight", base + ".lora_B.weight", 4, 0.5,
                                LoraConvention::kPeft});
        }
      }
    }
    auto reg = core->RegisterModel(m);
    INFO(reg.status().ToString());
    REQUIRE(reg.ok());
    // Rebuild the model spec the way the core does, for the reference.
    auto t = layout::CanonicalTensors(config, DType::kBF16);
    std::vector<layout::TensorSpec> tensors = *t;
    for (const auto& ad : m.adapters) {
      const auto* base = &tensors[0];
      for (const auto& x : tensors) {
        if (x.name == ad.base_tensor) base = &x;
      }
      layout::Shape as = layout::Shape::Of({4, base->shape.d[1]});
      layout::Shape bs = layout::Shape::Of({base->shape.d[0], 4});
      tensors.push_back({ad.a_tensor, as, DType::kBF16});
      tensors.push_back({ad.b_tensor, bs, DType::kBF16});
    }
    spec = *layout::ModelSpec::Create(tensors);
    std::mt19937 rng(5);
    data = layout::testing::RandomCanonical(spec, rng);
    // Megatron TP=2 x PP=2 trainer ranks, fp32 (one session each).
    layout::LayoutSizes sizes;
    sizes.tp = 2;
    sizes.pp = 2;
    const auto grid = layout::EngineRanks("megatron", sizes);
    for (const layout::RankCoords& r : *grid) {
      if (r.tp != 0 || r.pp != 0) clients.push_back(std::make_unique<Client>(core.get(), "trainer"));
      Client& c = *clients.back();
      auto shards = *layout::BuildShards(spec, config, "megatron", {}, r, DType::kF32);
      const size_t recipe_shards = shards.size();
      if (lora && r.tp == 0 && r.pp == 0) {
        // The first trainer also holds every adapter tensor whole.
        for (int32_t t = 0; t < spec.size(); ++t) {
          const auto& ts = spec.tensor(t);
          if (ts.name.find("lora_") == std::string::npos) continue;
          layout::ShardSpec s{ts.name, ts.shape, DType::kF32, {}};
          s.pieces.push_back({t, layout::Box::Whole(ts.shape), layout::Box::Whole(ts.shape)});
          shards.push_back(s);
        }
      }
      auto ptrs = c.Register("m", Role::kSource, "", shards, "megatron", r, UpdateMode::kStaged, &spec,
                             recipe_shards);
      for (size_t i = 0; i < shards.size(); ++i) {
        auto bytes = layout::testing::Materialize(spec, shards[i], data);
        std::memcpy(ptrs[i], bytes.data(), bytes.size());
      }
      src_mem.push_back(ptrs);
      src_eps.push_back({"", {}, shards});
    }
  }

  // A vLLM target replica: one session for all its ranks.
  std::vector<std::vector<void*>> Replica(const std::string& id, int tp, UpdateMode mode,
                                          std::vector<layout::Endpoint>* eps, DType dt = DType::kBF16) {
    clients.push_back(std::make_unique<Client>(core.get(), "gen-" + id));
    Client& c = *clients.back();
    std::vector<std::vector<void*>> mem;
    for (int r = 0; r < tp; ++r) {
      layout::RankCoords rc;
      rc.tp = r;
      rc.tp_size = tp;
      auto shards = *layout::BuildShards(spec, config, "vllm", {}, rc, dt);
      auto ptrs = c.Register("m", Role::kTarget, id, shards, "vllm", rc, mode);
      for (size_t i = 0; i < shards.size(); ++i) {
        std::memset(ptrs[i], 0xab, shards[i].shape.NumElements() * kernels::DTypeSize(dt));
      }
      mem.push_back(ptrs);
      eps->push_back({"", {}, shards});
    }
    return mem;
  }
};

bool Matches(const World& w, const std::vector<layout::Endpoint>& eps,
             const std::vector<std::vector<void*>>& mem) {
  for (size_t e = 0; e < eps.size(); ++e) {
    for (size_t s = 0; s < eps[e].shards.size(); ++s) {
      auto want = layout::testing::Materialize(w.spec, eps[e].shards[s], w.data);
      if (std::memcmp(want.data(), mem[e][s], want.size()) != 0) return false;
    }
  }
  return true;
}

// Process r of a vLLM replica of `world` tensor-parallel processes, with its
// world size declared; with expert parallelism its expert rank is r too.
layout::RankCoords VllmProcess(int r, int world, bool ep) {
  layout::RankCoords rc;
  rc.rank = r;
  rc.world_size = world;
  rc.tp = r;
  rc.tp_size = world;
  if (ep) {
    rc.ep = r;
    rc.ep_size = world;
  }
  return rc;
}

SyncArgs Args(uint64_t v) {
  SyncArgs a;
  a.caller = Me();
  a.model_id = "m";
  a.version = v;
  return a;
}

TEST_CASE("staged and in-place replicas receive every byte, versions are monotonic and idempotent") {
  World w;
  std::vector<layout::Endpoint> e4, e1;
  auto m4 = w.Replica("gen-a", 4, UpdateMode::kStaged, &e4);
  auto m1 = w.Replica("gen-b", 1, UpdateMode::kInPlace, &e1);
  std::vector<Progress> seen;
  auto r = w.core->Sync(Args(1), [&](const Progress& p) { seen.push_back(p); }, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(Matches(w, e4, m4));
  CHECK(Matches(w, e1, m1));
  CHECK(r->replicas.size() == 2);
  CHECK(r->buckets > 1);
  CHECK(r->digest.size() == 32);
  CHECK(seen.back().bytes_done == seen.back().bytes_total);
  // Each generator hears about its own replica only: a pause, a resume and
  // the commit.
  for (size_t c = w.clients.size() - 2; c < w.clients.size(); ++c) {
    const std::string mine = c == w.clients.size() - 1 ? "gen-b" : "gen-a";
    auto events = w.clients[c]->sink.events();
    int pauses = 0, commits = 0;
    for (const Event& ev : events) {
      CHECK(ev.replica_id == mine);
      pauses += ev.kind == Event::Kind::kPause;
      commits += ev.kind == Event::Kind::kCommitted;
    }
    CHECK(pauses == 1);
    CHECK(commits == 1);
  }
  // The in-place replica was paused (and acked by nobody: the test's sink
  // does not ack, so give the ack ourselves before syncing again).
  auto status = w.core->GetStatus(Me());
  REQUIRE(status.models.size() == 1);
  for (const auto& rep : status.models[0].replicas) CHECK(rep.version == 1);

  SECTION("retrying the committed version is idempotent") {
    auto again = w.core->Sync(Args(1), nullptr, nullptr);
    REQUIRE(again.ok());
    CHECK(again->already_committed);
    CHECK(again->digest == r->digest);
  }
  SECTION("an older version is refused") {
    auto old = w.core->Sync(Args(0), nullptr, nullptr);
    CHECK(old.status().code() == absl::StatusCode::kInvalidArgument);
  }
  SECTION("WaitVersion returns at once for a committed version and times out for a future one") {
    auto ok = w.core->WaitVersion("m", "gen-a", 1, 0, nullptr);
    REQUIRE(ok.ok());
    CHECK(ok->version == 1);
    auto late = w.core->WaitVersion("m", "gen-a", 2, 50, nullptr);
    CHECK(late.status().code() == absl::StatusCode::kDeadlineExceeded);
    CHECK(late.status().message() ==
          "model 'm' replica 'gen-a' did not reach version 2 within 50 ms (it is at version 1)");
  }
}

// Canonical data with every adapter merged (W + s * B @ A), computed by
// naive loops independent of the LoRA kernel.
layout::testing::CanonicalData Merged(const World& w, double scale) {
  std::vector<layout::testing::NamedAdapter> ads;
  for (int l = 0; l < 2; ++l) {
    for (const char* p : {"q_proj", "o_proj"}) {
      const std::string stem = absl::StrCat("model.layers.", l, ".self_attn.", p);
      ads.push_back({stem + ".weight", stem + ".lora_A.weight", stem + ".lora_B.weight", scale});
    }
  }
  return layout::testing::MergeLoraNaive(w.spec, w.data, ads);
}

std::vector<std::vector<uint8_t>> Snapshot(const std::vector<layout::Endpoint>& eps,
                                           const std::vector<std::vector<void*>>& mem) {
  std::vector<std::vector<uint8_t>> out;
  for (size_t e = 0; e < eps.size(); ++e) {
    for (size_t s = 0; s < eps[e].shards.size(); ++s) {
      size_t n = eps[e].shards[s].shape.NumElements() * kernels::DTypeSize(eps[e].shards[s].dtype);
      const uint8_t* p = static_cast<const uint8_t*>(mem[e][s]);
      out.emplace_back(p, p + n);
    }
  }
  return out;
}

TEST_CASE("a vLLM replica with expert parallelism is its processes: each place in a grid once, all needed") {
  World w;
  w.clients.push_back(std::make_unique<Client>(w.core.get(), "gen-ep"));
  Client& c = *w.clients.back();
  // vLLM TP=2 with enable_expert_parallel: two processes, EP = 2, expert
  // rank = tp rank; each holds 2 of the 4 experts whole.
  auto coords = [](int r) { return VllmProcess(r, 2, /*ep=*/true); };
  std::vector<layout::Endpoint> eps;
  std::vector<std::vector<void*>> mem;
  for (int r : {0, 1}) {
    auto shards = *layout::BuildShards(w.spec, w.config, "vllm", {}, coords(r), DType::kBF16);
    eps.push_back({"", {}, shards});
  }
  CHECK(eps[1].shards.size() == eps[0].shards.size());
  mem.push_back(c.Register("m", Role::kTarget, "ep", eps[0].shards, "vllm", coords(0)));
  // One process of two: the replica is not complete.
  auto early = w.core->Sync(Args(1), nullptr, nullptr);
  CHECK(early.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(early.status().message()), Catch::EndsWith("): process ranks 1"));
  // A second process claiming process 0's dense place is refused.
  layout::RankCoords twin = coords(1);
  twin.tp = 0;
  std::vector<void*> unused;
  auto dup = c.TryRegister("m", Role::kTarget, "ep", eps[1].shards, "vllm", twin, UpdateMode::kStaged, nullptr,
                           SIZE_MAX, &unused);
  CHECK(dup.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(dup.status().message()),
             Catch::Contains("dense coordinates tp=0,cp=0,dp=0,pp=0 are already those of process rank 0/2 "
                             "(tp 0/2; ep 0/2)"));
  mem.push_back(c.Register("m", Role::kTarget, "ep", eps[1].shards, "vllm", coords(1)));
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(Matches(w, eps, mem));
}

TEST_CASE("explicit pieces with a declared world size: all processes needed; a refused sync tells the targets") {
  World w;
  w.clients.push_back(std::make_unique<Client>(w.core.get(), "gen-pieces"));
  Client& c = *w.clients.back();
  // vLLM TP=2, registered with explicit pieces (as the vLLM adapter does when
  // some parameters take the loader path) and world_size 2.
  auto coords = [](int r) { return VllmProcess(r, 2, /*ep=*/false); };
  std::vector<layout::Endpoint> eps;
  std::vector<std::vector<void*>> mem;
  for (int r : {0, 1}) eps.push_back({"", {}, *layout::BuildShards(w.spec, w.config, "vllm", {}, coords(r), DType::kBF16)});
  mem.push_back(c.Register("m", Role::kTarget, "pieces", eps[0].shards, "", coords(0), UpdateMode::kStaged, &w.spec,
                           /*recipe_shards=*/0));
  auto early = w.core->Sync(Args(1), nullptr, nullptr);
  CHECK(early.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(early.status().message()),
             Catch::Contains("replica 'pieces': ranks not registered yet (explicit pieces ") &&
                 Catch::EndsWith("): process ranks 1"));
  // The process that registered hears that version 1 was refused, with the
  // reason, instead of waiting for it.
  bool failed_event = false;
  for (const Event& ev : c.sink.events()) {
    if (ev.kind != Event::Kind::kFailed) continue;
    failed_event = true;
    CHECK(ev.version == 1);
    CHECK(ev.code == static_cast<int>(absl::StatusCode::kFailedPrecondition));
    CHECK(ev.message == early.status().message());
  }
  CHECK(failed_event);
  mem.push_back(c.Register("m", Role::kTarget, "pieces", eps[1].shards, "", coords(1), UpdateMode::kStaged, &w.spec,
                           /*recipe_shards=*/0));
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(Matches(w, eps, mem));
}

TEST_CASE("a full sync that fails midway leaves no pristine base: adapter_only is refused until a full sync") {
  World w(/*lora=*/true);
  std::vector<layout::Endpoint> eps;
  auto mem = w.Replica("gen", 2, UpdateMode::kStaged, &eps);
  SyncArgs a = Args(1);
  a.lora = LoraMode::kMerge;
  REQUIRE(w.core->Sync(a, nullptr, nullptr).ok());
  // Version 2 (a full merge) writes the base twins bucket by bucket, then is
  // cancelled: the twins hold part old, part new base weights.
  a = Args(2);
  a.lora = LoraMode::kMerge;
  auto cancelled = w.core->Sync(a, [&](const Progress& p) {
    if (p.buckets_done == 1) (void)w.core->CancelSync(Me(), "m", 2);
  }, nullptr);
  REQUIRE(cancelled.status().code() == absl::StatusCode::kCancelled);
  a = Args(3);
  a.lora = LoraMode::kAdapterOnly;
  auto refused = w.core->Sync(a, nullptr, nullptr);
  CHECK(refused.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(refused.status().message()), Catch::Contains("holds no pristine base"));
  // A full sync makes it whole again.
  a.lora = LoraMode::kMerge;
  REQUIRE(w.core->Sync(a, nullptr, nullptr).ok());
  a = Args(4);
  a.lora = LoraMode::kAdapterOnly;
  CHECK(w.core->Sync(a, nullptr, nullptr).ok());
}

TEST_CASE("LoRA: merge matches the reference, adapter_only is bit-identical to merge") {
  World w(/*lora=*/true);
  std::vector<layout::Endpoint> eps;
  auto mem = w.Replica("gen", 2, UpdateMode::kStaged, &eps);
  SyncArgs a = Args(1);
  a.lora = LoraMode::kAdapterOnly;
  auto early = w.core->Sync(a, nullptr, nullptr);
  CHECK(early.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(early.status().message()), Catch::Contains("holds no pristine base"));

  REQUIRE(w.core->Sync(Args(1), nullptr, nullptr).ok());  // full, no LoRA
  CHECK(Matches(w, eps, mem));

  a = Args(2);
  a.lora = LoraMode::kMerge;
  auto merged = w.core->Sync(a, nullptr, nullptr);
  INFO(merged.status().ToString());
  REQUIRE(merged.ok());
  World& ww = w;
  auto saved = ww.data;  // restored below
  ww.data = Merged(w, 0.5);
  CHECK(Matches(ww, eps, mem));
  ww.data = saved;

  // The trainer updates an adapter's B in place; adapter_only moves only A
  // and B, and rebuilds from the pristine base the daemon kept.
  const std::string b_name = "model.layers.1.self_attn.o_proj.lora_B.weight";
  const int32_t bt = w.spec.Find(b_name);
  for (size_t i = 0; i < w.src_eps[0].shards.size(); ++i) {
    if (w.src_eps[0].shards[i].name != b_name) continue;
    float* b = static_cast<float*>(w.src_mem[0][i]);
    for (size_t k = 0; k < w.data[bt].size(); ++k) {
      w.data[bt][k] = static_cast<float>(static_cast<int>(k % 7) - 3) / 16.0f;
      b[k] = w.data[bt][k];
    }
  }
  a = Args(3);
  a.lora = LoraMode::kAdapterOnly;
  auto only = w.core->Sync(a, nullptr, nullptr);
  INFO(only.status().ToString());
  REQUIRE(only.ok());
  CHECK(only->bytes < merged->bytes);
  saved = w.data;
  w.data = Merged(w, 0.5);
  CHECK(Matches(w, eps, mem));
  w.data = saved;
  auto after_adapter_only = Snapshot(eps, mem);
  a = Args(4);
  a.lora = LoraMode::kMerge;
  REQUIRE(w.core->Sync(a, nullptr, nullptr).ok());
  CHECK(Snapshot(eps, mem) == after_adapter_only);

  a = Args(5);
  a.lora = LoraMode::kUnmerge;
  REQUIRE(w.core->Sync(a, nullptr, nullptr).ok());
  // Unmerging the adapter from W + sBA gives W back within rounding: most
  // elements exactly, none far off.
  auto now = Snapshot(eps, mem);
  World& base = w;
  size_t differ = 0, total = 0;
  for (size_t e = 0, k = 0; e < eps.size(); ++e) {
    for (size_t s = 0; s < eps[e].shards.size(); ++s, ++k) {
      auto want = layout::testing::Materialize(base.spec, eps[e].shards[s], base.data);
      const uint16_t* g = reinterpret_cast<const uint16_t*>(now[k].data());
      const uint16_t* x = reinterpret_cast<const uint16_t*>(want.data());
      for (size_t i = 0; i < want.size() / 2; ++i) {
        ++total;
        if (g[i] != x[i]) {
          ++differ;
          float d = std::fabs(kernels::Bf16ToF32(g[i]) - kernels::Bf16ToF32(x[i]));
          INFO(eps[e].shards[s].name << " element " << i);
          REQUIRE(d <= 0.02f * std::max(1.0f, std::fabs(kernels::Bf16ToF32(x[i]))));
        }
      }
    }
  }
  CHECK(differ * 10 < total);
}

TEST_CASE("cancel mid-sync: staged targets keep their version and bytes, in-place ones are poisoned") {
  World w;
  std::vector<layout::Endpoint> es, ei;
  auto ms = w.Replica("staged", 2, UpdateMode::kStaged, &es);
  auto mi = w.Replica("inplace", 2, UpdateMode::kInPlace, &ei);
  REQUIRE(w.core->Sync(Args(1), nullptr, nullptr).ok());
  auto before = Snapshot(es, ms);
  // Version 2: the trainer's weights change, then the sync is cancelled after
  // its first bucket.
  for (auto& v : w.data) for (float& x : v) x = -x;
  for (size_t e = 0; e < w.src_eps.size(); ++e) {
    for (size_t s = 0; s < w.src_eps[e].shards.size(); ++s) {
      auto bytes = layout::testing::Materialize(w.spec, w.src_eps[e].shards[s], w.data);
      std::memcpy(w.src_mem[e][s], bytes.data(), bytes.size());
    }
  }
  auto r = w.core->Sync(Args(2), [&](const Progress& p) {
    if (p.buckets_done == 1) (void)w.core->CancelSync(Me(), "m", 2);
  }, nullptr);
  CHECK(r.status().code() == absl::StatusCode::kCancelled);
  CHECK(r.status().message() == "sync of model 'm' version 2 cancelled during transfer");
  CHECK(Snapshot(es, ms) == before);
  auto st = w.core->GetStatus(Me());
  for (const auto& rep : st.models[0].replicas) {
    CHECK(rep.version == 1);
    CHECK(rep.poisoned == (rep.replica_id == "inplace"));
  }
  CHECK_THAT(st.models[0].last_error, Catch::Contains("cancelled"));
  // The poisoned replica refuses WaitVersion until a full sync repairs it.
  CHECK(w.core->WaitVersion("m", "inplace", 1, 0, nullptr).status().code() ==
        absl::StatusCode::kDeadlineExceeded);
  REQUIRE(w.core->Sync(Args(2), nullptr, nullptr).ok());
  CHECK(Matches(w, es, ms));
  CHECK(Matches(w, ei, mi));
}

TEST_CASE("a trainer that goes away mid-sync aborts it, naming the client") {
  World w;
  std::vector<layout::Endpoint> e;
  auto m = w.Replica("gen", 2, UpdateMode::kStaged, &e);
  std::thread closer;
  auto r = w.core->Sync(Args(1), [&](const Progress& p) {
    if (p.buckets_done == 1 && !closer.joinable()) {
      closer = std::thread([&] { w.core->CloseSession(w.clients[1]->session, "disconnected"); });
      // Give CloseSession time to flag the job before the next bucket.
      for (int i = 0; i < 200; ++i) {
        if (!w.core->GetStatus(Me()).jobs.empty() && w.core->GetStatus(Me()).sessions.size() < 7) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }, nullptr);
  closer.join();
  CHECK(r.status().code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(r.status().message()),
             Catch::Contains("client 'trainer' (pid ") && !Catch::Contains(w.clients[1]->session) &&
                 Catch::Contains("disconnected"));
  // Its ranks are gone: the next sync names the bytes nobody holds now
  // (process 1, tp 1 of stage 0: the second half of layer 0's heads).
  auto next = w.core->Sync(Args(1), nullptr, nullptr);
  CHECK(next.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(next.status().message()),
             Catch::StartsWith("model 'm': the registered source processes (megatron world_size=4 "
                               "(tp=2,cp=1,dp=1,pp=2; etp=2,ep=1,edp=1), 3 registered) do not hold all of the "
                               "model yet; no holder for tensor 'model.layers.0.self_attn.q_proj.weight' "
                               "[8:16, 0:16]; "));
}

TEST_CASE("a failed sync reports its real code and message: the result, last_error, the SyncFailed event") {
  World w;
  std::vector<layout::Endpoint> e;
  auto m = w.Replica("gen", 1, UpdateMode::kInPlace, &e);
  w.clients.back()->sink.set_ack(false);  // the generator never acknowledges the pause
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  REQUIRE_FALSE(r.ok());
  INFO(r.status().ToString());
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(r.status().message()), !Catch::Contains("accessed after move"));
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("pause"));
  const DaemonStatus st = w.core->GetStatus(Me());
  CHECK(st.models.at(0).last_error == r.status().message());
  bool failed_event = false;
  for (const Event& ev : w.clients.back()->sink.events()) {
    if (ev.kind != Event::Kind::kFailed) continue;
    failed_event = true;
    CHECK(ev.code == static_cast<int>(absl::StatusCode::kDeadlineExceeded));
    CHECK(ev.message == r.status().message());
  }
  CHECK(failed_event);
}

// Shrinks every shm object `c` registered to `bytes` (a client's ftruncate).
void Truncate(Client& c, off_t bytes) {
  for (const auto& shm : c.shms) {
    int fd = shm_open(shm->name.c_str(), O_RDWR, 0);
    REQUIRE(fd >= 0);
    REQUIRE(ftruncate(fd, bytes) == 0);
    close(fd);
  }
}

TEST_CASE("a client that shrinks its shm fails the sync naming the object; the daemon lives on") {
  World w;
  std::vector<layout::Endpoint> e;
  auto m = w.Replica("gen", 2, UpdateMode::kStaged, &e);
  REQUIRE(w.core->Sync(Args(1), nullptr, nullptr).ok());

  SECTION("shrunk before the sync: refused before anything is written") {
    Truncate(*w.clients[1], 0);
    auto r = w.core->Sync(Args(2), nullptr, nullptr);
    INFO(r.status().ToString());
    CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
    CHECK_THAT(std::string(r.status().message()),
               Catch::Contains("shm object /wsync-core-test-") && Catch::Contains("of client 'trainer'") &&
                   Catch::Contains("shrank from"));
  }
  SECTION("shrunk in the middle of the sync: its pages fault, nothing is committed") {
    bool done = false;
    auto r = w.core->Sync(Args(2), [&](const Progress& p) {
      if (!done && p.buckets_done == 1) {
        done = true;
        Truncate(*w.clients[1], 0);
        Truncate(*w.clients[2], 0);
        Truncate(*w.clients[3], 0);
      }
    }, nullptr);
    INFO(r.status().ToString());
    REQUIRE(done);
    CHECK(r.status().code() == absl::StatusCode::kDataLoss);
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("lost a page"));
  }
  // Either way the replica keeps version 1 and its bytes.
  const DaemonStatus st = w.core->GetStatus(Me());
  CHECK(st.models.at(0).replicas.at(0).version == 1);
  CHECK(Matches(w, e, m));
}

TEST_CASE("an in-place target shrunk mid-sync is poisoned, not committed") {
  World w;
  std::vector<layout::Endpoint> e;
  auto m = w.Replica("gen", 1, UpdateMode::kInPlace, &e);
  bool done = false;
  auto r = w.core->Sync(Args(1), [&](const Progress& p) {
    if (!done && p.buckets_done == 1) {
      done = true;
      Truncate(*w.clients.back(), 0);
    }
  }, nullptr);
  INFO(r.status().ToString());
  REQUIRE(done);
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  const DaemonStatus st = w.core->GetStatus(Me());
  CHECK(st.models.at(0).replicas.at(0).version == 0);
  CHECK(st.models.at(0).replicas.at(0).poisoned);
}

TEST_CASE("target memory that /dev/shm cannot back is refused at registration") {
  World w;
  Client c(w.core.get(), "gen");
  struct statvfs vfs;
  REQUIRE(statvfs("/dev/shm", &vfs) == 0);
  // A sparse object larger than the free space: registering it as a target
  // would leave pages that fault on first write.
  const int64_t elems = static_cast<int64_t>((vfs.f_bavail * vfs.f_frsize) / 4 + (1 << 28));
  RegisterModelArgs big;
  big.caller = Me();
  big.session_id = c.session;
  big.model_id = "big";
  big.tensors = {{"t", layout::Shape::Of({elems}), DType::kF32}};
  REQUIRE(w.core->RegisterModel(big).ok());
  const std::string name = absl::StrCat("/wsync-core-test-big-", getpid());
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, elems * 4) == 0);
  close(fd);
  RegisterShardsArgs a;
  a.caller = Me();
  a.session_id = c.session;
  a.model_id = "big";
  a.role = Role::kTarget;
  a.replica_id = "r";
  BufferArg b;
  b.name = "t";
  b.shm_name = name;
  b.nbytes = static_cast<uint64_t>(elems) * 4;
  b.shape = layout::Shape::Of({elems});
  b.dtype = DType::kF32;
  b.pieces.push_back({"t", layout::Box::Whole(b.shape), layout::Box::Whole(b.shape)});
  a.buffers = {b};
  auto r = w.core->RegisterShards(a);
  shm_unlink(name.c_str());
  INFO(r.status().ToString());
  CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("cannot reserve") && Catch::Contains(name));
}

TEST_CASE("hostile sizes, offsets, ids and counts are INVALID_ARGUMENT with short messages, never a crash") {
  World w;
  Client c(w.core.get(), "gen");
  // Shapes whose byte size overflows.
  RegisterModelArgs huge;
  huge.caller = Me();
  huge.model_id = "huge";
  huge.tensors = {{"t", layout::Shape::Of({int64_t{1} << 62, 4}), DType::kF32}};
  auto hr = w.core->RegisterModel(huge);
  CHECK(hr.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(hr.status().message()), Catch::Contains("tensor 't'") && Catch::Contains("larger than"));
  // A config with millions of layers is refused by the config's own bounds;
  // one within them that makes more tensors than --max-tensors-per-model is
  // refused as soon as generation passes the limit.
  RegisterModelArgs deep;
  deep.caller = Me();
  deep.model_id = "deep";
  deep.has_config = true;
  deep.config = w.config;
  for (int64_t layers : {int64_t{3000000}, int64_t{1} << 62}) {
    deep.config.num_hidden_layers = layers;
    auto dr = w.core->RegisterModel(deep);
    CHECK(dr.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(dr.status().message()), Catch::Contains("'num_hidden_layers'"));
  }
  CoreOptions small_limit;
  small_limit.daemon_id = "limited";
  small_limit.limits.max_tensors_per_model = 100;
  auto limited = Core::Create(small_limit);
  deep.session_id.clear();
  deep.config.num_hidden_layers = 2;  // 47 tensors
  CHECK(limited->RegisterModel(deep).ok());
  deep.model_id = "deeper";
  deep.config.num_hidden_layers = 10;  // 223 tensors
  auto lim = limited->RegisterModel(deep);
  CHECK(lim.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(lim.status().message()),
             Catch::Contains("more than 100 tensors") && Catch::Contains("--max-tensors-per-model"));
  // A 100k-character id is quoted by a short prefix only.
  RegisterModelArgs longid = huge;
  longid.model_id = std::string(100000, 'x');
  auto lr = w.core->RegisterModel(longid);
  CHECK(lr.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(lr.status().message().size() < 200);
  SyncArgs ls = Args(1);
  ls.model_id = longid.model_id;
  CHECK(w.core->Sync(ls, nullptr, nullptr).status().message().size() < 200);

  // A model with one 2-d tensor, registered with explicit pieces.
  RegisterModelArgs small;
  small.caller = Me();
  small.model_id = "small";
  small.tensors = {{"t", layout::Shape::Of({16, 16}), DType::kF32}};
  REQUIRE(w.core->RegisterModel(small).ok());
  Shm shm(4096);
  auto piece_at = [](int64_t off0) {
    PieceArg p;
    p.tensor = "t";
    p.canonical = layout::Box::Whole(layout::Shape::Of({16, 16}));
    p.shard = p.canonical;
    p.shard.off[0] = off0;
    return p;
  };
  auto request = [&](const std::string& replica, int64_t off0, uint64_t offset, Role role = Role::kTarget) {
    RegisterShardsArgs a;
    a.caller = Me();
    a.session_id = c.session;
    a.model_id = "small";
    a.role = role;
    a.replica_id = replica;
    BufferArg b;
    b.name = "t";
    b.shm_name = shm.name;
    b.offset = offset;
    b.nbytes = 1024;
    b.shape = layout::Shape::Of({16, 16});
    b.dtype = DType::kF32;
    b.pieces = {piece_at(off0)};
    a.buffers = {b};
    return a;
  };
  // A shard offset of INT64_MAX (offset + size wraps).
  auto wrap = w.core->RegisterShards(request("r0", std::numeric_limits<int64_t>::max(), 0));
  CHECK(wrap.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(wrap.status().message()), Catch::Contains("outside the shard's shape"));
  // Strides whose span overflows.
  auto strided = request("r0", 0, 0);
  strided.buffers[0].strides = {std::numeric_limits<int64_t>::max() / 2, 1};
  auto sr = w.core->RegisterShards(strided);
  CHECK(sr.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(sr.status().message()), Catch::Contains("spans more than"));
  // An offset near 2^64 in the shm object.
  auto far = w.core->RegisterShards(request("r0", 0, ~uint64_t{0} - 8));
  CHECK(far.status().code() == absl::StatusCode::kInvalidArgument);

  // Overlapping memory: a target over bytes another target holds, within a
  // replica, across replicas, and over a source's bytes.
  REQUIRE(w.core->RegisterShards(request("r0", 0, 0)).ok());
  auto across = w.core->RegisterShards(request("r1", 0, 512));
  CHECK(across.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(across.status().message()),
             Catch::Contains("replica 'r1'") && Catch::Contains("shares bytes with model 'small' replica 'r0'") &&
                 Catch::Contains("bytes [512, 1536)") && Catch::Contains(shm.name));
  auto src_over = w.core->RegisterShards(request("", 0, 0, Role::kSource));
  CHECK(src_over.status().code() == absl::StatusCode::kInvalidArgument);
  auto two = request("r2", 0, 2048);
  two.buffers.push_back(two.buffers[0]);
  two.buffers[1].name = "u";
  two.buffers[1].offset = 2048 + 1020;
  auto tr = w.core->RegisterShards(two);
  CHECK(tr.status().code() == absl::StatusCode::kInvalidArgument);
  // Disjoint bytes of the same object are fine; re-registering a rank over
  // its own previous memory too.
  CHECK(w.core->RegisterShards(request("r1", 0, 1024)).ok());
  CHECK(w.core->RegisterShards(request("r0", 0, 0)).ok());
  // A target over a source of another model (the trainer's memory).
  RegisterShardsArgs over_trainer = request("r3", 0, 0);
  over_trainer.session_id = w.clients[0]->session;
  over_trainer.buffers[0].shm_name = w.clients[0]->shms[0]->name;
  over_trainer.buffers[0].nbytes = 16;
  over_trainer.buffers[0].shape = layout::Shape::Of({2, 2});
  over_trainer.buffers[0].pieces[0].canonical = layout::Box::Whole(layout::Shape::Of({2, 2}));
  over_trainer.buffers[0].pieces[0].shard = layout::Box::Whole(layout::Shape::Of({2, 2}));
  auto ot = w.core->RegisterShards(over_trainer);
  INFO(ot.status().ToString());
  CHECK(ot.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(ot.status().message()), Catch::Contains("shares bytes with model 'm' source rank"));

  // The rendezvous store bounds what a peer may store.
  CHECK(w.core->KvSet("j", "k", std::string(32 << 20, 'v')).code() == absl::StatusCode::kResourceExhausted);
  CHECK(w.core->KvSet("j", "k", "small").ok());
}

TEST_CASE("a second sync of a running model is refused; other models sync meanwhile") {
  World w;
  std::vector<layout::Endpoint> e;
  auto m = w.Replica("gen", 2, UpdateMode::kStaged, &e);
  // A second model on the same daemon, one replica, explicit whole-tensor pieces.
  RegisterModelArgs other;
  other.caller = Me();
  other.session_id = w.clients[0]->session;
  other.model_id = "other";
  other.tensors = {{"t", layout::Shape::Of({64, 64}), DType::kF32}};
  REQUIRE(w.core->RegisterModel(other).ok());
  auto other_spec = *layout::ModelSpec::Create(other.tensors);
  layout::ShardSpec whole{"t", layout::Shape::Of({64, 64}), DType::kF32, {}};
  whole.pieces.push_back({0, layout::Box::Whole(whole.shape), layout::Box::Whole(whole.shape)});
  w.clients[0]->Register("other", Role::kSource, "", {whole}, "", {}, UpdateMode::kStaged, &other_spec, 0);
  w.clients.back()->Register("other", Role::kTarget, "r", {whole}, "", {}, UpdateMode::kStaged, &other_spec, 0);

  absl::Status second, concurrent;
  bool checked = false;
  auto r = w.core->Sync(Args(1), [&](const Progress& p) {
    if (checked || p.buckets_done != 1) return;
    checked = true;
    second = w.core->Sync(Args(1), nullptr, nullptr).status();
    SyncArgs o;
    o.caller = Me();
    o.model_id = "other";
    o.version = 1;
    concurrent = w.core->Sync(o, nullptr, nullptr).status();
  }, nullptr);
  REQUIRE(r.ok());
  CHECK(second.code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(second.message()), Catch::Contains("is already running; syncs of one model are not queued"));
  CHECK(concurrent.ok());
  CHECK(Matches(w, e, m));
}

TEST_CASE("an fp32 source to an fp8 target is refused before anything is written") {
  World w;
  std::vector<layout::Endpoint> e;
  auto m = w.Replica("fp8", 1, UpdateMode::kInPlace, &e, DType::kF8E4M3);
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(r.status().message()),
             Catch::StartsWith("model 'm': tensor 'model.embed_tokens.weight' goes from fp32 buffer "
                               "'embedding.word_embeddings.weight'") &&
                 Catch::EndsWith("fp8_e4m3 buffers are copied only to fp8_e4m3 buffers"));
  // Nothing was written and the replica is not poisoned.
  CHECK(static_cast<unsigned char*>(m[0][0])[0] == 0xab);
  CHECK_FALSE(w.core->GetStatus(Me()).models[0].replicas[0].poisoned);
}

// FP8 targets: a dense model large enough for several 128 x 128 blocks, with
// Megatron TP=2 cuts (intermediate 384: 192 rows per rank) that split
// blocks, so that block scales must come from two trainer ranks.
constexpr char kFp8Config[] = R"({"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 384,
  "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1, "vocab_size": 64,
  "tie_word_embeddings": false})";

// The same with 4 KV heads and intermediate 768: Megatron TP=4 cuts at 192
// rows and 64 columns split blocks, vLLM TP=2 cuts (128 q/k/v rows, 384
// gate/up rows, 128 and 384 columns) keep them whole.
constexpr char kFp8Config4[] = R"({"model_type": "qwen2", "hidden_size": 256, "intermediate_size": 768,
  "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 1, "vocab_size": 64,
  "tie_word_embeddings": false})";

// MoE: 4 experts of width 384. Megatron TP=2 splits each expert's gate and
// up at row 192 (inside a block); vLLM TP=1 stacks gate and up at rows 0 and
// 384 of w13, and vLLM TP=2 with expert parallelism holds whole experts.
constexpr char kFp8MoeConfig[] = R"({"model_type": "qwen3_moe", "hidden_size": 256,
  "intermediate_size": 512, "moe_intermediate_size": 384, "num_experts": 4, "num_experts_per_tok": 2,
  "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 64, "num_hidden_layers": 1,
  "vocab_size": 64, "tie_word_embeddings": false})";

// Where element (row 0, col 0) of `box` lies in a contiguous buffer of
// `shape`, and the distance between its rows.
std::pair<int64_t, int64_t> MatrixOrigin(const layout::Shape& shape, const layout::Box& box) {
  int64_t stride = 1, origin = 0;
  for (int d = shape.ndim - 1; d >= 0; --d) {
    origin += box.off[d] * stride;
    stride *= shape.d[d];
  }
  return {origin, shape.d[shape.ndim - 1]};
}

struct Fp8World {
  std::unique_ptr<Core> core = Core::Create({"test", {}, 60000, 2000, 4096, 2});
  layout::ModelConfig config;
  layout::ModelSpec spec;
  layout::testing::CanonicalData data;
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<std::vector<void*>> src_mem;
  std::vector<std::vector<layout::ShardSpec>> src_shards;

  // With `adapter_stems`, the model has a rank-4 LoRA adapter (scaling 0.5)
  // on each "<stem>.weight", and the first trainer holds A and B whole.
  layout::Fp8Scaling scaling;
  // The scale groups that `scaling` means, as docs/fp8.md states them:
  // 128 x 128, one row, the whole matrix.
  std::pair<int64_t, int64_t> Group(const layout::Shape& w) const {
    if (scaling == layout::Fp8Scaling::kChannel) return {1, w.d[1]};
    if (scaling == layout::Fp8Scaling::kTensor) return {w.d[0], w.d[1]};
    return {128, 128};
  }
  const char* ScaleSuffix() const { return scaling == layout::Fp8Scaling::kBlock ? "_scale_inv" : "_scale"; }
  // The scale row at which vLLM puts the first scale of `piece` in the
  // scale buffer of `weights` (its fused FP8 weight buffer): block and
  // channel scales at the piece's row / 128 and row; tensor scales one per
  // fused piece, in the order of their rows (qkv_proj's [3], w13_weight's
  // [E, 2]).
  int64_t ScaleRow(const layout::ShardSpec& weights, const layout::Piece& piece) const {
    const int nd = weights.shape.ndim;
    const int64_t row = piece.shard.off[nd - 2];
    if (scaling == layout::Fp8Scaling::kBlock) return row / 128;
    if (scaling == layout::Fp8Scaling::kChannel) return row;
    int64_t before = 0;
    for (const layout::Piece& o : weights.pieces) {
      before += (nd == 2 || o.shard.off[0] == piece.shard.off[0]) && o.shard.off[nd - 2] < row;
    }
    return before;
  }

  explicit Fp8World(uint32_t seed = 3, const char* config_json = kFp8Config, int trainer_tp = 2,
                    const std::vector<std::string>& adapter_stems = {},
                    layout::Fp8Scaling scaling_ = layout::Fp8Scaling::kBlock)
      : config(*layout::ParseHfConfig(config_json)), scaling(scaling_) {
    clients.push_back(std::make_unique<Client>(core.get(), "trainer"));
    RegisterModelArgs m;
    m.caller = Me();
    m.session_id = clients[0]->session;
    m.model_id = "m";
    m.has_config = true;
    m.config = config;
    m.fp8_scales = scaling;
    for (const std::string& stem : adapter_stems) {
      m.adapters.push_back({stem + ".weight", stem + ".lora_A.weight", stem + ".lora_B.weight", 4, 0.5,
                            LoraConvention::kPeft});
    }
    auto reg = core->RegisterModel(m);
    INFO(reg.status().ToString());
    REQUIRE(reg.ok());
    // The spec as the core builds it: the canonical tensors, the adapters,
    // then the scales (none of the adapters).
    std::vector<layout::TensorSpec> tensors = *layout::CanonicalTensors(config, DType::kBF16);
    const size_t n = tensors.size();
    for (const std::string& stem : adapter_stems) {
      const layout::Shape base = tensors[layout::ModelSpec::Create(tensors)->Find(stem + ".weight")].shape;
      tensors.push_back({stem + ".lora_A.weight", layout::Shape::Of({4, base.d[1]}), DType::kBF16});
      tensors.push_back({stem + ".lora_B.weight", layout::Shape::Of({base.d[0], 4}), DType::kBF16});
    }
    for (size_t i = 0; i < n; ++i) {
      if (tensors[i].shape.ndim == 2 && layout::Fp8Quantized(tensors[i])) {
        const auto [gr, gc] = Group(tensors[i].shape);
        const layout::Shape ss = layout::Shape::Of({(tensors[i].shape.d[0] + gr - 1) / gr, (tensors[i].shape.d[1] + gc - 1) / gc});
        tensors.push_back({tensors[i].name + ScaleSuffix(), ss, DType::kF32, tensors[i].name});
      }
    }
    spec = *layout::ModelSpec::Create(tensors);
    REQUIRE(reg->num_tensors == spec.size());
    std::mt19937 rng(seed);
    data = layout::testing::RandomCanonical(spec, rng);
    for (int r = 0; r < trainer_tp; ++r) {
      if (r > 0) clients.push_back(std::make_unique<Client>(core.get(), "trainer"));
      layout::RankCoords rc;
      rc.tp = r;
      rc.tp_size = trainer_tp;
      auto shards = *layout::BuildShards(spec, config, "megatron", {}, rc, DType::kF32);
      const size_t recipe_shards = shards.size();
      for (int32_t t = 0; r == 0 && t < spec.size(); ++t) {
        const auto& ts = spec.tensor(t);
        if (ts.name.find(".lora_") == std::string::npos) continue;
        layout::ShardSpec s{ts.name, ts.shape, DType::kF32, {}};
        s.pieces.push_back({t, layout::Box::Whole(ts.shape), layout::Box::Whole(ts.shape)});
        shards.push_back(s);
      }
      auto ptrs = clients.back()->Register("m", Role::kSource, "", shards, "megatron", rc, UpdateMode::kStaged,
                                           &spec, recipe_shards);
      for (size_t i = 0; i < shards.size(); ++i) {
        auto bytes = layout::testing::Materialize(spec, shards[i], data);
        std::memcpy(ptrs[i], bytes.data(), bytes.size());
      }
      src_mem.push_back(ptrs);
      src_shards.push_back(shards);
    }
  }

  // New random canonical weights from `seed`, written into every trainer buffer.
  void NewWeights(uint32_t seed) {
    std::mt19937 rng(seed);
    data = layout::testing::RandomCanonical(spec, rng);
    for (size_t t = 0; t < src_mem.size(); ++t) {
      for (size_t i = 0; i < src_shards[t].size(); ++i) {
        auto bytes = layout::testing::Materialize(spec, src_shards[t][i], data);
        std::memcpy(src_mem[t][i], bytes.data(), bytes.size());
      }
    }
  }

  // A vLLM replica whose quantized weights are fp8 with a scale buffer each
  // (the scales of its pieces, rows stacked as vLLM fuses them).
  // With `expert_parallel`, the tp ranks hold whole experts (vLLM's
  // enable_expert_parallel); without it each expert is split over them.
  absl::StatusOr<std::vector<layout::ShardSpec>> Replica(const std::string& id, int tp, UpdateMode mode,
                                                         std::vector<std::vector<void*>>* mem,
                                                         std::vector<std::vector<layout::ShardSpec>>* per_rank = nullptr,
                                                         bool expert_parallel = false) {
    clients.push_back(std::make_unique<Client>(core.get(), "gen-" + id));
    std::vector<layout::ShardSpec> all;
    for (int r = 0; r < tp; ++r) {
      layout::RankCoords rc;
      rc.tp = r;
      rc.tp_size = tp;
      if (expert_parallel) {
        rc.ep = r;
        rc.ep_size = tp;
      }
      // The recipe's buffers, the weights that have scales in fp8, and (by
      // explicit pieces, checked here) their scale buffers.
      auto shards = *layout::BuildShards(spec, config, "vllm", {}, rc, DType::kBF16);
      std::vector<layout::ShardSpec> plain, scales;
      for (layout::ShardSpec& sh : shards) {
        if (!sh.pieces.empty() && spec.ScalesOf(sh.pieces[0].tensor) >= 0) {
          sh.dtype = DType::kF32;
          scales.push_back(sh);
          continue;
        }
        if (!sh.pieces.empty() && spec.ScaleTensorOf(sh.pieces[0].tensor) >= 0) sh.dtype = DType::kF8E4M3;
        plain.push_back(sh);
      }
      const size_t recipe_shards = plain.size();
      for (const layout::ShardSpec& sc : scales) {  // rows stacked as the weights: q, k, v
        const std::string weight = sc.name.substr(0, sc.name.size() - std::strlen(ScaleSuffix()));
        const layout::ShardSpec* w = nullptr;
        for (const auto& p : plain) {
          if (p.name == weight) w = &p;
        }
        REQUIRE(w != nullptr);
        REQUIRE(sc.pieces.size() == w->pieces.size());
        const int nd = w->shape.ndim;
        for (size_t k = 0; k < sc.pieces.size(); ++k) {
          for (int d = 0; d + 2 < nd; ++d) CHECK(sc.pieces[k].shard.off[d] == w->pieces[k].shard.off[d]);
          CHECK(sc.pieces[k].shard.off[nd - 2] == ScaleRow(*w, w->pieces[k]));
          CHECK(spec.ScalesOf(sc.pieces[k].tensor) == w->pieces[k].tensor);
        }
      }
      shards = plain;
      shards.insert(shards.end(), scales.begin(), scales.end());
      std::vector<void*> ptrs;
      auto reg = clients.back()->TryRegister("m", Role::kTarget, id, shards, "vllm", rc, mode, &spec,
                                             recipe_shards, &ptrs);
      if (!reg.ok()) return reg.status();
      for (size_t i = 0; i < shards.size(); ++i) {
        std::memset(ptrs[i], 0xab, shards[i].shape.NumElements() * kernels::DTypeSize(shards[i].dtype));
      }
      mem->push_back(ptrs);
      if (per_rank != nullptr) per_rank->push_back(shards);
      all.insert(all.end(), shards.begin(), shards.end());
    }
    return all;
  }
};

// Every buffer of one target process: its FP8 pieces (and their scales,
// where vLLM stacks them: ScaleRow) against the CPU reference quantizing the
// whole canonical tensor (fp32 from the trainers), the rest against the
// canonical data. Channel and tensor scales are also checked against the
// amax of their row or matrix, taken here. Returns the number of FP8 pieces
// checked.
int CheckFp8Rank(const Fp8World& w, const std::vector<layout::ShardSpec>& shards, const std::vector<void*>& mem) {
  int quantized = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const layout::ShardSpec& sh = shards[i];
    INFO(sh.name);
    if (sh.dtype == DType::kF32 && !sh.pieces.empty() && w.spec.ScalesOf(sh.pieces[0].tensor) >= 0) continue;
    if (sh.dtype != DType::kF8E4M3) {
      auto want = layout::testing::Materialize(w.spec, sh, w.data);
      CHECK(std::memcmp(want.data(), mem[i], want.size()) == 0);
      continue;
    }
    const size_t si = std::find_if(shards.begin(), shards.end(),
                                   [&](const layout::ShardSpec& s) { return s.name == sh.name + w.ScaleSuffix(); }) -
                      shards.begin();
    REQUIRE(si < shards.size());
    for (const layout::Piece& p : sh.pieces) {
      ++quantized;
      const layout::Shape shape = w.spec.tensor(p.tensor).shape;
      const auto [gr, gc] = w.Group(shape);
      const int64_t scale_cols = (shape.d[1] + gc - 1) / gc;
      std::vector<uint8_t> q;
      std::vector<float> scale;
      layout::testing::Fp8Reference(w.spec, w.data, p.tensor, &q, &scale, gr, gc);
      const auto* got = static_cast<const uint8_t*>(mem[i]);
      const auto [origin, ld] = MatrixOrigin(sh.shape, p.shard);
      for (int64_t r = 0; r < p.canonical.size[0]; ++r) {
        REQUIRE(std::memcmp(got + origin + r * ld,
                            q.data() + (p.canonical.off[0] + r) * shape.d[1] + p.canonical.off[1],
                            p.canonical.size[1]) == 0);
      }
      // The scales of the piece's groups, from the scale row vLLM stacks it at.
      const auto* gs = static_cast<const float*>(mem[si]);
      layout::Box groups = p.shard;
      const int nd = sh.shape.ndim;
      groups.off[nd - 2] = w.ScaleRow(sh, p);
      groups.off[nd - 1] /= gc;
      const auto [sorigin, sld] = MatrixOrigin(shards[si].shape, groups);
      for (int64_t r = 0; r < (p.canonical.size[0] + gr - 1) / gr; ++r) {
        for (int64_t c = 0; c < (p.canonical.size[1] + gc - 1) / gc; ++c) {
          const float want = scale[(p.canonical.off[0] / gr + r) * scale_cols + p.canonical.off[1] / gc + c];
          REQUIRE(gs[sorigin + r * sld + c] == want);
          if (w.scaling == layout::Fp8Scaling::kBlock) continue;
          float amax = 0;  // over the canonical row or matrix: every trainer rank's part
          const int64_t r0 = p.canonical.off[0] / gr * gr + r * gr;
          for (int64_t i = r0; i < std::min(shape.d[0], r0 + gr); ++i) {
            for (int64_t j = 0; j < shape.d[1]; ++j) amax = std::max(amax, std::fabs(w.data[p.tensor][i * shape.d[1] + j]));
          }
          REQUIRE(want == (amax == 0 ? 1.0f : amax / 448.0f));
        }
      }
    }
  }
  return quantized;
}

void CheckFp8Replica(const Fp8World& w, const std::vector<layout::ShardSpec>& shards, const std::vector<void*>& mem) {
  CHECK(CheckFp8Rank(w, shards, mem) == 7);  // q k v o gate up down
}

TEST_CASE("FP8 targets: block scales over blocks that span trainer ranks, staged and in place, exact") {
  Fp8World w;
  std::vector<std::vector<void*>> staged, inplace;
  auto s1 = w.Replica("staged", 1, UpdateMode::kStaged, &staged);
  INFO(s1.status().ToString());
  REQUIRE(s1.ok());
  auto s2 = w.Replica("inplace", 1, UpdateMode::kInPlace, &inplace);
  REQUIRE(s2.ok());
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CheckFp8Replica(w, *s1, staged[0]);
  CheckFp8Replica(w, *s2, inplace[0]);
  const DaemonStatus st = w.core->GetStatus(Me());
  for (const auto& rep : st.models[0].replicas) CHECK(rep.version == 1);

  // New weights: a second version lands the same way.
  w.NewWeights(11);
  r = w.core->Sync(Args(2), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CheckFp8Replica(w, *s1, staged[0]);
  CheckFp8Replica(w, *s2, inplace[0]);
}

TEST_CASE("FP8 targets: a piece one trainer rank holds whole is quantized straight from it, exact") {
  // Megatron TP=1: o_proj, gate (rows 0-383 of linear_fc1), up (rows
  // 384-767) and down_proj each lie in one source buffer at one offset, so
  // they skip the fp32 assembly; q, k and v are interleaved per KV group in
  // linear_qkv (several offsets) and are assembled first.
  Fp8World w(13, kFp8Config, /*trainer_tp=*/1);
  std::vector<std::vector<void*>> staged, inplace;
  auto s1 = w.Replica("staged", 1, UpdateMode::kStaged, &staged);
  REQUIRE(s1.ok());
  auto s2 = w.Replica("inplace", 1, UpdateMode::kInPlace, &inplace);
  REQUIRE(s2.ok());
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->fp8_pieces == 2 * 7);
  CHECK(r->fp8_assembled == 2 * 3);
  CheckFp8Replica(w, *s1, staged[0]);
  CheckFp8Replica(w, *s2, inplace[0]);
  // A NaN read straight from the source is named as in the assembled path.
  const auto& shards = w.src_shards[0];
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i].name.find("linear_fc2") != std::string::npos) {
      static_cast<float*>(w.src_mem[0][i])[2 * 384 + 5] = std::nanf("");
    }
  }
  auto bad = w.core->Sync(Args(2), nullptr, nullptr);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("'model.layers.0.mlp.down_proj.weight'") &&
                                                      Catch::Contains("(2, 5)") && Catch::Contains("nan"));
  CHECK(w.core->GetStatus(Me()).models[0].replicas[0].version == 1);
}

TEST_CASE("FP8 targets: Megatron TP=4 into vLLM TP=2, blocks split by the trainers' cuts and whole at the targets'") {
  Fp8World w(5, kFp8Config4, /*trainer_tp=*/4);
  std::vector<std::vector<void*>> mem;
  std::vector<std::vector<layout::ShardSpec>> ranks;
  auto reg = w.Replica("tp2", 2, UpdateMode::kStaged, &mem, &ranks);
  INFO(reg.status().ToString());
  REQUIRE(reg.ok());
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  int quantized = 0;
  for (size_t k = 0; k < ranks.size(); ++k) quantized += CheckFp8Rank(w, ranks[k], mem[k]);
  CHECK(quantized == 14);  // 7 weights, each split over both processes
}

TEST_CASE("FP8 targets: MoE experts quantized per expert into vLLM's fused w13/w2, TP=1 and TP=2 with EP") {
  Fp8World w(7, kFp8MoeConfig, /*trainer_tp=*/2);
  std::vector<std::vector<void*>> one, ep;
  std::vector<std::vector<layout::ShardSpec>> one_ranks, ep_ranks;
  auto r1 = w.Replica("tp1", 1, UpdateMode::kInPlace, &one, &one_ranks);
  INFO(r1.status().ToString());
  REQUIRE(r1.ok());
  auto r2 = w.Replica("tp2ep", 2, UpdateMode::kStaged, &ep, &ep_ranks, /*expert_parallel=*/true);
  INFO(r2.status().ToString());
  REQUIRE(r2.ok());
  // The fused expert buffers have their 3-d scale buffers.
  int fused = 0;
  for (const layout::ShardSpec& sh : one_ranks[0]) {
    if (sh.name.find("w13_weight_scale_inv") != std::string::npos) {
      CHECK(sh.shape == layout::Shape::Of({4, 6, 2}));
      ++fused;
    }
  }
  CHECK(fused == 1);
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(CheckFp8Rank(w, one_ranks[0], one[0]) == 4 + 4 * 3);  // q k v o, and gate up down of 4 experts
  CHECK(CheckFp8Rank(w, ep_ranks[0], ep[0]) + CheckFp8Rank(w, ep_ranks[1], ep[1]) == 2 * 4 + 4 * 3);

  // Each expert split over two vLLM ranks puts up_proj at row 192 of w13.
  std::vector<std::vector<void*>> split_mem;
  auto split = w.Replica("tp2", 2, UpdateMode::kStaged, &split_mem);
  REQUIRE_FALSE(split.ok());
  CHECK_THAT(std::string(split.status().message()),
             Catch::Contains("experts.0.gate_proj.weight' [384, 256] does not cover whole 128 x 128 blocks"));
}

TEST_CASE("FP8 targets: channel and tensor scales over rows and matrices that span trainer ranks, exact") {
  // Megatron TP=2 cuts o_proj and down_proj by columns, so each row's amax
  // (and every matrix's) takes both trainer ranks.
  for (layout::Fp8Scaling scaling : {layout::Fp8Scaling::kChannel, layout::Fp8Scaling::kTensor}) {
    INFO(layout::Fp8ScalingName(scaling));
    Fp8World w(17, kFp8Config, 2, {}, scaling);
    const int32_t up = w.spec.Find("model.layers.0.mlp.up_proj.weight");
    CHECK(w.spec.tensor(w.spec.ScaleTensorOf(up)).name == "model.layers.0.mlp.up_proj.weight_scale");
    CHECK(w.spec.ScalingOf(up) == scaling);
    std::vector<std::vector<void*>> staged, inplace;
    std::vector<std::vector<layout::ShardSpec>> ranks;
    auto s1 = w.Replica("staged", 1, UpdateMode::kStaged, &staged, &ranks);
    INFO(s1.status().ToString());
    REQUIRE(s1.ok());
    auto s2 = w.Replica("inplace", 1, UpdateMode::kInPlace, &inplace);
    REQUIRE(s2.ok());
    // vLLM's shapes: qkv_proj.weight_scale [512, 1] per channel, [3] per
    // tensor (one per fused weight); gate_up_proj's [768, 1] and [2].
    const bool channel = scaling == layout::Fp8Scaling::kChannel;
    int seen = 0;
    for (const layout::ShardSpec& sh : ranks[0]) {
      if (sh.name == "model.layers.0.self_attn.qkv_proj.weight_scale") {
        CHECK(sh.shape == layout::Shape::Of({channel ? 512 : 3, 1}));
        ++seen;
      }
      if (sh.name == "model.layers.0.mlp.gate_up_proj.weight_scale") {
        CHECK(sh.shape == layout::Shape::Of({channel ? 768 : 2, 1}));
        ++seen;
      }
    }
    CHECK(seen == 2);
    for (uint64_t v = 1; v <= 2; ++v) {
      auto r = w.core->Sync(Args(v), nullptr, nullptr);
      INFO(r.status().ToString());
      REQUIRE(r.ok());
      CheckFp8Replica(w, *s1, staged[0]);
      CheckFp8Replica(w, *s2, inplace[0]);
      w.NewWeights(23 + v);  // for the next version
    }

    // vLLM TP=2 cuts o_proj's rows (channel groups) and q_proj (a tensor group).
    std::vector<std::vector<void*>> split_mem;
    auto split = w.Replica("tp2", 2, UpdateMode::kStaged, &split_mem);
    REQUIRE_FALSE(split.ok());
    CHECK(split.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(split.status().message()),
               channel ? Catch::Contains("'model.layers.0.self_attn.o_proj.weight' [256, 256] does not cover whole "
                                         "rows (one scale per output channel)")
                       : Catch::Contains("'model.layers.0.self_attn.q_proj.weight' [256, 256] does not cover the "
                                         "whole tensor (one scale per tensor)"));
  }
}

TEST_CASE("a second registrant asking for another FP8 scaling is told which tensor differs") {
  Fp8World w;  // block scales
  Client gen(w.core.get(), "gen");
  RegisterModelArgs m;
  m.caller = Me();
  m.session_id = gen.session;
  m.model_id = "m";
  m.has_config = true;
  m.config = w.config;
  m.fp8_scales = layout::Fp8Scaling::kChannel;
  auto r = w.core->RegisterModel(m);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kAlreadyExists);
  const int32_t first_scale = w.spec.Find("model.layers.0.self_attn.q_proj.weight_scale_inv");
  CHECK(std::string(r.status().message()) ==
        "model 'm' is already registered with different tensors (" + std::to_string(w.spec.size()) + " vs " +
            std::to_string(w.spec.size()) + "): tensor " + std::to_string(first_scale) +
            " is 'model.layers.0.self_attn.q_proj.weight_scale_inv' [2, 2] there and "
            "'model.layers.0.self_attn.q_proj.weight_scale' [256, 1] here; every registrant must ask for the same "
            "tensors, adapters and FP8 scaling, or unregister it first");
  m.fp8_scales = layout::Fp8Scaling::kBlock;  // the same request is accepted
  CHECK(w.core->RegisterModel(m).ok());
}

TEST_CASE("FP8 targets: MoE experts with channel and tensor scales into vLLM's fused w13/w2") {
  for (layout::Fp8Scaling scaling : {layout::Fp8Scaling::kChannel, layout::Fp8Scaling::kTensor}) {
    INFO(layout::Fp8ScalingName(scaling));
    Fp8World w(19, kFp8MoeConfig, /*trainer_tp=*/2, {}, scaling);
    std::vector<std::vector<void*>> one;
    std::vector<std::vector<layout::ShardSpec>> ranks;
    auto r1 = w.Replica("tp1", 1, UpdateMode::kInPlace, &one, &ranks);
    INFO(r1.status().ToString());
    REQUIRE(r1.ok());
    // vLLM's w13_weight_scale: [E, 2I, 1] per channel, [E, 2] per tensor.
    int fused = 0;
    for (const layout::ShardSpec& sh : ranks[0]) {
      if (sh.name.find("w13_weight_scale") != std::string::npos) {
        CHECK(sh.shape == (scaling == layout::Fp8Scaling::kChannel ? layout::Shape::Of({4, 768, 1})
                                                                   : layout::Shape::Of({4, 2, 1})));
        ++fused;
      }
    }
    CHECK(fused == 1);
    auto r = w.core->Sync(Args(1), nullptr, nullptr);
    INFO(r.status().ToString());
    REQUIRE(r.ok());
    CHECK(CheckFp8Rank(w, ranks[0], one[0]) == 4 + 4 * 3);
  }
}

TEST_CASE("FP8 targets with LoRA: merge and adapter_only quantize W + s*B@A once, from the trainers' values") {
  // q_proj: fused into qkv_proj at the target. down_proj: its blocks span
  // both trainer ranks (Megatron cuts its 384 columns at 192).
  const std::vector<std::string> stems = {"model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj"};
  Fp8World w(3, kFp8Config, 2, stems);
  std::vector<std::vector<void*>> staged, inplace;
  auto s1 = w.Replica("staged", 1, UpdateMode::kStaged, &staged);
  REQUIRE(s1.ok());
  auto s2 = w.Replica("inplace", 1, UpdateMode::kInPlace, &inplace);
  REQUIRE(s2.ok());
  auto merged_data = [&] {
    std::vector<layout::testing::NamedAdapter> ads;
    for (const std::string& stem : stems) {
      ads.push_back({stem + ".weight", stem + ".lora_A.weight", stem + ".lora_B.weight", 0.5});
    }
    return layout::testing::MergeLoraNaive(w.spec, w.data, ads);
  };
  auto check_both = [&](const layout::testing::CanonicalData& want) {
    const auto saved = w.data;
    w.data = want;
    CheckFp8Replica(w, *s1, staged[0]);
    CheckFp8Replica(w, *s2, inplace[0]);
    w.data = saved;
  };
  auto sync = [&](uint64_t v, LoraMode mode) {
    SyncArgs a = Args(v);
    a.lora = mode;
    return w.core->Sync(a, nullptr, nullptr);
  };

  REQUIRE(sync(1, LoraMode::kNone).ok());
  check_both(w.data);
  auto merged = sync(2, LoraMode::kMerge);
  INFO(merged.status().ToString());
  REQUIRE(merged.ok());
  check_both(merged_data());

  // The trainer changes down_proj's B; adapter_only moves only A and B and
  // quantizes base + s*B@A, the base being the fp32 values of version 1.
  const int32_t bt = w.spec.Find("model.layers.0.mlp.down_proj.lora_B.weight");
  for (size_t i = 0; i < w.src_shards[0].size(); ++i) {
    if (w.src_shards[0][i].name != w.spec.tensor(bt).name) continue;
    float* b = static_cast<float*>(w.src_mem[0][i]);
    for (size_t k = 0; k < w.data[bt].size(); ++k) {
      w.data[bt][k] = static_cast<float>(static_cast<int>(k % 7) - 3) / 16.0f;
      b[k] = w.data[bt][k];
    }
  }
  auto only = sync(3, LoraMode::kAdapterOnly);
  INFO(only.status().ToString());
  REQUIRE(only.ok());
  CHECK(only->bytes < merged->bytes);
  check_both(merged_data());
  // merge of the same adapters writes the same bytes and scales.
  std::vector<std::vector<uint8_t>> after_only;
  for (size_t i = 0; i < s2->size(); ++i) {
    const auto* p = static_cast<const uint8_t*>(inplace[0][i]);
    after_only.emplace_back(p, p + (*s2)[i].shape.NumElements() * kernels::DTypeSize((*s2)[i].dtype));
  }
  REQUIRE(sync(4, LoraMode::kMerge).ok());
  for (size_t i = 0; i < s2->size(); ++i) {
    INFO((*s2)[i].name);
    CHECK(std::memcmp(after_only[i].data(), inplace[0][i], after_only[i].size()) == 0);
  }

  // unmerge would start from FP8 weights.
  auto un = sync(5, LoraMode::kUnmerge);
  REQUIRE_FALSE(un.ok());
  CHECK(un.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(un.status().message()),
             Catch::Contains("'model.layers.0.self_attn.q_proj.weight' is quantized to FP8") &&
                 Catch::Contains("LoRA unmerge cannot start from FP8 weights"));
  const DaemonStatus st = w.core->GetStatus(Me());
  for (const auto& rep : st.models[0].replicas) CHECK(rep.version == 4);
}

TEST_CASE("FP8 refusals: a TP cut that splits a block, scales held by a source, a NaN weight") {
  Fp8World w;
  std::vector<std::vector<void*>> mem;
  auto split = w.Replica("tp2", 2, UpdateMode::kStaged, &mem);  // k_proj: 128 rows -> 64 per rank
  REQUIRE_FALSE(split.ok());
  CHECK(split.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(split.status().message()),
             Catch::Contains("of 'model.layers.0.self_attn.k_proj.weight' [128, 256] does not cover whole 128 x 128 blocks"));

  // A source cannot register scales.
  Client c(w.core.get(), "bad-trainer");
  const int32_t st = w.spec.Find("model.layers.0.mlp.down_proj.weight_scale_inv");
  layout::ShardSpec sc{"scales", w.spec.tensor(st).shape, DType::kF32, {}};
  sc.pieces.push_back({st, layout::Box::Whole(sc.shape), layout::Box::Whole(sc.shape)});
  std::vector<void*> ptrs;
  layout::RankCoords rc;
  auto bad = c.TryRegister("m", Role::kSource, "", {sc}, "", rc, UpdateMode::kStaged, &w.spec, 0, &ptrs);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()), Catch::Contains("holds FP8 scales, which syncs compute"));

  // A NaN in a trainer's weights fails the sync naming the tensor; nothing commits.
  std::vector<std::vector<void*>> one;
  auto ok = w.Replica("one", 1, UpdateMode::kStaged, &one);
  REQUIRE(ok.ok());
  const auto& shards = w.src_shards[1];
  for (size_t i = 0; i < shards.size(); ++i) {
    if (shards[i].name.find("linear_fc2") != std::string::npos) static_cast<float*>(w.src_mem[1][i])[5] = std::nanf("");
  }
  auto r = w.core->Sync(Args(1), nullptr, nullptr);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("'model.layers.0.mlp.down_proj.weight'") &&
                                                    Catch::Contains("nan"));
  CHECK(w.core->GetStatus(Me()).models[0].replicas[0].version == 0);
}

TEST_CASE("bad registrations get precise errors") {
  World w;
  Client c(w.core.get(), "gen");
  Shm shm(4096);
  RegisterShardsArgs a;
  a.caller = Me();
  a.session_id = c.session;
  a.model_id = "m";
  a.role = Role::kTarget;
  a.replica_id = "g";
  a.recipe = "vllm";
  layout::RankCoords r;
  r.tp_size = 4;
  a.rank = r;
  BufferArg b;
  b.name = "model.norm.weight";
  b.shm_name = shm.name;
  b.nbytes = 32;
  b.shape = layout::Shape::Of({16});
  b.dtype = DType::kBF16;
  a.buffers = {b};
  auto unknown = a;
  unknown.model_id = "nope";
  CHECK(w.core->RegisterShards(unknown).status().message() == "model 'nope' is not registered");

  auto oob = a;
  oob.buffers[0].offset = 4090;
  CHECK(w.core->RegisterShards(oob).status().message() ==
        "model 'm' replica 'g' rank 0/4 (tp 0/4) buffer 'model.norm.weight': "
        "32 bytes at offset 4090 are outside shm object " + shm.name + " (4096 bytes)");

  auto shape = a;
  shape.buffers[0].shape = layout::Shape::Of({8});
  shape.buffers[0].nbytes = 16;
  CHECK(w.core->RegisterShards(shape).status().message() ==
        "model 'm' replica 'g' rank 0/4 (tp 0/4): buffer 'model.norm.weight': shape "
        "[8] does not match the expected [16]");

  auto small = a;
  small.buffers[0].nbytes = 16;
  CHECK(w.core->RegisterShards(small).status().message() ==
        "model 'm' replica 'g' rank 0/4 (tp 0/4) buffer 'model.norm.weight': 16 bytes "
        "registered but shape [16] of bf16 needs 32");

  auto missing = a;  // only one of the rank's buffers
  CHECK_THAT(std::string(w.core->RegisterShards(missing).status().message()),
             Catch::Contains("of the vllm layout was not registered"));

  // Another uid, even an administrator, cannot register this uid's shm.
  Sink other_sink(w.core.get(), nullptr);
  const Caller admin = Caller::Local(getuid() + 1, getgid(), 1, /*admin=*/true);
  auto intruder = w.core->OpenSession({"intruder", 1, admin}, &other_sink);
  REQUIRE(intruder.ok());
  auto foreign = a;
  foreign.caller = admin;
  foreign.session_id = *intruder;
  auto fr = w.core->RegisterShards(foreign);
  CHECK(fr.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK_THAT(std::string(fr.status().message()), Catch::Contains("is owned by uid"));
  w.core->CloseSession(*intruder, "done");

  // GPU memory on a machine without a usable GPU (CI), or with a handle
  // that is not 64 bytes: refused, naming the buffer; nothing else changes.
  auto gpu = a;
  gpu.buffers[0].memory = BufferArg::Memory::kCudaIpc;
  gpu.buffers[0].cuda_handle = std::string(64, '\0');
  gpu.buffers[0].device_uuid = "GPU-00000000-0000-0000-0000-000000000000";
  auto gr = w.core->RegisterShards(gpu);
  REQUIRE_FALSE(gr.ok());
  CHECK_THAT(std::string(gr.status().message()),
             Catch::StartsWith("model 'm' replica 'g' rank 0/4 (tp 0/4) buffer "
                               "'model.norm.weight': "));
  auto short_handle = gpu;
  short_handle.buffers[0].cuda_handle = "abc";
  auto sr = w.core->RegisterShards(short_handle);
  REQUIRE_FALSE(sr.ok());
  INFO(sr.status().ToString());
  CHECK((sr.status().code() == absl::StatusCode::kInvalidArgument ||
         sr.status().code() == absl::StatusCode::kFailedPrecondition));
  const DaemonStatus st = w.core->GetStatus(Me());
  for (const RankInfo& r : st.models.at(0).ranks) CHECK(r.role == Role::kSource);
}

}  // namespace
}  // namespace wsync::core
