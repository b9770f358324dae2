// Multi-node syncs on one machine: four real wsyncd processes on loopback,
// each with its own socket and port. Trainer TP=2 x PP=2 (megatron) on two
// "trainer nodes", generator replicas TP=4 and TP=2 (vllm) on two
// "generator nodes", a small MoE model, host memory over Gloo. Expected
// target bytes come from layout::testing::Materialize, which places
// canonical values element by element without the planner.
#include <signal.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "client/cpp/wsync_client.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/layout_testing.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"
#include "daemon/service/convert.h"
#include "tests/testing/model_proto.h"
#include "tests/testing/pki.h"
#include <tuple>
#include "tests/testing/process.h"
#include "tests/testing/wsyncd_process.h"

namespace wsync {
namespace {

using testing::Process;
using testing::Runfile;

constexpr char kConfig[] = R"({"model_type": "qwen3_moe", "hidden_size": 16,
  "intermediate_size": 32, "moe_intermediate_size": 8, "num_experts": 4,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 4,
  "num_hidden_layers": 2, "vocab_size": 70, "tie_word_embeddings": false})";

// Peer security flags: mTLS with `<pki>/<id>.pem` when pki is set, else
// plaintext.
std::vector<std::string> Security(const std::string& pki, const std::string& id) {
  if (pki.empty()) return {"--insecure"};
  return {"--tls-cert", pki + "/" + id + ".pem", "--tls-key", pki + "/" + id + ".key", "--tls-client-ca",
          pki + "/ca.pem", "--peer-identities", "t0,t1,g0,g1"};
}

// A wsyncd of the cluster, up and answering (the test fails otherwise).
struct Daemon {
  Daemon(const std::string& id, const std::string& dir, std::vector<std::string> extra = {},
         const std::string& pki = "")
      : id(id) {
    std::vector<std::string> flags = Security(pki, id);
    flags.insert(flags.end(), extra.begin(), extra.end());
    auto d = testing::WsyncdProcess::Start(id, dir, flags);
    INFO(d.status().ToString());
    REQUIRE(d.ok());
    daemon = std::move(*d);
    socket = daemon->socket();
    address = daemon->address();
    proc = &daemon->proc();
  }
  std::unique_ptr<client::Client> Attach(const std::string& name) {
    auto c = daemon->Attach(name);
    INFO(c.status().ToString());
    REQUIRE(c.ok());
    return std::move(*c);
  }
  std::string id, socket, address;
  std::unique_ptr<testing::WsyncdProcess> daemon;
  testing::Process* proc = nullptr;
};

// One rank registered through a client of its node's daemon.
struct Rank {
  std::unique_ptr<client::Client> client;
  std::vector<layout::ShardSpec> shards;
  std::vector<client::ShmBuffer> bufs;
};

struct ClusterOptions {
  std::vector<std::string> trainer_flags;    // extra wsyncd flags of t0 and t1
  std::vector<std::string> generator_flags;  // extra wsyncd flags of g0 and g1
  bool lora = false;  // q_proj and o_proj adapters (rank 4), held whole by trainer tp0 pp0
  bool mtls = false;  // peers authenticate with certificates of a test CA
  // The model has FP8 scales (grouped as `fp8_scaling` says), and both
  // generators are vLLM TP=1 with every weight that gets a scale buffer in
  // fp8 (o_proj, and the fused experts' w2).
  bool fp8 = false;
  layout::Fp8Scaling fp8_scaling = layout::Fp8Scaling::kBlock;
};

constexpr int kLoraRank = 4;
constexpr double kLoraScaling = 0.5;

