// Multi-node syncs on one machine: four real wsyncd processes on loopback,
// each with its own socket and port. Trainer TP=2 x PP=2 (megatron) on two
// "trainer nodes", generator replicas TP=4 and TP=2 (vllm) on two
// "generator nodes", a small MoE model, host memory over Gloo. Expected
// target bytes come from layout::testing::Materialize, which places
// canonical values element by element without the planner.
#include <signal.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "client/cpp/wsync_client.h"
#include "daemon/layout/layout_testing.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"
#include "tests/testing/process.h"

namespace wsync {
namespace {

using testing::Process;
using testing::Runfile;

constexpr char kConfig[] = R"({"model_type": "qwen3_moe", "hidden_size": 16,
  "intermediate_size": 32, "moe_intermediate_size": 8, "num_experts": 4,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
  "num_hidden_layers": 2, "vocab_size": 70, "tie_word_embeddings": false})";

struct Daemon {
  Daemon(const std::string& id, const std::string& dir, std::vector<std::string> extra = {}) : id(id) {
    socket = dir + "/" + id + ".sock";
    std::vector<std::string> argv = {Runfile("daemon/wsyncd"), "--socket", socket, "--daemon-id", id,
                                     "--listen", "127.0.0.1:0", "--insecure", "--heartbeat-ms", "200",
                                     "--peer-timeout-ms", "3000", "--grace-period-ms", "1000"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    proc = std::make_unique<Process>(argv);
    client::ConnectOptions o;
    o.socket = socket;
    o.connect_timeout_ms = 200;
    bool up = testing::WaitFor([&] { return !proc->Running() || client::Connect(o).ok(); }, 20000);
    INFO(id << " stderr:\n" << proc->Stderr());
    REQUIRE(up);
    REQUIRE(proc->Running());
    auto c = Attach("probe");
    auto st = c->GetStatus();
    REQUIRE(st.ok());
    for (const auto& e : st->endpoints()) {
      if (e.kind() == "tcp") address = e.address();
    }
    REQUIRE(!address.empty());
  }
  std::unique_ptr<client::Client> Attach(const std::string& name) {
    client::ConnectOptions o;
    o.socket = socket;
    auto c = client::Client::Attach(o, name, nullptr);
    INFO(c.status().ToString());
    REQUIRE(c.ok());
    return std::move(*c);
  }
  std::string id, socket, address;
  std::unique_ptr<Process> proc;
};

// One rank registered through a client of its node's daemon.
struct Rank {
  std::unique_ptr<client::Client> client;
  std::vector<layout::ShardSpec> shards;
  std::vector<client::ShmBuffer> bufs;
};

struct Cluster {
  explicit Cluster(std::vector<std::string> trainer_flags = {}) {
    dir = testing::MakeTempDir();
    config = *layout::ParseHfConfig(kConfig);
    REQUIRE(layout::NormalizeConfig(&config).ok());
    spec = *layout::ModelSpec::Create(*layout::CanonicalTensors(config, layout::DType::kBF16));
    std::mt19937 rng(7);
    data = layout::testing::RandomCanonical(spec, rng);
    daemons["t0"] = std::make_unique<Daemon>("t0", dir, trainer_flags);
    for (const char* id : {"t1", "g0", "g1"}) {
      std::vector<std::string> flags = {"--peers", coordinator()};
      if (id[0] == 't') flags.insert(flags.end(), trainer_flags.begin(), trainer_flags.end());
      daemons[id] = std::make_unique<Daemon>(id, dir, flags);
    }
  }
  std::string coordinator() { return daemons["t0"]->address; }

  v1::RegisterModelRequest ModelRequest(const std::string& session) {
    v1::RegisterModelRequest m;
    m.set_session_id(session);
    m.set_model_id("moe");
    v1::ModelConfig* c = m.mutable_config();
    c->set_family(config.family);
    c->set_hidden_size(config.hidden_size);
    c->set_num_attention_heads(config.num_attention_heads);
    c->set_num_key_value_heads(config.num_key_value_heads);
    c->set_head_dim(config.head_dim);
    c->set_intermediate_size(config.intermediate_size);
    c->set_vocab_size(config.vocab_size);
    c->set_num_hidden_layers(config.num_hidden_layers);
    c->set_tie_word_embeddings(config.tie_word_embeddings);
    c->set_qk_norm(config.qk_norm);
    c->set_num_experts(config.num_experts);
    c->set_moe_intermediate_size(config.moe_intermediate_size);
    c->set_decoder_sparse_step(config.decoder_sparse_step);
    return m;
  }

