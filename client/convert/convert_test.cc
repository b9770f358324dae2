// End-to-end tests of wsyncctl convert's engine on real files.
#include "client/convert/convert.h"

#include <dirent.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "client/convert/safetensors.h"
#include "daemon/layout/model_config.h"
#include "kernels/dtype.h"
#include "kernels/lora.h"
#include "tests/testing/process.h"

namespace wsync::convert {
namespace {

using layout::DType;

constexpr char kDense[] = R"({"model_type": "qwen2", "hidden_size": 16, "intermediate_size": 24,
  "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 4,
  "vocab_size": 100, "tie_word_embeddings": false})";

constexpr char kMoe[] = R"({"model_type": "qwen2_moe", "hidden_size": 8, "intermediate_size": 16,
  "moe_intermediate_size": 8, "shared_expert_intermediate_size": 8, "num_experts": 4,
  "num_attention_heads": 2, "num_key_value_heads": 2, "num_hidden_layers": 2,
  "vocab_size": 50, "tie_word_embeddings": true})";

struct Checkpoint {
  std::string dir, config;
  std::vector<layout::TensorSpec> tensors;
  std::vector<std::vector<float>> values;  // canonical, fp32
};

// (Re)writes c.dir/hf/model.safetensors from c.values, in fp32.
void WriteHf(const Checkpoint& c) {
  std::vector<TensorInfo> infos;
  for (const auto& ts : c.tensors) infos.push_back({ts.name, DType::kF32, ts.shape, 0, 0});
  auto w = SafetensorsWriter::Create(c.dir + "/hf/model.safetensors", infos, {});
  REQUIRE(w.ok());
  for (size_t i = 0; i < c.values.size(); ++i) {
    REQUIRE((*w)->Write(i, 0, c.values[i].data(), c.values[i].size() * 4).ok());
  }
  REQUIRE((*w)->Commit().ok());
}

// Writes an HF checkpoint of random fp32 values. `exact` limits values to
// m/64 (exact in every dtype); otherwise normal(0, 1).
Checkpoint MakeHf(const char* config_json, bool exact, uint32_t seed) {
  Checkpoint c;
  c.dir = testing::MakeTempDir();
  c.config = c.dir + "/config.json";
  std::ofstream(c.config) << config_json;
  auto config = layout::ParseHfConfig(config_json);
  REQUIRE(config.ok());
  auto t = layout::CanonicalTensors(*config, DType::kF32);
  REQUIRE(t.ok());
  c.tensors = *t;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_int_distribution<int> m(-127, 127);
  for (const auto& ts : c.tensors) {
    std::vector<float> v(ts.shape.NumElements());
    for (float& x : v) x = exact ? m(rng) / 64.0f : normal(rng);
    c.values.push_back(std::move(v));
  }
  mkdir((c.dir + "/hf").c_str(), 0755);
  WriteHf(c);
  return c;
}

ConvertOptions Opts(const Checkpoint& c, const std::string& from, const std::string& to,
                    const std::string& in, const std::string& out) {
  ConvertOptions o;
  o.model_config = c.config;
  o.from = *ParseLayoutSpec(from);
  o.to = *ParseLayoutSpec(to);
  o.in_dir = c.dir + "/" + in;
  o.out_dir = c.dir + "/" + out;
  o.quiet = true;
  o.bucket_bytes = 4096;  // many buckets even for a tiny model
  return o;
}

void Run(const ConvertOptions& o) {
  auto r = Convert(o);
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  CHECK(r->peak_rss_kib > 0);
}

std::string Error(const ConvertOptions& o) {
  auto r = Convert(o);
  REQUIRE_FALSE(r.ok());
  return std::string(r.status().message());
}

// All tensors of an HF output directory, by name.
std::map<std::string, std::pair<DType, std::vector<uint8_t>>> ReadHf(const std::string& dir) {
  std::map<std::string, std::pair<DType, std::vector<uint8_t>>> out;
  DIR* d = opendir(dir.c_str());
  REQUIRE(d != nullptr);
  std::vector<std::string> names;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.size() > 12 && n.substr(n.size() - 12) == ".safetensors") names.push_back(n);
  }
  closedir(d);
  for (const std::string& name : names) {
    auto f = SafetensorsFile::Open(dir + "/" + name);
    REQUIRE(f.ok());
    for (const TensorInfo& t : (*f)->tensors()) {
      const uint8_t* p = static_cast<const uint8_t*>((*f)->Data(t));
      out[t.name] = {t.dtype, std::vector<uint8_t>(p, p + (t.end - t.begin))};
    }
  }
  return out;
}

void CheckRoundTrip(const Checkpoint& c, const std::string& back) {
  auto got = ReadHf(c.dir + "/" + back);
  REQUIRE(got.size() == c.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const auto& [dt, bytes] = got.at(c.tensors[i].name);
    REQUIRE(dt == DType::kF32);
    INFO(c.tensors[i].name);
    REQUIRE(std::memcmp(bytes.data(), c.values[i].data(), bytes.size()) == 0);
  }
}