struct Cluster {
  explicit Cluster(ClusterOptions o = {}) : options(o) {
    dir = testing::MakeTempDir();
    if (o.mtls) {
      pki = dir + "/pki";
      REQUIRE(mkdir(pki.c_str(), 0700) == 0);
      const std::string err = testing::MakeTestPki(pki, {"t0", "t1", "g0", "g1", "intruder"});
      INFO(err);
      REQUIRE(err.empty());
    }
    config = *layout::ParseHfConfig(kConfig);
    REQUIRE(layout::NormalizeConfig(&config).ok());
    std::vector<layout::TensorSpec> tensors = *layout::CanonicalTensors(config, layout::DType::kBF16);
    if (o.lora) {
      for (int l = 0; l < config.num_hidden_layers; ++l) {
        for (const char* proj : {"q_proj", "o_proj"}) {
          const std::string stem = absl::StrCat("model.layers.", l, ".self_attn.", proj);
          layout::Shape w;
          for (const auto& t : tensors) {
            if (t.name == stem + ".weight") w = t.shape;
          }
          adapters.push_back({stem + ".weight", stem + ".lora_A.weight", stem + ".lora_B.weight", kLoraScaling});
          tensors.push_back({adapters.back().a, layout::Shape::Of({kLoraRank, w.d[1]}), layout::DType::kBF16});
          tensors.push_back({adapters.back().b, layout::Shape::Of({w.d[0], kLoraRank}), layout::DType::kBF16});
        }
      }
    }
    if (o.fp8) {  // as the daemon derives them (RegisterModelRequest.fp8_scaling)
      const size_t n = tensors.size();
      for (size_t i = 0; i < n; ++i) {
        if (tensors[i].shape.ndim == 2 && layout::Fp8Quantized(tensors[i]) &&
            tensors[i].name.find(".lora_") == std::string::npos) {
          tensors.push_back({tensors[i].name + ScaleSuffix(),
                             layout::Fp8ScaleShape(tensors[i].shape, o.fp8_scaling), layout::DType::kF32,
                             tensors[i].name});
        }
      }
    }
    spec = *layout::ModelSpec::Create(tensors);
    std::mt19937 rng(7);
    data = layout::testing::RandomCanonical(spec, rng);
    daemons["t0"] = std::make_unique<Daemon>("t0", dir, o.trainer_flags, pki);
    for (const char* id : {"t1", "g0", "g1"}) StartDaemon(id);
  }
  void StartDaemon(const std::string& id) {
    std::vector<std::string> flags = {"--peers", coordinator()};
    const auto& extra = id[0] == 't' ? options.trainer_flags : options.generator_flags;
    flags.insert(flags.end(), extra.begin(), extra.end());
    daemons[id] = std::make_unique<Daemon>(id, dir, flags, pki);
  }
  std::string coordinator() { return daemons["t0"]->address; }
  const char* ScaleSuffix() const {
    return options.fp8_scaling == layout::Fp8Scaling::kBlock ? "_scale_inv" : "_scale";
  }

  v1::RegisterModelRequest ModelRequest(const std::string& session) {
    v1::RegisterModelRequest m = testing::ModelRequest("moe", config);
    m.set_session_id(session);
    if (options.fp8) {
      m.set_fp8_scaling(options.fp8_scaling == layout::Fp8Scaling::kBlock     ? v1::FP8_SCALING_BLOCK
                        : options.fp8_scaling == layout::Fp8Scaling::kChannel ? v1::FP8_SCALING_CHANNEL
                                                                               : v1::FP8_SCALING_TENSOR);
    }
    for (const auto& ad : adapters) {
      v1::LoraAdapter* a = m.add_lora_adapters();
      a->set_base_tensor(ad.base);
      a->set_a_tensor(ad.a);
      a->set_b_tensor(ad.b);
      a->set_rank(kLoraRank);
      a->set_scaling(ad.scaling);
      a->set_convention(v1::PEFT);
    }
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
    if (!source && options.fp8) {
      for (layout::ShardSpec& sh : r.shards) {
        if (IsScales(sh)) {
          sh.dtype = layout::DType::kF32;
        } else if (std::any_of(r.shards.begin(), r.shards.end(),
                               [&](const layout::ShardSpec& o) { return o.name == sh.name + ScaleSuffix(); })) {
          sh.dtype = layout::DType::kF8E4M3;
        }
      }
    }
    const size_t recipe_shards = r.shards.size();
    if (source && tp == 0 && pp == 0) {
      // This trainer also holds every adapter tensor whole (explicit pieces).
      for (int32_t t = 0; t < spec.size(); ++t) {
        const auto& ts = spec.tensor(t);
        if (ts.name.find(".lora_") == std::string::npos) continue;
        layout::ShardSpec s{ts.name, ts.shape, dtype, {}};
        s.pieces.push_back({t, layout::Box::Whole(ts.shape), layout::Box::Whole(ts.shape)});
        r.shards.push_back(s);
      }
    }
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
      v1::BufferSpec* bs = req.add_buffers();
      service::ToProto(s, TensorNames(), bs);
      // The recipe generates the pieces of its own buffers.
      if (static_cast<size_t>(req.buffers_size()) <= recipe_shards) bs->clear_pieces();
      const uint64_t bytes = s.shape.NumElements() * kernels::DTypeSize(s.dtype);
      auto b = r.client->Allocate(bytes);
      REQUIRE(b.ok());
      if (source) {
        auto bytes_of = layout::testing::Materialize(spec, s, data);
        std::memcpy(b->data, bytes_of.data(), bytes_of.size());
      } else {
        std::memset(b->data, 0x5a, bytes);
      }
      *bs->mutable_memory() = b->Ref();
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
    if (options.fp8) {  // FP8 cuts must keep 128 x 128 blocks whole: TP=1 here
      AddRank(d, "vllm", false, d == "g0" ? "gen-a" : "gen-b", 0, 1, 0, 1, layout::DType::kBF16);
      return;
    }
    if (d == "g0") {
      for (int tp = 0; tp < 4; ++tp) AddRank("g0", "vllm", false, "gen-a", tp, 4, 0, 1, layout::DType::kBF16);
    } else {
      for (int tp = 0; tp < 2; ++tp) AddRank("g1", "vllm", false, "gen-b", tp, 2, 0, 1, layout::DType::kBF16);
    }
  }