  // Attaches a client to `daemon` and registers one rank (recipe pieces),
  // its buffers filled from `data` (sources) or with garbage (targets).
  void AddRank(const std::string& daemon, const std::string& recipe, bool source, const std::string& replica,
               int tp, int tp_size, int pp, int pp_size, layout::DType dtype) {
    Rank r;
    r.client = daemons[daemon]->Attach(absl::StrCat(replica.empty() ? "trainer" : replica, "-tp", tp, "-pp", pp));
    auto reg = r.client->RegisterModel(ModelRequest(r.client->session_id()));
    INFO(reg.status().ToString());
    REQUIRE(reg.ok());
    layout::RankCoords coords;
    coords.tp = tp;
    coords.tp_size = tp_size;
    coords.pp = pp;
    coords.pp_size = pp_size;
    auto shards = layout::BuildShards(spec, config, recipe, {}, coords, dtype);
    INFO(shards.status().ToString());
    REQUIRE(shards.ok());
    r.shards = *shards;
    v1::RegisterShardsRequest req;
    req.set_session_id(r.client->session_id());
    req.set_model_id("moe");
    req.set_role(source ? v1::SOURCE : v1::TARGET);
    req.set_replica_id(replica);
    req.mutable_rank()->set_tp(tp);
    req.mutable_rank()->set_tp_size(tp_size);
    req.mutable_rank()->set_pp(pp);
    req.mutable_rank()->set_pp_size(pp_size);
    req.mutable_recipe()->set_name(recipe);
    req.set_update_mode(v1::STAGED);
    req.set_coordinator(coordinator());
    for (const layout::ShardSpec& s : r.shards) {
      const uint64_t bytes = s.shape.NumElements() * kernels::DTypeSize(s.dtype);
      auto b = r.client->Allocate(bytes);
      REQUIRE(b.ok());
      if (source) {
        auto bytes_of = layout::testing::Materialize(spec, s, data);
        std::memcpy(b->data, bytes_of.data(), bytes_of.size());
      } else {
        std::memset(b->data, 0x5a, bytes);
      }
      v1::BufferSpec* bs = req.add_buffers();
      bs->set_name(s.name);
      *bs->mutable_memory() = b->Ref();
      for (int i = 0; i < s.shape.ndim; ++i) bs->add_shape(s.shape.d[i]);
      bs->set_dtype(dtype == layout::DType::kF32 ? v1::FLOAT32 : v1::BFLOAT16);
      r.bufs.push_back(*b);
    }
    auto got = r.client->RegisterShards(req);
    INFO(daemon << ": " << got.status().ToString());
    REQUIRE(got.ok());
    ranks[daemon].push_back(std::move(r));
  }

  void RegisterAll() {
    for (int pp = 0; pp < 2; ++pp) {
      for (int tp = 0; tp < 2; ++tp) {
        AddRank(pp == 0 ? "t0" : "t1", "megatron", true, "", tp, 2, pp, 2, layout::DType::kF32);
      }
    }
    RegisterGenerators("g0");
    RegisterGenerators("g1");
  }
  void RegisterGenerators(const std::string& d) {
    ranks[d].clear();
    if (d == "g0") {
      for (int tp = 0; tp < 4; ++tp) AddRank("g0", "vllm", false, "gen-a", tp, 4, 0, 1, layout::DType::kBF16);
    } else {
      for (int tp = 0; tp < 2; ++tp) AddRank("g1", "vllm", false, "gen-b", tp, 2, 0, 1, layout::DType::kBF16);
    }
  }

  // Every target buffer on `daemon` holds exactly the canonical data.
  void CheckTargets(const std::string& daemon) {
    for (const Rank& r : ranks[daemon]) {
      for (size_t i = 0; i < r.shards.size(); ++i) {
        auto want = layout::testing::Materialize(spec, r.shards[i], data);
        INFO(daemon << " buffer " << r.shards[i].name);
        CHECK(std::memcmp(r.bufs[i].data, want.data(), want.size()) == 0);
      }
    }
  }

  // New source values (version bumps change the weights).
  void UpdateSources(unsigned seed) {
    std::mt19937 rng(seed);
    data = layout::testing::RandomCanonical(spec, rng);
    for (const char* d : {"t0", "t1"}) {
      for (Rank& r : ranks[d]) {
        for (size_t i = 0; i < r.shards.size(); ++i) {
          auto b = layout::testing::Materialize(spec, r.shards[i], data);
          std::memcpy(r.bufs[i].data, b.data(), b.size());
        }
      }
    }
  }