TEST_CASE("HF -> megatron(tp=2,pp=2) -> vllm(tp=4) -> HF is bit-identical in fp32") {
  Checkpoint c = MakeHf(kDense, /*exact=*/false, 1);
  Run(Opts(c, "hf", "megatron:tp=2,pp=2", "hf", "meg"));
  Run(Opts(c, "megatron:tp=2,pp=2", "vllm:tp=4", "meg", "vllm"));
  ConvertOptions last = Opts(c, "vllm:tp=4", "hf", "vllm", "back");
  last.max_shard_bytes = 20000;  // forces model-0000K-of-0000N + index
  Run(last);
  CHECK(access((c.dir + "/back/model.safetensors.index.json").c_str(), F_OK) == 0);
  CHECK(access((c.dir + "/back/config.json").c_str(), F_OK) == 0);
  CHECK(access((c.dir + "/meg/wsync_layout.json").c_str(), F_OK) == 0);
  CheckRoundTrip(c, "back");
}

TEST_CASE("MoE: HF -> megatron(tp=2,ep=2,etp=1) -> vllm(tp=2,ep=2) -> fsdp(dp=3, fused) -> megatron -> HF") {
  Checkpoint c = MakeHf(kMoe, false, 2);
  // Two processes: process r is dense TP rank r and expert EP rank r.
  Run(Opts(c, "hf", "megatron:tp=2,ep=2,etp=1", "hf", "meg"));
  {
    auto p1 = SafetensorsFile::Open(c.dir + "/meg/rank-00001.safetensors");
    REQUIRE(p1.ok());
    CHECK((*p1)->Find("decoder.layers.0.mlp.experts.linear_fc1.weight3") != nullptr);  // experts 2, 3 of 4
    CHECK((*p1)->Find("decoder.layers.0.mlp.experts.linear_fc1.weight1") == nullptr);
    std::ifstream in(c.dir + "/meg/wsync_layout.json");
    const std::string m((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_THAT(m, Catch::Contains(R"("world_size": 2)"));
  }
  Run(Opts(c, "megatron:tp=2,ep=2,etp=1", "vllm:tp=2,ep=2,expert_placement=round_robin", "meg", "vllm"));
  Run(Opts(c, "vllm:tp=2,ep=2,expert_placement=round_robin", "fsdp:dp=3,experts=fused", "vllm", "fsdp"));
  Run(Opts(c, "fsdp:dp=3,experts=fused", "megatron:tp=2,dp=2,ep=2,etp=2,spec=local", "fsdp", "meg4"));
  Run(Opts(c, "megatron:tp=2,dp=2,ep=2,etp=2,spec=local", "hf", "meg4", "back"));
  CheckRoundTrip(c, "back");
}

// DeepSeek-V3-shaped: MLA with q LoRA, one dense first layer, routed experts
// with a shared expert, the fp32 router bias, two expert groups.
constexpr char kDeepSeek[] = R"({"model_type": "deepseek_v3", "hidden_size": 16, "intermediate_size": 16,
  "moe_intermediate_size": 8, "num_attention_heads": 4, "num_key_value_heads": 4, "num_hidden_layers": 3,
  "q_lora_rank": 8, "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 2, "v_head_dim": 4,
  "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1, "moe_layer_freq": 1,
  "n_group": 2, "topk_method": "noaux_tc", "vocab_size": 50, "tie_word_embeddings": false})";

TEST_CASE("DeepSeek-V3 shape: HF -> every layout -> HF is bit-identical in fp32") {
  Checkpoint c = MakeHf(kDeepSeek, false, 3);
  Run(Opts(c, "hf", "megatron:tp=2,ep=2,etp=1", "hf", "meg"));
  {
    auto p0 = SafetensorsFile::Open(c.dir + "/meg/rank-00000.safetensors");
    REQUIRE(p0.ok());
    // TE spec: the down projections whole on every TP rank, the norms fused.
    const TensorInfo* down = (*p0)->Find("decoder.layers.0.self_attention.linear_q_down_proj.weight");
    REQUIRE(down != nullptr);
    CHECK(down->shape == layout::Shape::Of({8, 16}));
    CHECK((*p0)->Find("decoder.layers.0.self_attention.linear_kv_up_proj.layer_norm_weight") != nullptr);
    CHECK((*p0)->Find("decoder.layers.1.mlp.router.expert_bias") != nullptr);
    CHECK((*p0)->Find("decoder.layers.0.mlp.router.weight") == nullptr);  // the dense first layer
  }
  Run(Opts(c, "megatron:tp=2,ep=2,etp=1", "vllm:tp=2,ep=2,expert_placement=round_robin", "meg", "vllm"));
  Run(Opts(c, "vllm:tp=2,ep=2,expert_placement=round_robin", "fsdp:dp=3,experts=fused", "vllm", "fsdp"));
  Run(Opts(c, "fsdp:dp=3,experts=fused", "megatron:tp=2,spec=local", "fsdp", "meg2"));
  {
    auto p1 = SafetensorsFile::Open(c.dir + "/meg2/rank-00001.safetensors");
    REQUIRE(p1.ok());
    // Local spec: the down projections split by rows over TP.
    const TensorInfo* down = (*p1)->Find("decoder.layers.0.self_attention.linear_kv_down_proj.weight");
    REQUIRE(down != nullptr);
    CHECK(down->shape == layout::Shape::Of({5, 16}));
    CHECK((*p1)->Find("decoder.layers.0.self_attention.kv_layernorm.weight") != nullptr);
  }
  Run(Opts(c, "megatron:tp=2,spec=local", "vllm:tp=4,qkv_a=separate", "meg2", "vllm4"));
  Run(Opts(c, "vllm:tp=4,qkv_a=separate", "hf", "vllm4", "back"));
  CheckRoundTrip(c, "back");
}