  bool IsScales(const layout::ShardSpec& sh) const {
    return !sh.pieces.empty() && spec.ScalesOf(sh.pieces[0].tensor) >= 0;
  }

  // Every target buffer on `daemon` holds exactly `want_data` (default: the
  // sources' canonical data); FP8 buffers and their scales hold what the
  // CPU reference makes of each whole canonical tensor in fp32.
  void CheckTargets(const std::string& daemon, const layout::testing::CanonicalData* want_data = nullptr) {
    const layout::testing::CanonicalData& want_of = want_data ? *want_data : data;
    for (const Rank& r : ranks[daemon]) {
      for (size_t i = 0; i < r.shards.size(); ++i) {
        const layout::ShardSpec& sh = r.shards[i];
        INFO(daemon << " buffer " << sh.name);
        if (IsScales(sh)) continue;  // checked with their weights
        if (sh.dtype == layout::DType::kF8E4M3) {
          CheckFp8(r, i, want_of);
          continue;
        }
        auto want = layout::testing::Materialize(spec, sh, want_of);
        CHECK(std::memcmp(r.bufs[i].data, want.data(), want.size()) == 0);
      }
    }
  }

  // Buffer i of `r` (fp8; a 2-d matrix or a 3-d stack of them) and its
  // scale buffer, piece by piece.
  void CheckFp8(const Rank& r, size_t i, const layout::testing::CanonicalData& want_of) {
    const layout::ShardSpec& sh = r.shards[i];
    size_t si = 0;
    while (si < r.shards.size() && r.shards[si].name != sh.name + ScaleSuffix()) ++si;
    REQUIRE(si < r.shards.size());
    const layout::ShardSpec& sc = r.shards[si];
    const int nd = sh.shape.ndim;
    for (size_t k = 0; k < sh.pieces.size(); ++k) {
      const layout::Piece& p = sh.pieces[k];
      const layout::Shape shape = spec.tensor(p.tensor).shape;
      std::vector<uint8_t> q;
      std::vector<float> scale;
      // 128 x 128 blocks, rows, or the whole matrix (docs/fp8.md).
      const int64_t gr = options.fp8_scaling == layout::Fp8Scaling::kBlock ? 128
                         : options.fp8_scaling == layout::Fp8Scaling::kChannel ? 1
                                                                                : shape.d[0];
      const int64_t gc = options.fp8_scaling == layout::Fp8Scaling::kBlock ? 128 : shape.d[1];
      layout::testing::Fp8Reference(spec, want_of, p.tensor, &q, &scale, gr, gc);
      // This layout keeps whole tensors, stacked by rows as vLLM fuses
      // them (qkv, gate/up): piece (e, row, 0) of a stack, or (row, 0). Its
      // scales start at row / 128 (blocks), row (channels), or one row per
      // fused piece before it (tensors).
      REQUIRE(p.canonical == layout::Box::Whole(shape));
      const int64_t matrix = nd == 3 ? p.shard.off[0] : 0, row = p.shard.off[nd - 2];
      int64_t scale_row = row / gr;
      if (options.fp8_scaling == layout::Fp8Scaling::kTensor) {
        scale_row = 0;
        for (const layout::Piece& o : sh.pieces) {
          scale_row += (nd == 2 || o.shard.off[0] == matrix) && o.shard.off[nd - 2] < row;
        }
      }
      const auto* got = static_cast<const uint8_t*>(r.bufs[i].data) +
                        (matrix * sh.shape.d[nd - 2] + row) * sh.shape.d[nd - 1];
      CHECK(std::memcmp(got, q.data(), q.size()) == 0);
      const auto* gs = static_cast<const float*>(r.bufs[si].data) +
                       (matrix * sc.shape.d[nd - 2] + scale_row) * sc.shape.d[nd - 1];
      CHECK(std::memcmp(gs, scale.data(), scale.size() * 4) == 0);
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

  absl::StatusOr<v1::SyncResult> Sync(uint64_t version, uint64_t deadline_ms = 0, v1::LoraMode lora = v1::NONE) {
    auto c = daemons["t0"]->Attach("sync-driver");
    v1::SyncRequest req;
    req.set_model_id("moe");
    req.set_version(version);
    req.set_deadline_ms(deadline_ms);
    req.mutable_lora()->set_mode(lora);
    req.set_max_bucket_bytes(4096);
    return c->Sync(req, nullptr);
  }

  // A sync that must succeed, after which both generators hold `want`
  // (default: the sources' data).
  v1::SyncResult SyncOk(uint64_t version, v1::LoraMode lora = v1::NONE,
                        const layout::testing::CanonicalData* want = nullptr) {
    auto r = Sync(version, 0, lora);
    INFO(r.status().ToString() << "\n" << AllStderr());
    REQUIRE(r.ok());
    CheckTargets("g0", want);
    CheckTargets("g1", want);
    return *r;
  }

  // Every daemon's stderr, for failure messages: a participant that died
  // shows up in the coordinator's log only as a closed socket.
  std::string AllStderr() {
    std::string out;
    for (const auto& [id, d] : daemons) {
      out += id + (d->proc->Running() ? "" : " (exited)") + " stderr:\n" + d->proc->Stderr() + "\n";
    }
    return out;
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

  std::vector<std::string> TensorNames() const {
    std::vector<std::string> names;
    for (int32_t t = 0; t < spec.size(); ++t) names.push_back(spec.tensor(t).name);
    return names;
  }

  // Whether `daemon` knows replica `replica` of the model.
  bool HasReplica(const std::string& daemon, const std::string& replica) {
    auto st = daemons[daemon]->Attach("status")->GetStatus();
    if (!st.ok()) return false;
    for (const auto& m : st->models()) {
      for (const auto& r : m.replicas()) {
        if (r.replica_id() == replica) return true;
      }
    }
    return false;
  }

  // How many ranks of the model `daemon` knows (its own and announced ones).
  int Ranks(const std::string& daemon) {
    auto st = daemons[daemon]->Attach("status")->GetStatus();
    if (!st.ok()) return -1;
    for (const auto& m : st->models()) return m.ranks_size();
    return 0;
  }

  // Waits until `daemon` runs no job (true), or gives up after a minute.
  bool Idle(const std::string& daemon) {
    return testing::WaitFor([&] {
      auto st = daemons[daemon]->Attach("idle")->GetStatus();
      return st.ok() && st->jobs_size() == 0;
    }, 60000);
  }

  // Waits until `daemon` runs a job.
  bool Busy(const std::string& daemon) {
    return testing::WaitFor([&] {
      auto st = daemons[daemon]->Attach("watch")->GetStatus();
      return st.ok() && st->jobs_size() > 0;
    }, 20000);
  }

  ClusterOptions options;
  std::string dir, pki;
  std::vector<layout::testing::NamedAdapter> adapters;
  layout::ModelConfig config;
  layout::ModelSpec spec;
  layout::testing::CanonicalData data;
  std::map<std::string, std::unique_ptr<Daemon>> daemons;
  std::map<std::string, std::vector<Rank>> ranks;
};

TEST_CASE("four daemons: TP2xPP2 megatron sources sync an MoE model to vllm TP4 and TP2 replicas over gloo") {
  Cluster c;
  c.RegisterAll();
  CHECK(c.SyncOk(1).version() == 1);
  const auto a = c.Replica("g0", "gen-a");
  const auto b = c.Replica("g1", "gen-b");
  CHECK(a.version() == 1);
  CHECK(b.version() == 1);
  CHECK(!a.digest().empty());
  CHECK(a.digest() != b.digest());  // different layouts, different payloads

  // New weights, version 2; a retry of version 2 moves nothing.
  c.UpdateSources(11);
  c.SyncOk(2);
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

// The first trainer (which holds the adapters whole) gets new values of
// LoRA tensor `b_name`, in its memory and in c->data.
void ChangeLoraB(Cluster* c, const std::string& b_name) {
  const int32_t bt = c->spec.Find(b_name);
  Rank& first = c->ranks["t0"][0];
  for (size_t i = 0; i < first.shards.size(); ++i) {
    if (first.shards[i].name != b_name) continue;
    for (size_t k = 0; k < c->data[bt].size(); ++k) {
      c->data[bt][k] = static_cast<float>(static_cast<int>(k % 7) - 3) / 16;
    }
    auto bytes = layout::testing::Materialize(c->spec, first.shards[i], c->data);
    std::memcpy(first.bufs[i].data, bytes.data(), bytes.size());
  }
}

TEST_CASE("FP8 targets across nodes: each piece assembled in fp32 from wires, quantized with its scales; LoRA too") {
  ClusterOptions o;
  o.fp8 = true;
  o.lora = true;
  Cluster c(o);
  c.RegisterAll();
  int fp8_buffers = 0;
  for (const Rank& r : c.ranks["g0"]) {
    for (const auto& sh : r.shards) fp8_buffers += sh.dtype == layout::DType::kF8E4M3;
  }
  CHECK(fp8_buffers == 4);  // o_proj and the experts' w2, in both layers
  c.SyncOk(1);
  c.UpdateSources(31);
  c.SyncOk(2);
  // Merge: W + s*B@A in fp32, then one rounding into FP8.
  auto merged = layout::testing::MergeLoraNaive(c.spec, c.data, c.adapters);
  c.SyncOk(3, v1::MERGE, &merged);
  CHECK(c.Replica("g1", "gen-b").version() == 3);
  // adapter_only: only A and B move; each target quantizes its fp32
  // pristine base (version 2's values) + s*B@A.
  ChangeLoraB(&c, "model.layers.1.self_attn.o_proj.lora_B.weight");
  merged = layout::testing::MergeLoraNaive(c.spec, c.data, c.adapters);
  c.SyncOk(4, v1::ADAPTER_ONLY, &merged);
  // unmerge would have to start from FP8 weights.
  auto r = c.Sync(5, 0, v1::UNMERGE);
  REQUIRE_FALSE(r.ok());
  // (The participant's FAILED_PRECONDITION reaches the caller as the
  // part's abort, with its message.)
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("o_proj.weight' is quantized to FP8") &&
                                                    Catch::Contains("LoRA unmerge cannot start from FP8 weights"));
  CHECK(c.Replica("g0", "gen-a").version() == 4);
  CHECK_FALSE(c.Replica("g0", "gen-a").poisoned());
}

TEST_CASE("FP8 channel and tensor scales across nodes: rows and matrices that span trainer ranks") {
  // o_proj's rows are cut by the trainers' TP (columns) and its matrix by
  // their PP too; each generator's piece arrives from several wires.
  for (layout::Fp8Scaling scaling : {layout::Fp8Scaling::kChannel, layout::Fp8Scaling::kTensor}) {
    INFO(layout::Fp8ScalingName(scaling));
    ClusterOptions o;
    o.fp8 = true;
    o.fp8_scaling = scaling;
    Cluster c(o);
    c.RegisterAll();
    // qkv_proj, o_proj and the experts' w13 and w2 of both layers (with
    // block scales, qkv_proj and w13 are not FP8 here: k and up would start
    // inside q's and gate's only block).
    int fp8_buffers = 0;
    for (const Rank& r : c.ranks["g1"]) {
      for (const auto& sh : r.shards) fp8_buffers += sh.dtype == layout::DType::kF8E4M3;
    }
    CHECK(fp8_buffers == 8);
    c.SyncOk(1);
    c.UpdateSources(37);
    c.SyncOk(2);
  }
}

TEST_CASE("a generator daemon killed mid-transfer: ABORTED, the others keep their version, a restart recovers") {
  // Slow transfers on the trainer side so the kill lands mid-sync.
  Cluster c({{"--fault-bucket-delay-ms", "50"}});
  c.RegisterAll();
  REQUIRE(c.Sync(1).ok());
  c.UpdateSources(23);
  auto pending = std::async(std::launch::async, [&] { return c.Sync(2, 60000); });
  // Kill g1 as soon as its part runs.
  bool running = c.Busy("g1");
  c.daemons["g1"]->proc->Signal(SIGKILL);
  c.daemons["g1"]->proc->Wait(5000);
  auto r = pending.get();
  INFO("kill landed while running: " << running);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("g1"));
  // Its peers' transfers fail too ("peer gone"), and may report first: the
  // coordinator still names the daemon that died as the cause.
  if (running) CHECK_THAT(std::string(r.status().message()), Catch::Contains("daemon 'g1' stopped answering"));
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
  c.StartDaemon("g1");
  c.RegisterGenerators("g1");
  c.SyncOk(2);
}

TEST_CASE("adapter_only LoRA across nodes: only A and B move, targets rebuild W + s*B@A from their base") {
  ClusterOptions o;
  o.lora = true;
  Cluster c(o);
  c.RegisterAll();
  auto full = c.SyncOk(1);

  auto merged = layout::testing::MergeLoraNaive(c.spec, c.data, c.adapters);
  auto only = c.SyncOk(2, v1::ADAPTER_ONLY, &merged);
  CHECK(only.bytes() > 0);
  CHECK(only.bytes() * 4 < full.bytes());  // adapters, not weights

  // The trainer changes one B; the next adapter_only sync starts again from
  // the pristine base, not from the merged weights.
  ChangeLoraB(&c, "model.layers.1.self_attn.o_proj.lora_B.weight");
  merged = layout::testing::MergeLoraNaive(c.spec, c.data, c.adapters);
  c.SyncOk(3, v1::ADAPTER_ONLY, &merged);

  // A merge sync of the same weights writes the same bytes.
  c.SyncOk(4, v1::MERGE, &merged);
  CHECK(c.Replica("g0", "gen-a").version() == 4);
}

TEST_CASE("the host-staged GPU path, host memory standing in for GPUs on every daemon: full and LoRA syncs exact") {
  // --test-stand-in-gpu routes every rank's work through the GPU side of
  // the part (per-device staging, LoRA operands and contexts, wire buffers
  // shared with the devices), run by a second host context.
  ClusterOptions o;
  o.lora = true;
  o.trainer_flags = {"--test-stand-in-gpu"};
  o.generator_flags = {"--test-stand-in-gpu"};
  Cluster c(o);
  c.RegisterAll();
  c.SyncOk(1);
  auto merged = layout::testing::MergeLoraNaive(c.spec, c.data, c.adapters);
  c.SyncOk(2, v1::ADAPTER_ONLY, &merged);
  c.SyncOk(3, v1::MERGE, &merged);
  CHECK(c.Replica("g0", "gen-a").version() == 3);
  CHECK(c.Replica("g1", "gen-b").version() == 3);
  CHECK_THAT(c.daemons["g0"]->proc->Stderr(), Catch::Contains("--test-stand-in-gpu"));
}

TEST_CASE("every daemon on a GPU of its own that can run NCCL: the NCCL path, its wire buffers on the GPUs; exact") {
  // --test-stand-in-nccl: each daemon says it can run NCCL and holds its
  // ranks on a stand-in GPU of its own, so the coordinator chooses NCCL and
  // every member keeps its wire buffers on that "GPU"; the communicators
  // are built over Gloo (no NCCL without a GPU).
  ClusterOptions o;
  o.lora = true;
  o.trainer_flags = {"--test-stand-in-nccl"};
  o.generator_flags = {"--test-stand-in-nccl"};
  Cluster c(o);
  c.RegisterAll();
  CHECK(c.SyncOk(1).path() == "nccl");
  auto merged = layout::testing::MergeLoraNaive(c.spec, c.data, c.adapters);
  CHECK(c.SyncOk(2, v1::ADAPTER_ONLY, &merged).path() == "nccl");
  CHECK(c.SyncOk(3, v1::MERGE, &merged).path() == "nccl");
  CHECK(c.Replica("g1", "gen-b").version() == 3);
  CHECK_THAT(c.daemons["t0"]->proc->Stderr(), Catch::Contains("wires over NCCL"));
  CHECK_THAT(c.daemons["g0"]->proc->Stderr(), Catch::Contains("standing in for NCCL"));
}

TEST_CASE("one daemon without NCCL: the part falls back to Gloo and the coordinator says why") {
  ClusterOptions o;
  o.trainer_flags = {"--test-stand-in-nccl"};
  o.generator_flags = {"--test-stand-in-gpu"};  // GPU ranks, but no NCCL
  Cluster c(o);
  c.RegisterAll();
  CHECK(c.SyncOk(1).path() == "gloo");
  CHECK_THAT(c.daemons["t0"]->proc->Stderr(),
             Catch::Contains("wires over Gloo, not NCCL: daemon 'g0' cannot run NCCL"));
}

TEST_CASE("bytes corrupted on a generator node: DATA_LOSS before anything commits") {
  ClusterOptions o;
  o.generator_flags = {"--fault-corrupt-wire", "3"};
  Cluster c(o);
  c.RegisterAll();
  auto r = c.Sync(1);
  INFO(r.status().ToString());
  REQUIRE(!r.ok());
  CHECK(r.status().code() == absl::StatusCode::kDataLoss);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("wire bucket 3"));
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("tensors model."));
  for (const auto& [d, rep] : {std::pair<std::string, std::string>{"g0", "gen-a"}, {"g1", "gen-b"}}) {
    CHECK(c.Replica(d, rep).version() == 0);
    for (const Rank& rank : c.ranks[d]) {  // live memory untouched (staged)
      for (const auto& b : rank.bufs) CHECK(static_cast<const uint8_t*>(b.data)[0] == 0x5a);
    }
  }
  for (const char* d : {"t0", "t1", "g0", "g1"}) CHECK(c.Idle(d));
}