  absl::StatusOr<v1::SyncResult> Sync(uint64_t version, uint64_t deadline_ms = 0) {
    auto c = daemons["t0"]->Attach("sync-driver");
    v1::SyncRequest req;
    req.set_model_id("moe");
    req.set_version(version);
    req.set_deadline_ms(deadline_ms);
    req.set_max_bucket_bytes(4096);
    return c->Sync(req, nullptr);
  }

  v1::ReplicaStatus Replica(const std::string& daemon, const std::string& replica) {
    auto c = daemons[daemon]->Attach("status");
    auto st = c->GetStatus();
    REQUIRE(st.ok());
    for (const auto& m : st->models()) {
      for (const auto& r : m.replicas()) {
        if (r.replica_id() == replica) return r;
      }
    }
    FAIL("no replica " << replica << " on " << daemon);
    return {};
  }

  std::string dir;
  layout::ModelConfig config;
  layout::ModelSpec spec;
  layout::testing::CanonicalData data;
  std::map<std::string, std::unique_ptr<Daemon>> daemons;
  std::map<std::string, std::vector<Rank>> ranks;
};

TEST_CASE("four daemons: TP2xPP2 megatron sources sync an MoE model to vllm TP4 and TP2 replicas over gloo") {
  Cluster c;
  c.RegisterAll();
  auto r = c.Sync(1);
  INFO(r.status().ToString() << "\nt0:\n" << c.daemons["t0"]->proc->Stderr());
  REQUIRE(r.ok());
  CHECK(r->version() == 1);
  c.CheckTargets("g0");
  c.CheckTargets("g1");
  const auto a = c.Replica("g0", "gen-a");
  const auto b = c.Replica("g1", "gen-b");
  CHECK(a.version() == 1);
  CHECK(b.version() == 1);
  CHECK(!a.digest().empty());
  CHECK(a.digest() != b.digest());  // different layouts, different payloads

  // New weights, version 2; a retry of version 2 moves nothing.
  c.UpdateSources(11);
  auto r2 = c.Sync(2);
  INFO(r2.status().ToString());
  REQUIRE(r2.ok());
  c.CheckTargets("g0");
  c.CheckTargets("g1");
  CHECK(c.Replica("g1", "gen-b").version() == 2);
  auto again = c.Sync(2);
  REQUIRE(again.ok());
  CHECK(again->bytes() == 0);

  // A sync asked of a participant names the coordinator.
  auto g = c.daemons["g0"]->Attach("wrong-door");
  v1::SyncRequest req;
  req.set_model_id("moe");
  req.set_version(3);
  auto wrong = g->Sync(req, nullptr);
  REQUIRE(!wrong.ok());
  CHECK(wrong.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(wrong.status().message()), Catch::Contains(c.coordinator()));
}

TEST_CASE("a generator daemon killed mid-transfer: ABORTED, the others keep their version, a restart recovers") {
  // Slow transfers on the trainer side so the kill lands mid-sync.
  Cluster c({"--fault-bucket-delay-ms", "50"});
  c.RegisterAll();
  REQUIRE(c.Sync(1).ok());
  c.UpdateSources(23);
  auto pending = std::async(std::launch::async, [&] { return c.Sync(2, 60000); });
  // Kill g1 as soon as its part runs.
  bool running = testing::WaitFor([&] {
    auto s = c.daemons["g1"]->Attach("watch")->GetStatus();
    return s.ok() && s->jobs_size() > 0;
  }, 20000);
  c.daemons["g1"]->proc->Signal(SIGKILL);
  c.daemons["g1"]->proc->Wait(5000);
  auto r = pending.get();
  INFO("kill landed while running: " << running);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("g1"));
  // The healthy daemons stay on version 1 and idle.
  CHECK(c.Replica("g0", "gen-a").version() == 1);
  CHECK(!c.Replica("g0", "gen-a").poisoned());
  for (const char* d : {"t0", "t1", "g0"}) {
    auto st = c.daemons[d]->Attach("idle")->GetStatus();
    REQUIRE(st.ok());
    CHECK(st->jobs_size() == 0);
  }
  // Restart g1 (new incarnation); its generator re-registers; sync again.
  c.ranks["g1"].clear();
  c.daemons["g1"] = std::make_unique<Daemon>("g1", c.dir, std::vector<std::string>{"--peers", c.coordinator()});
  c.RegisterGenerators("g1");
  auto ok = c.Sync(2);
  INFO(ok.status().ToString());
  REQUIRE(ok.ok());
  c.CheckTargets("g0");
  c.CheckTargets("g1");
}

}  // namespace
}  // namespace wsync