TEST_CASE("Transformers v5 checkpoints: fused experts read and written, the form kept by default") {
  Checkpoint c = MakeHf(kMoe, false, 3);
  Run(Opts(c, "hf", "hf:experts=fused", "hf", "fused"));
  auto f = SafetensorsFile::Open(c.dir + "/fused/model.safetensors");
  REQUIRE(f.ok());
  const TensorInfo* gu = (*f)->Find("model.layers.0.mlp.experts.gate_up_proj");
  REQUIRE(gu != nullptr);
  CHECK(gu->shape.ToString() == "[4, 16, 8]");
  CHECK((*f)->Find("model.layers.0.mlp.experts.0.gate_proj.weight") == nullptr);
  // The fused checkpoint is read as fused without being told, and a
  // conversion from it to hf keeps that form.
  Run(Opts(c, "hf", "vllm:tp=2", "fused", "vllm"));
  Run(Opts(c, "hf", "hf", "fused", "fused2"));
  auto f2 = SafetensorsFile::Open(c.dir + "/fused2/model.safetensors");
  REQUIRE(f2.ok());
  CHECK((*f2)->Find("model.layers.1.mlp.experts.down_proj") != nullptr);
  Run(Opts(c, "vllm:tp=2", "hf:experts=per_expert", "vllm", "back"));
  CheckRoundTrip(c, "back");
}

TEST_CASE("a dtype change rounds exactly once") {
  Checkpoint c = MakeHf(kDense, false, 3);
  ConvertOptions first = Opts(c, "hf", "megatron:tp=2", "hf", "meg");
  first.dtype = "bf16";
  Run(first);
  Run(Opts(c, "megatron:tp=2", "vllm:tp=4", "meg", "vllm"));
  Run(Opts(c, "vllm:tp=4", "hf", "vllm", "back"));
  auto got = ReadHf(c.dir + "/back");
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const auto& [dt, bytes] = got.at(c.tensors[i].name);
    REQUIRE(dt == DType::kBF16);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(bytes.data());
    for (size_t k = 0; k < c.values[i].size(); ++k) {
      REQUIRE(h[k] == kernels::F32ToBf16(c.values[i][k]));
    }
  }
}

// Rewrites `path` keeping its tensors except `drop`, plus `extra` if set.
void Rewrite(const std::string& path, const std::string& drop, bool extra, bool reshape = false) {
  auto f = SafetensorsFile::Open(path);
  REQUIRE(f.ok());
  std::vector<TensorInfo> keep;
  std::vector<std::vector<uint8_t>> data;
  for (const TensorInfo& t : (*f)->tensors()) {
    if (t.name == drop) continue;
    TensorInfo k = t;
    const uint8_t* p = static_cast<const uint8_t*>((*f)->Data(t));
    std::vector<uint8_t> bytes(p, p + (t.end - t.begin));
    if (reshape && t.name == "decoder.final_layernorm.weight") {
      k.shape = layout::Shape::Of({k.shape.d[0] / 2});
      bytes.resize(bytes.size() / 2);
    }
    keep.push_back(k);
    data.push_back(std::move(bytes));
  }
  if (extra) {
    keep.push_back({"decoder.layers.0.self_attention.extra_bias", DType::kF32, layout::Shape::Of({4}), 0, 0});
    data.emplace_back(16, 0);
  }
  f->reset();
  auto w = SafetensorsWriter::Create(path, keep, {});
  REQUIRE(w.ok());
  for (size_t i = 0; i < keep.size(); ++i) REQUIRE((*w)->Write(i, 0, data[i].data(), data[i].size()).ok());
  REQUIRE((*w)->Commit().ok());
}