TEST_CASE("the coordinator killed mid-sync: participants abort, keep their version and return to idle") {
  Cluster c({{"--fault-bucket-delay-ms", "50"}});
  c.RegisterAll();
  REQUIRE(c.Sync(1).ok());
  const auto v1_data = c.data;
  c.UpdateSources(31);
  auto pending = std::async(std::launch::async, [&] { return c.Sync(2, 60000); });
  REQUIRE(c.Busy("g0"));
  c.daemons["t0"]->proc->Signal(SIGKILL);
  c.daemons["t0"]->proc->Wait(5000);
  auto r = pending.get();
  CHECK(!r.ok());
  for (const char* d : {"t1", "g0", "g1"}) {
    INFO(d << " stderr:\n" << c.daemons[d]->proc->Stderr());
    CHECK(c.Idle(d));
    CHECK(c.daemons[d]->proc->Running());
  }
  for (const auto& [d, rep] : {std::pair<std::string, std::string>{"g0", "gen-a"}, {"g1", "gen-b"}}) {
    const auto st = c.Replica(d, rep);
    CHECK(st.version() == 1);
    CHECK(!st.poisoned());
    c.CheckTargets(d, &v1_data);  // staged: live memory never saw version 2
  }
  CHECK_THAT(c.daemons["g0"]->proc->Stderr(), Catch::Contains("aborted"));
}