TEST_CASE("bad inputs are errors naming the file and tensor") {
  Checkpoint c = MakeHf(kDense, true, 4);
  Run(Opts(c, "hf", "megatron:tp=2,pp=2", "hf", "meg"));
  const std::string rank1 = c.dir + "/meg/rank-00003.safetensors";
  ConvertOptions o = Opts(c, "megatron:tp=2,pp=2", "hf", "meg", "out");

  SECTION("missing tensor") {
    Rewrite(rank1, "decoder.layers.3.mlp.linear_fc2.weight", false);
    CHECK(Error(o) == rank1 + ": missing tensor 'decoder.layers.3.mlp.linear_fc2.weight' (expected "
                              "by megatron rank 3/4 (tp 1/2, pp 1/2))");
  }
  SECTION("extra tensor") {
    Rewrite(rank1, "", true);
    CHECK(Error(o) == rank1 + ": extra tensor 'decoder.layers.0.self_attention.extra_bias' is not "
                              "part of megatron rank 3/4 (tp 1/2, pp 1/2)");
  }
  SECTION("shape mismatch with the config") {
    Rewrite(rank1, "", false, /*reshape=*/true);
    CHECK(Error(o) == rank1 + ": tensor 'decoder.final_layernorm.weight' has shape [8] but megatron "
                              "rank 3/4 (tp 1/2, pp 1/2) of the model in " + c.config +
                              " expects [16]");
  }
  SECTION("rank file missing from the sharded set") {
    unlink(rank1.c_str());
    CHECK(Error(o) == "rank file missing from the sharded set: " + rank1 +
                          " (megatron rank 3/4 (tp 1/2, pp 1/2))");
  }
  SECTION("truncated header") {
    REQUIRE(truncate(rank1.c_str(), 20) == 0);
    CHECK_THAT(Error(o), Catch::StartsWith(rank1 + ": truncated: header length"));
  }
  SECTION("layout that disagrees with the manifest") {
    ConvertOptions wrong = Opts(c, "megatron:tp=2,pp=1", "hf", "meg", "out");
    CHECK_THAT(Error(wrong), Catch::Contains("wsync_layout.json describes megatron") &&
                                 Catch::Contains("but --from says megatron:tp=2"));
  }
  SECTION("HF: missing tensor") {
    ConvertOptions h = Opts(c, "hf", "vllm:tp=2", "hf", "v");
    Rewrite(c.dir + "/hf/model.safetensors", "model.norm.weight", false);
    CHECK(Error(h) == "missing tensor 'model.norm.weight': not in any of the 1 safetensors file(s) in " +
                          c.dir + "/hf");
  }
  // No partial output is ever left under a final name.
  CHECK(access((c.dir + "/out/model.safetensors").c_str(), F_OK) != 0);
}

// The names in a directory (no "." or "..").
std::vector<std::string> Listing(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") out.push_back(n);
  }
  closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

TEST_CASE("every field of a bad wsync_layout.json is a clear error, never an abort") {
  Checkpoint c = MakeHf(kDense, true, 4);
  Run(Opts(c, "hf", "megatron:tp=2,pp=2", "hf", "meg"));
  const std::string manifest = c.dir + "/meg/wsync_layout.json";
  std::ifstream in(manifest);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ConvertOptions o = Opts(c, "megatron:tp=2,pp=2", "hf", "meg", "out");
  auto with = [&](const std::string& from, const std::string& to) {
    std::string text = good;
    const size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    std::ofstream(manifest, std::ios::trunc) << text;
    return Error(o);
  };
  using Catch::Contains;
  CHECK_THAT(with(R"("recipe": "megatron")", R"("recipe": null)"), Contains("'recipe' must be a string"));
  CHECK_THAT(with(R"("tp": 2)", R"("tp": "2")"), Contains("'sizes.tp' must be an integer"));
  CHECK_THAT(with(R"("sizes": {)", R"("sizez": {)"), Contains("'sizes' must be an object"));
  CHECK_THAT(with(R"("format": "wsync.sharded-safetensors")", R"("format": 7)"), Contains("'format' must be a string"));
  CHECK_THAT(with(R"("format": "wsync.sharded-safetensors")", R"("format": "other")"), Contains("not 'wsync.sharded"));
  CHECK_THAT(with(R"("version": 2)", R"("version": 3)"), Contains("'version' must be the integer 2"));
  CHECK_THAT(with(R"("version": 2)", R"("version": 1)"), Contains("version 1 manifests"));
  CHECK_THAT(with(R"("rank": 1,)", R"("rank": 0,)"), Contains("'ranks[1].rank' repeats process 0"));
  CHECK_THAT(with(R"("ranks": [)", R"("ranks": 5, "x": [)"), Contains("'ranks' must be an array"));
  CHECK_THAT(with(R"("file": "rank-00000.safetensors")", R"("file": "../../etc/passwd")"),
             Contains("must name a file in the checkpoint's directory"));
  CHECK_THAT(with(R"("file": "rank-00000.safetensors")", R"("file": null)"),
             Contains("'ranks[0].file' must be a string"));
  CHECK_THAT(with(R"("dtype": "fp32")", R"("dtype": "int4")"), Contains("'dtype'"));
  CHECK_THAT(with(R"("dtype": "fp32")", R"("dtype": [])"), Contains("'dtype' must be a string"));
  CHECK_THAT(with(R"("tp": 1,)", R"("tp": 7,)"), Contains("].tp' must be an integer in [0, 1]"));
  CHECK_THAT(with("{", "["), Contains("not a JSON object"));
  // Through wsyncctl: exit 1 and one line, not SIGABRT.
  with(R"("recipe": "megatron")", R"("recipe": null)");
  auto r = testing::Run({testing::Runfile("client/cli/wsyncctl"), "convert", "--model-config", c.config, "--from",
                         "megatron:tp=2,pp=2", "--to", "hf", "--in", c.dir + "/meg", "--out", c.dir + "/out"});
  CHECK(r.exit_code == 1);
  CHECK_THAT(r.err, Contains("'recipe' must be a string"));
}

TEST_CASE("outputs follow no planted symlink, never land in the input, and inputs must be regular files") {
  Checkpoint c = MakeHf(kDense, true, 4);
  const std::string out = c.dir + "/out";
  REQUIRE(mkdir(out.c_str(), 0777) == 0);
  const std::string victim = c.dir + "/victim";
  std::ofstream(victim) << "precious";
  // Every name a careless writer might use, planted as symlinks to the victim.
  for (const char* n : {"model.safetensors", "model.safetensors.tmp", "config.json", "config.json.tmp"}) {
    REQUIRE(symlink(victim.c_str(), (out + "/" + n).c_str()) == 0);
  }
  Run(Opts(c, "hf", "hf", "hf", "out"));
  std::ifstream v(victim);
  const std::string kept((std::istreambuf_iterator<char>(v)), std::istreambuf_iterator<char>());
  CHECK(kept == "precious");
  struct stat st;
  REQUIRE(lstat((out + "/model.safetensors").c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));

  // --out naming the input directory another way.
  CHECK_THAT(Error(Opts(c, "hf", "vllm:tp=2", "hf", "hf/")), Catch::Contains("is the input directory"));
  REQUIRE(symlink((c.dir + "/hf").c_str(), (c.dir + "/alias").c_str()) == 0);
  CHECK_THAT(Error(Opts(c, "hf", "vllm:tp=2", "hf", "alias")), Catch::Contains("is the input directory"));

  // A FIFO where a checkpoint file belongs is refused at once, not waited on.
  const std::string fifo_dir = c.dir + "/fifo";
  REQUIRE(mkdir(fifo_dir.c_str(), 0755) == 0);
  REQUIRE(mkfifo((fifo_dir + "/model.safetensors").c_str(), 0644) == 0);
  CHECK_THAT(Error(Opts(c, "hf", "vllm:tp=2", "fifo", "v")), Catch::Contains("is not a regular file"));
  ConvertOptions fifo_config = Opts(c, "hf", "vllm:tp=2", "hf", "v");
  fifo_config.model_config = fifo_dir + "/model.safetensors";
  CHECK_THAT(Error(fifo_config), Catch::Contains("is not a regular file"));
}

TEST_CASE("a conversion that fails midway leaves no file that looks complete") {
  Checkpoint c = MakeHf(kDense, true, 4);
  ConvertOptions o = Opts(c, "hf", "megatron:tp=2,pp=2", "hf", "meg");
  REQUIRE(mkdir(o.out_dir.c_str(), 0755) == 0);
  SECTION("the disk is full from the start (a file-size limit stands in for ENOSPC)") {
    signal(SIGXFSZ, SIG_IGN);
    rlimit old{};
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
    rlimit small = old;
    small.rlim_cur = 4096;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
    auto r = Convert(o);
    REQUIRE(setrlimit(RLIMIT_FSIZE, &old) == 0);
    signal(SIGXFSZ, SIG_DFL);
    INFO(r.status().ToString());
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kResourceExhausted);
    CHECK(Listing(o.out_dir).empty());  // not even a temporary
  }
  SECTION("the last rank file cannot be put in place: the ones before it are taken back") {
    const std::string last = o.out_dir + "/rank-00003.safetensors";
    REQUIRE(mkdir(last.c_str(), 0755) == 0);  // rename onto a directory fails
    auto r = Convert(o);
    INFO(r.status().ToString());
    REQUIRE_FALSE(r.ok());
    CHECK(Listing(o.out_dir) == std::vector<std::string>{"rank-00003.safetensors"});
  }
}

TEST_CASE("HF shape mismatch and extra tensors") {
  Checkpoint c = MakeHf(kDense, true, 5);
  ConvertOptions h = Opts(c, "hf", "vllm:tp=2", "hf", "v");
  std::ofstream(c.config, std::ios::trunc) << R"({"model_type": "qwen2", "hidden_size": 16,
    "intermediate_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 4, "vocab_size": 100, "tie_word_embeddings": false})";
  CHECK(Error(h) == c.dir + "/hf/model.safetensors: tensor 'model.layers.0.mlp.gate_proj.weight' "
                            "has shape [24, 16] but " + c.config + " gives [32, 16]");
  std::ofstream(c.config, std::ios::trunc) << R"({"model_type": "qwen2", "hidden_size": 16,
    "intermediate_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2,
    "num_hidden_layers": 2, "vocab_size": 100, "tie_word_embeddings": false})";
  CHECK(Error(h) == c.dir + "/hf/model.safetensors: extra tensor "
                            "'model.layers.2.input_layernorm.weight' is not part of the qwen2 "
                            "model described by " + c.config);
}