TEST_CASE("the coordinator stops answering mid-sync (SIGSTOP): the watchdog aborts the parts; SIGCONT recovers") {
  Cluster c({{"--fault-bucket-delay-ms", "50"}});
  c.RegisterAll();
  REQUIRE(c.Sync(1).ok());
  const auto v1_data = c.data;
  c.UpdateSources(41);
  // A deadline shorter than the member timeout: the watchdog fires first.
  auto pending = std::async(std::launch::async, [&] { return c.Sync(2, 1500); });
  REQUIRE(c.Busy("g0"));
  c.daemons["t0"]->proc->Signal(SIGSTOP);
  for (const char* d : {"t1", "g0", "g1"}) {
    INFO(d << " stderr:\n" << c.daemons[d]->proc->Stderr());
    CHECK(c.Idle(d));
  }
  CHECK_THAT(c.daemons["g0"]->proc->Stderr(), Catch::Contains("watchdog: job"));
  for (const auto& [d, rep] : {std::pair<std::string, std::string>{"g0", "gen-a"}, {"g1", "gen-b"}}) {
    CHECK(c.Replica(d, rep).version() == 1);
    c.CheckTargets(d, &v1_data);
  }
  // Resumed, the coordinator ends its sync, the members rejoin, announce
  // their ranks again, and the next sync succeeds.
  c.daemons["t0"]->proc->Signal(SIGCONT);
  auto r = pending.get();
  INFO(r.status().ToString());
  CHECK(!r.ok());
  CHECK(testing::WaitFor([&] { return c.Ranks("t0") == 10; }, 60000));
  c.SyncOk(2);
}