TEST_CASE("a LoRA merge during conversion matches the kernels' merge reference") {
  Checkpoint c = MakeHf(kDense, false, 6);
  // PEFT adapter on q_proj and v_proj of every layer: r = 4, alpha = 8.
  const int64_t r = 4;
  const std::string ad = c.dir + "/adapter";
  mkdir(ad.c_str(), 0755);
  std::ofstream(ad + "/adapter_config.json")
      << R"({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "peft_type": "LORA"})";
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 0.5f);
  std::vector<TensorInfo> infos;
  std::vector<std::vector<float>> ab;
  std::map<std::string, std::pair<size_t, size_t>> by_base;  // base -> (A idx, B idx)
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const auto& t = c.tensors[i];
    if (t.name.find("q_proj.weight") == std::string::npos &&
        t.name.find("v_proj.weight") == std::string::npos) {
      continue;
    }
    const std::string stem = "base_model.model." + t.name.substr(0, t.name.size() - 7);
    infos.push_back({stem + ".lora_A.weight", DType::kF32, layout::Shape::Of({r, t.shape.d[1]}), 0, 0});
    infos.push_back({stem + ".lora_B.weight", DType::kF32, layout::Shape::Of({t.shape.d[0], r}), 0, 0});
    std::vector<float> A(r * t.shape.d[1]), B(t.shape.d[0] * r);
    for (float& x : A) x = nd(rng);
    for (float& x : B) x = nd(rng);
    by_base[t.name] = {ab.size(), ab.size() + 1};
    ab.push_back(A);
    ab.push_back(B);
  }
  auto w = SafetensorsWriter::Create(ad + "/adapter_model.safetensors", infos, {});
  REQUIRE(w.ok());
  for (size_t i = 0; i < ab.size(); ++i) REQUIRE((*w)->Write(i, 0, ab[i].data(), ab[i].size() * 4).ok());
  REQUIRE((*w)->Commit().ok());

  // Reference: merge whole canonical tensors with the kernel, write an HF
  // bf16 checkpoint of the result.
  std::vector<TensorInfo> ref_infos;
  std::vector<std::vector<uint16_t>> ref;
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const auto& t = c.tensors[i];
    std::vector<uint16_t> out(c.values[i].size());
    auto it = by_base.find(t.name);
    if (it == by_base.end()) {
      for (size_t k = 0; k < out.size(); ++k) out[k] = kernels::F32ToBf16(c.values[i][k]);
    } else {
      kernels::LoraMergeOp op;
      op.w = c.values[i].data();
      op.w_row_stride = t.shape.d[1];
      op.a = ab[it->second.first].data();
      op.a_k_stride = t.shape.d[1];
      op.b = ab[it->second.second].data();
      op.b_row_stride = r;
      op.dst = out.data();
      op.dst_dtype = DType::kBF16;
      op.dst_row_stride = t.shape.d[1];
      op.rows = t.shape.d[0];
      op.cols = t.shape.d[1];
      op.rank = r;
      op.scale = 8.0f / 4.0f;
      kernels::LoraMergeCpu(&op, 1, 1);
    }
    ref_infos.push_back({t.name, DType::kBF16, t.shape, 0, 0});
    ref.push_back(std::move(out));
  }
  mkdir((c.dir + "/ref_hf").c_str(), 0755);
  auto rw = SafetensorsWriter::Create(c.dir + "/ref_hf/model.safetensors", ref_infos, {});
  REQUIRE(rw.ok());
  for (size_t i = 0; i < ref.size(); ++i) REQUIRE((*rw)->Write(i, 0, ref[i].data(), ref[i].size() * 2).ok());
  REQUIRE((*rw)->Commit().ok());

  ConvertOptions merged = Opts(c, "hf", "vllm:tp=2", "hf", "merged");
  merged.dtype = "bf16";
  merged.lora_dir = ad;
  auto report = Convert(merged);
  REQUIRE(report.ok());
  CHECK(report->lora_merged == 8);
  Run(Opts(c, "hf", "vllm:tp=2", "ref_hf", "want"));
  for (const char* rank : {"rank-00000.safetensors", "rank-00001.safetensors"}) {
    auto got = SafetensorsFile::Open(c.dir + "/merged/" + rank);
    auto want = SafetensorsFile::Open(c.dir + "/want/" + rank);
    REQUIRE(got.ok());
    REQUIRE(want.ok());
    REQUIRE((*got)->tensors().size() == (*want)->tensors().size());
    for (const TensorInfo& t : (*want)->tensors()) {
      const TensorInfo* g = (*got)->Find(t.name);
      REQUIRE(g != nullptr);
      INFO(rank << " " << t.name);
      REQUIRE(std::memcmp((*got)->Data(*g), (*want)->Data(t), t.end - t.begin) == 0);
    }
  }

  SECTION("adapters that do not fit the model are named") {
    std::ofstream(ad + "/adapter_config.json", std::ios::trunc)
        << R"({"r": 4, "lora_alpha": 8, "fan_in_fan_out": true})";
    CHECK(Error(merged) == ad + "/adapter_config.json: fan_in_fan_out adapters (Conv1D models) are "
                                "not supported");
  }
}

// Block FP8, worked out plainly here: e4m3fn values decoded from their
// bits, the nearest one chosen by search (ties to the even code), 448 and
// beyond saturated; one scale per 128 x 128 block, amax / 448 in fp32.
double E4m3Value(int code) {
  const int e = (code >> 3) & 15, m = code & 7;
  const double v = e == 0 ? m / 8.0 * std::ldexp(1.0, -6) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
  return code & 0x80 ? -v : v;
}

uint8_t E4m3Nearest(float x) {
  const uint8_t sign = std::signbit(x) ? 0x80 : 0;
  const double a = std::fabs(static_cast<double>(x));
  if (a >= 448) return sign | 0x7e;
  int best = 0;
  for (int code = 1; code <= 0x7e; ++code) {
    const double d = std::fabs(E4m3Value(code) - a), bd = std::fabs(E4m3Value(best) - a);
    if (d < bd || (d == bd && (code & 1) == 0)) best = code;
  }
  return sign | static_cast<uint8_t>(best);
}

// The quantized bytes and scales of a rows x cols fp32 matrix.
void QuantizeReference(const float* w, int64_t rows, int64_t cols, std::vector<uint8_t>* q, std::vector<float>* scale) {
  const int64_t br = (rows + 127) / 128, bc = (cols + 127) / 128;
  for (int64_t bi = 0; bi < br; ++bi) {
    for (int64_t bj = 0; bj < bc; ++bj) {
      float amax = 0;
      for (int64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r) {
        for (int64_t c = bj * 128; c < std::min(cols, bj * 128 + 128); ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      }
      const float s = amax == 0 ? 1.0f : amax / 448.0f;
      scale->push_back(s);
      for (int64_t r = bi * 128; r < std::min(rows, bi * 128 + 128); ++r) {
        for (int64_t c = bj * 128; c < std::min(cols, bj * 128 + 128); ++c) (*q)[r * cols + c] = E4m3Nearest(w[r * cols + c] / s);
      }
    }
  }
  // scales were pushed block row by block row: row-major already
}

// Large enough for partial and multiple blocks: hidden 160 (128 + 32),
// intermediate 272 (128 + 128 + 16).
constexpr char kFp8Dense[] = R"({"model_type": "qwen2", "hidden_size": 160, "intermediate_size": 272,
  "num_attention_heads": 5, "num_key_value_heads": 1, "num_hidden_layers": 2,
  "vocab_size": 40, "tie_word_embeddings": false})";

bool QuantizedName(const std::string& n) {  // as Qwen3-FP8 checkpoints
  return n.rfind("model.layers.", 0) == 0 && n.find("_proj.weight") != std::string::npos;
}

TEST_CASE("--dtype fp8 writes a block-FP8 checkpoint equal to a plain reference, and bf16 reads it back") {
  Checkpoint c = MakeHf(kFp8Dense, false, 21);
  size_t qi = 0;
  while (c.tensors[qi].name != "model.layers.0.self_attn.q_proj.weight") ++qi;
  c.values[qi][5] = 3000.0f;     // far beyond 448: sets its block's scale
  for (int r = 128; r < 160; ++r) {
    for (int k = 128; k < 160; ++k) c.values[qi][r * 160 + k] = 0;  // a block of zeros: scale 1
  }
  WriteHf(c);
  ConvertOptions q = Opts(c, "hf", "hf", "hf", "fp8");
  q.dtype = "fp8";
  Run(q);
  auto got = ReadHf(c.dir + "/fp8");
  int quantized = 0;
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const layout::TensorSpec& t = c.tensors[i];
    INFO(t.name);
    const auto& [dt, bytes] = got.at(t.name);
    if (!QuantizedName(t.name)) {
      REQUIRE(dt == DType::kBF16);
      const uint16_t* h = reinterpret_cast<const uint16_t*>(bytes.data());
      for (size_t k = 0; k < c.values[i].size(); ++k) REQUIRE(h[k] == kernels::F32ToBf16(c.values[i][k]));
      CHECK(got.count(t.name + "_scale_inv") == 0);
      continue;
    }
    ++quantized;
    REQUIRE(dt == DType::kF8E4M3);
    const int64_t rows = t.shape.d[0], cols = t.shape.d[1];
    std::vector<uint8_t> want(rows * cols);
    std::vector<float> scales;
    QuantizeReference(c.values[i].data(), rows, cols, &want, &scales);
    CHECK(bytes == want);
    const std::string sname = t.name.substr(0, t.name.size() - 7) + ".weight_scale_inv";
    REQUIRE(got.count(sname) == 1);
    const auto& [sdt, sbytes] = got.at(sname);
    CHECK(sdt == DType::kF32);
    REQUIRE(sbytes.size() == scales.size() * 4);
    CHECK(std::memcmp(sbytes.data(), scales.data(), sbytes.size()) == 0);
  }
  CHECK(quantized == 2 * 7);  // q k v o gate up down, per layer
  std::ifstream cfg(c.dir + "/fp8/config.json");
  std::string text((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Catch::Contains(R"("quant_method": "fp8")"));
  CHECK_THAT(text, Catch::Contains(R"("weight_block_size")"));
  // The 2-d weights left in bf16, by module, for vLLM to keep unquantized.
  CHECK_THAT(text, Catch::Contains(R"("modules_to_not_convert": [
      "model.embed_tokens",
      "lm_head"
    ])"));

  // Back to bf16: each weight is E4m3Value(q) * scale of its block, rounded once.
  ConvertOptions back = Opts(c, "hf", "hf", "fp8", "bf16");
  back.dtype = "bf16";
  Run(back);
  auto deq = ReadHf(c.dir + "/bf16");
  CHECK(deq.size() == c.tensors.size());
  for (size_t i = 0; i < c.tensors.size(); ++i) {
    const layout::TensorSpec& t = c.tensors[i];
    INFO(t.name);
    const auto& [dt, bytes] = deq.at(t.name);
    REQUIRE(dt == DType::kBF16);
    const uint16_t* h = reinterpret_cast<const uint16_t*>(bytes.data());
    if (!QuantizedName(t.name)) {
      CHECK(bytes == got.at(t.name).second);
      continue;
    }
    const auto& qb = got.at(t.name).second;
    const auto& sb = got.at(t.name.substr(0, t.name.size() - 7) + ".weight_scale_inv").second;
    const float* sc = reinterpret_cast<const float*>(sb.data());
    const int64_t cols = t.shape.d[1], bc = (cols + 127) / 128;
    for (int64_t k = 0; k < t.shape.NumElements(); ++k) {
      const float v = static_cast<float>(E4m3Value(qb[k])) * sc[(k / cols / 128) * bc + (k % cols) / 128];
      REQUIRE(h[k] == kernels::F32ToBf16(v));
    }
  }
  std::ifstream cfg2(c.dir + "/bf16/config.json");
  std::string text2((std::istreambuf_iterator<char>(cfg2)), std::istreambuf_iterator<char>());
  CHECK(text2.find("quantization_config") == std::string::npos);

  // Without --dtype, a block-FP8 input asks for one.
  CHECK_THAT(Error(Opts(c, "hf", "hf", "fp8", "again")), Catch::Contains("choose the output with --dtype"));
}