TEST_CASE("a peer that stops answering (SIGSTOP): the sync aborts naming it, and recovers after SIGCONT") {
  Cluster c({{"--fault-bucket-delay-ms", "50"}});
  c.RegisterAll();
  REQUIRE(c.Sync(1).ok());
  c.UpdateSources(37);
  auto pending = std::async(std::launch::async, [&] { return c.Sync(2, 60000); });
  REQUIRE(c.Busy("g1"));
  c.daemons["g1"]->proc->Signal(SIGSTOP);
  auto r = pending.get();
  INFO(r.status().ToString());
  REQUIRE(!r.ok());
  CHECK(r.status().code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("'g1'"));
  // The coordinator no longer counts g1 as a member while it is stopped.
  CHECK(testing::WaitFor([&] {
    auto st = c.daemons["t0"]->Attach("peers")->GetStatus();
    if (!st.ok()) return false;
    for (const auto& p : st->peers()) {
      if (p.daemon_id() == "g1") return false;
    }
    return true;
  }, 60000));
  for (const char* d : {"t0", "t1", "g0"}) CHECK(c.Idle(d));
  CHECK(c.Replica("g0", "gen-a").version() == 1);

  // Resumed, g1 drops its part, rejoins and announces its ranks again.
  c.daemons["g1"]->proc->Signal(SIGCONT);
  CHECK(c.Idle("g1"));
  CHECK(c.Replica("g1", "gen-b").version() == 1);
  // Every rank of gen-b, not only the first one announced (a slow build,
  // such as TSan's, shows the gap).
  CHECK(testing::WaitFor([&] { return c.Ranks("t0") == 10; }, 60000));
  c.SyncOk(2);
}

TEST_CASE("mTLS between peers: certificates of one CA sync; a daemon with a foreign certificate cannot join") {
  ClusterOptions o;
  o.mtls = true;
  Cluster c(o);
  c.RegisterAll();
  c.SyncOk(1);

  // A daemon whose certificate another CA signed, and one whose certificate
  // the same CA signed but whose name is not in --peer-identities: the
  // coordinator refuses both.
  const std::string rogue = c.dir + "/rogue";
  REQUIRE(mkdir(rogue.c_str(), 0700) == 0);
  REQUIRE(testing::MakeTestPki(rogue, {"x0"}).empty());
  const std::vector<std::tuple<std::string, std::string, std::string>> cases = {
      {"x0", rogue, "certificate verify failed"}, {"intruder", c.pki, "is not a peer daemon's"}};
  for (const auto& [id, pki, why] : cases) {
    Daemon x(id, c.dir, {}, pki);
    auto client = x.Attach("gen-x");
    REQUIRE(client->RegisterModel(c.ModelRequest(client->session_id())).ok());
    v1::RegisterShardsRequest req;
    req.set_session_id(client->session_id());
    req.set_model_id("moe");
    req.set_role(v1::TARGET);
    req.set_replica_id("gen-x");
    req.mutable_rank()->set_tp_size(1);
    req.mutable_rank()->set_pp_size(1);
    req.mutable_recipe()->set_name("vllm");
    req.set_coordinator(c.coordinator());
    layout::RankCoords one;
    auto shards = *layout::BuildShards(c.spec, c.config, "vllm", {}, one, layout::DType::kBF16);
    for (const auto& s : shards) {
      auto b = client->Allocate(s.shape.NumElements() * 2);
      REQUIRE(b.ok());
      v1::BufferSpec* bs = req.add_buffers();
      service::ToProto(s, {}, bs);
      bs->clear_pieces();  // the recipe's
      *bs->mutable_memory() = b->Ref();
    }
    auto got = client->RegisterShards(req);
    INFO(got.status().ToString());
    REQUIRE(!got.ok());
    CHECK_THAT(std::string(got.status().message()), Catch::Contains(c.coordinator()) && Catch::Contains(why));
    // Nothing of it reached the coordinator.
    CHECK(!c.HasReplica("t0", "gen-x"));
  }
}

}  // namespace
}  // namespace wsync