TEST_CASE("--dtype fp8 refusals: sharded layouts, fused experts, non-finite weights") {
  Checkpoint c = MakeHf(kFp8Dense, false, 22);
  ConvertOptions v = Opts(c, "hf", "vllm:tp=2", "hf", "v");
  v.dtype = "fp8";
  CHECK_THAT(Error(v), Catch::Contains("(--to hf)"));
  Checkpoint m = MakeHf(kMoe, true, 23);
  ConvertOptions f = Opts(m, "hf", "hf:experts=fused", "hf", "f");
  f.dtype = "fp8";
  CHECK_THAT(Error(f), Catch::Contains("experts=per_expert"));

  size_t t = 0;
  while (c.tensors[t].name != "model.layers.1.mlp.down_proj.weight") ++t;
  c.values[t][3 * 272 + 200] = std::nanf("");
  WriteHf(c);
  ConvertOptions q = Opts(c, "hf", "hf", "hf", "q");
  q.dtype = "fp8";
  const std::string err = Error(q);
  CHECK_THAT(err, Catch::Contains("tensor 'model.layers.1.mlp.down_proj.weight' cannot be quantized to FP8"));
  CHECK_THAT(err, Catch::Contains("nan"));
}

TEST_CASE("MoE experts are quantized one matrix each; the router and shared gate stay bf16") {
  Checkpoint m = MakeHf(kMoe, false, 24);
  ConvertOptions q = Opts(m, "hf", "hf", "hf", "fp8");
  q.dtype = "fp8";
  Run(q);
  auto got = ReadHf(m.dir + "/fp8");
  CHECK(got.at("model.layers.0.mlp.experts.3.down_proj.weight").first == DType::kF8E4M3);
  CHECK(got.count("model.layers.0.mlp.experts.3.down_proj.weight_scale_inv") == 1);
  CHECK(got.at("model.layers.0.mlp.shared_expert.up_proj.weight").first == DType::kF8E4M3);
  CHECK(got.at("model.layers.0.mlp.gate.weight").first == DType::kBF16);
  CHECK(got.at("model.layers.0.mlp.shared_expert_gate.weight").first == DType::kBF16);
  CHECK(got.at("model.embed_tokens.weight").first == DType::kBF16);
  // vLLM builds some routers as FP8-capable linears: the config lists them.
  std::ifstream cfg(m.dir + "/fp8/config.json");
  const std::string text((std::istreambuf_iterator<char>(cfg)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Catch::Contains(R"("model.layers.0.mlp.gate",)") &&
                       Catch::Contains(R"("model.layers.0.mlp.shared_expert_gate",)"));
  CHECK_THAT(text, !Catch::Contains(R"("model.layers.0.mlp.experts)"));
}

TEST_CASE("layout specs parse, and bad ones are named") {
  auto l = ParseLayoutSpec("megatron:tp=2,pp=4,make_vocab_size_divisible_by=64");
  REQUIRE(l.ok());
  CHECK(l->sizes.tp == 2);
  CHECK(l->sizes.pp == 4);
  CHECK(l->options.at("make_vocab_size_divisible_by") == "64");
  CHECK(l->ToString() == "megatron:tp=2,pp=4,make_vocab_size_divisible_by=64");
  CHECK(ParseLayoutSpec("deepspeed:tp=2").status().message() ==
        "layout 'deepspeed:tp=2': unknown recipe 'deepspeed' (megatron, vllm, hf, fsdp)");
  CHECK(ParseLayoutSpec("vllm:tp=0").status().message() == "layout 'vllm:tp=0': tp must be a positive integer");
  CHECK(ParseLayoutSpec("vllm:tp").status().message() == "layout 'vllm:tp': expected key=value, got 'tp'");
}

}  // namespace
}  // namespace wsync::convert
