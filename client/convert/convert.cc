#include "client/convert/convert.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <tuple>
#include <set>
#include <optional>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/convert/files.h"
#include "client/convert/safetensors.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/lowering.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/planner.h"
#include "kernels/box_copy.h"
#include "kernels/fp8.h"
#include "kernels/lora.h"
#include "daemon/common/status.h"

namespace wsync::convert {
namespace {

using layout::Box;
using layout::DType;
using layout::Endpoint;
using layout::ModelSpec;
using layout::RankCoords;
using layout::ShardSpec;

constexpr char kManifest[] = "wsync_layout.json";

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

absl::Status MakeDirs(const std::string& dir) {
  std::string at;
  for (absl::string_view part : absl::StrSplit(dir, '/')) {
    at += std::string(part) + "/";
    if (part.empty()) continue;
    if (mkdir(at.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::PermissionDeniedError(absl::StrCat("cannot create directory ", at));
    }
  }
  return absl::OkStatus();
}

std::string Join(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}

// Where each shard of an input endpoint lives on disk.
struct InputRank {
  Endpoint endpoint;
  std::vector<const SafetensorsFile*> file;  // per shard
  std::vector<const TensorInfo*> info;       // per shard
  // Per shard: the fp32 weight_scale_inv of a block-FP8 weight (hf input),
  // in `file`; null otherwise.
  std::vector<const TensorInfo*> scale;
};

struct Inputs {
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  std::vector<InputRank> ranks;
};

struct Adapter {
  const SafetensorsFile* file = nullptr;
  const TensorInfo* a = nullptr;  // [r, in]
  const TensorInfo* b = nullptr;  // [out, r]
  float scale = 1.0f;
};

std::string RankLabel(const LayoutSpec& l, const RankCoords& r) {
  return absl::StrCat(l.recipe, " ", r.ToString());
}

// Reads a Hugging Face checkpoint with MoE experts per expert (Transformers
// v4) or fused (v5), as `experts` in --from's options says, else as its
// tensor names say; *fused_out tells which.
absl::Status LoadHfInputs(const ConvertOptions& o, const ModelSpec& model,
                          const layout::ModelConfig& config, Inputs* in, bool* fused_out) {
  std::vector<std::string> names;
  const std::string index = Join(o.in_dir, "model.safetensors.index.json");
  if (Exists(index)) {
    auto text = ReadRegularFile(index);
    if (!text.ok()) return text.status();
    nlohmann::json j = nlohmann::json::parse(*text, nullptr, false);
    if (j.is_discarded() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(index, ": no weight_map object"));
    }
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      if (!it->is_string()) return absl::InvalidArgumentError(absl::StrCat(index, ": bad weight_map entry ", it.key()));
      std::string f = it->get<std::string>();
      if (std::find(names.begin(), names.end(), f) == names.end()) names.push_back(f);
    }
    std::sort(names.begin(), names.end());
  } else if (Exists(Join(o.in_dir, "model.safetensors"))) {
    names.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(absl::StrCat("no model.safetensors or model.safetensors.index.json in ",
                                            o.in_dir));
  }
  std::map<std::string, std::pair<const SafetensorsFile*, const TensorInfo*>> where;
  for (const std::string& n : names) {
    auto f = SafetensorsFile::Open(Join(o.in_dir, n));
    if (!f.ok()) return f.status();
    for (const TensorInfo& t : (*f)->tensors()) {
      auto [it, fresh] = where.emplace(t.name, std::make_pair(f->get(), &t));
      if (!fresh) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' appears in both ",
                                                       it->second.first->path(), " and ",
                                                       (*f)->path()));
      }
    }
    in->files.push_back(std::move(*f));
  }
  layout::RecipeOptions options = o.from.options;
  if (!options.count("experts")) {
    bool fused = false;
    for (const auto& [name, at] : where) fused |= absl::EndsWith(name, ".mlp.experts.gate_up_proj");
    options["experts"] = fused ? "fused" : "per_expert";
  }
  *fused_out = options["experts"] == "fused";
  auto shards = layout::BuildShards(model, config, "hf", options, RankCoords{}, DType::kF32);
  if (!shards.ok()) return shards.status();
  const std::string form =
      config.IsMoe() ? absl::StrCat(" (experts read ", options["experts"], ")") : std::string();
  InputRank rank;
  rank.endpoint.id = "hf";
  std::set<std::string> expected;
  for (ShardSpec& s : *shards) {
    expected.insert(s.name);
    auto it = where.find(s.name);
    if (it == where.end()) {
      return absl::InvalidArgumentError(absl::StrCat("missing tensor '", s.name, "': not in any of the ",
                                                     names.size(), " safetensors file(s) in ", o.in_dir,
                                                     form));
    }
    const TensorInfo* info = it->second.second;
    if (info->shape != s.shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          it->second.first->path(), ": tensor '", s.name, "' has shape ", info->shape.ToString(),
          " but ", o.model_config, " gives ", s.shape.ToString()));
    }
    s.dtype = info->dtype;
    rank.file.push_back(it->second.first);
    rank.info.push_back(info);
    rank.scale.push_back(nullptr);
    // A block-FP8 weight brings its scales (layout/fp8_checkpoint.h).
    auto sc = where.find(layout::Fp8ScaleName(s.name));
    if (sc != where.end()) {
      const TensorInfo* si = sc->second.second;
      if (info->dtype != DType::kF8E4M3 || si->dtype != DType::kF32 || si->shape != layout::Fp8ScaleShape(info->shape) ||
          sc->second.first != it->second.first) {
        return absl::InvalidArgumentError(absl::StrCat(
            sc->second.first->path(), ": '", sc->first, "' is ", kernels::DTypeName(si->dtype), " ",
            si->shape.ToString(), " for '", s.name, "' (", kernels::DTypeName(info->dtype), " ",
            info->shape.ToString(), "); a block-FP8 weight needs fp8_e4m3 with fp32 scales of shape ",
            layout::Fp8ScaleShape(info->shape).ToString(), " in the same file"));
      }
      expected.insert(sc->first);
      rank.scale.back() = si;
    }
  }
  for (const auto& [name, at] : where) {
    if (!expected.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          at.first->path(), ": extra tensor '", name, "' is not part of the ", config.family,
          " model described by ", o.model_config, form));
    }
  }
  rank.endpoint.shards = std::move(*shards);
  in->ranks.push_back(std::move(rank));
  return absl::OkStatus();
}

// A sharded checkpoint's wsync_layout.json, checked field by field: no
// field of the wrong type, no file name outside the directory, every rank of
// the layout exactly once.
struct Manifest {
  std::string recipe;
  layout::LayoutSizes sizes;
  DType dtype = DType::kF32;
  std::vector<RankCoords> ranks;  // by process rank, as the manifest records them
  std::vector<std::string> files;  // by process rank
};

absl::StatusOr<Manifest> ParseManifest(const std::string& path, const std::string& text) {
  auto bad = [&](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", what)); };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  auto str = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = j.find(key);
    if (it == j.end() || !it->is_string()) return bad(absl::StrCat("'", key, "' must be a string"));
    return it->get<std::string>();
  };
  auto format = str("format");
  if (!format.ok()) return format.status();
  if (*format != "wsync.sharded-safetensors") {
    return bad(absl::StrCat("'format' is '", format->substr(0, 64), "', not 'wsync.sharded-safetensors'"));
  }
  auto version = j.find("version");
  if (version != j.end() && version->is_number_integer() && version->get<int64_t>() == 1) {
    return bad("version 1 manifests (written before wsync numbered processes as the engines do) are not "
               "read; convert the checkpoint again from its hf form");
  }
  if (version == j.end() || !version->is_number_integer() || version->get<int64_t>() != 2) {
    return bad("'version' must be the integer 2");
  }
  Manifest m;
  auto recipe = str("recipe");
  if (!recipe.ok()) return recipe.status();
  m.recipe = *recipe;
  auto dtype = str("dtype");
  if (!dtype.ok()) return dtype.status();
  auto dt = layout::ParseDType(*dtype);
  if (!dt.ok()) return bad(absl::StrCat("'dtype': ", dt.status().message()));
  m.dtype = *dt;
  if (auto it = j.find("options"); it != j.end()) {
    if (!it->is_object()) return bad("'options' must be an object of strings");
    for (auto o = it->begin(); o != it->end(); ++o) {
      if (!o->is_string()) return bad(absl::StrCat("'options.", o.key(), "' must be a string"));
    }
  }
  auto sizes = j.find("sizes");
  if (sizes == j.end() || !sizes->is_object()) return bad("'sizes' must be an object");
  auto dim = [&](const nlohmann::json& obj, const char* key, int def, int lo, int hi, const std::string& where,
                 int* out) -> absl::Status {
    auto it = obj.find(key);
    if (it == obj.end()) {
      *out = def;
      return absl::OkStatus();
    }
    if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
      return bad(absl::StrCat("'", where, key, "' must be an integer in [", lo, ", ", hi, "]"));
    }
    *out = static_cast<int>(it->get<int64_t>());
    return absl::OkStatus();
  };
  layout::LayoutSizes& sz = m.sizes;
  for (auto [key, field, lo] : {std::tuple{"tp", &sz.tp, 1}, {"cp", &sz.cp, 1}, {"dp", &sz.dp, 1},
                                {"pp", &sz.pp, 1}, {"ep", &sz.ep, 0}, {"etp", &sz.etp, 0}}) {
    WSYNC_RETURN_IF_ERROR(dim(*sizes, key, lo, lo, 1 << 16, "sizes.", field));
  }
  auto grid = layout::EngineRanks(m.recipe, sz);
  if (!grid.ok()) return bad(absl::StrCat("'sizes': ", grid.status().message()));
  const RankCoords& shape = grid->front();
  auto ranks = j.find("ranks");
  if (ranks == j.end() || !ranks->is_array()) return bad("'ranks' must be an array");
  if (ranks->size() != grid->size()) {
    return bad(absl::StrCat("'ranks' lists ", ranks->size(), " processes but the sizes make ", grid->size()));
  }
  m.ranks.resize(grid->size());
  m.files.resize(grid->size());
  std::set<std::string> names;
  std::set<int> seen;
  for (size_t i = 0; i < ranks->size(); ++i) {
    const nlohmann::json& r = (*ranks)[i];
    const std::string where = absl::StrCat("ranks[", i, "].");
    if (!r.is_object()) return bad(absl::StrCat("'ranks[", i, "]' must be an object"));
    auto f = r.find("file");
    if (f == r.end() || !f->is_string()) return bad(absl::StrCat("'", where, "file' must be a string"));
    const std::string file = f->get<std::string>();
    if (file.empty() || file.size() > 255 || file.find('/') != std::string::npos || file == "." || file == "..") {
      return bad(absl::StrCat("'", where, "file' must name a file in the checkpoint's directory"));
    }
    if (!names.insert(file).second) return bad(absl::StrCat("'", where, "file' ", file, " is listed twice"));
    RankCoords c = shape;
    for (auto [key, field, n] :
         {std::tuple{"rank", &c.rank, shape.world_size}, {"tp", &c.tp, shape.tp_size}, {"cp", &c.cp, shape.cp_size},
          {"dp", &c.dp, shape.dp_size}, {"pp", &c.pp, shape.pp_size}, {"etp", &c.etp, shape.etp_size},
          {"ep", &c.ep, shape.ep_size}, {"edp", &c.edp, shape.edp_size}}) {
      if (r.find(key) == r.end()) return bad(absl::StrCat("'", where, key, "' is missing"));
      WSYNC_RETURN_IF_ERROR(dim(r, key, 0, 0, n - 1, where, field));
    }
    if (!seen.insert(c.rank).second) return bad(absl::StrCat("'", where, "rank' repeats process ", c.rank));
    m.ranks[c.rank] = c;
    m.files[c.rank] = file;
  }
  // Every process has its own place in each grid.
  std::set<std::vector<int>> dense, expert;
  for (const RankCoords& c : m.ranks) {
    if (!dense.insert({c.tp, c.cp, c.dp, c.pp}).second || !expert.insert({c.etp, c.ep, c.edp, c.pp}).second) {
      return bad(absl::StrCat("process ", c.ToString(), " shares its dense or expert coordinates with another"));
    }
  }
  return m;
}

// The manifest of a sharded input, if it has one, checked against --from.
absl::StatusOr<std::optional<Manifest>> ReadManifest(const ConvertOptions& o) {
  const std::string path = Join(o.in_dir, kManifest);
  if (!Exists(path)) return std::optional<Manifest>();
  auto text = ReadRegularFile(path);
  if (!text.ok()) return text.status();
  auto m = ParseManifest(path, *text);
  if (!m.ok()) return m.status();
  auto want = layout::EngineRanks(o.from.recipe, o.from.sizes);
  if (!want.ok()) return want.status();
  if (m->recipe != o.from.recipe || !m->ranks.front().SameSizes(want->front())) {
    const LayoutSpec described{m->recipe, m->sizes, {}};
    return absl::InvalidArgumentError(absl::StrCat(path, " describes ", described.ToString(), " (",
                                                   m->ranks.size(), " processes), but --from says ",
                                                   o.from.ToString()));
  }
  return std::optional<Manifest>(std::move(*m));
}

absl::Status LoadShardedInputs(const ConvertOptions& o, const ModelSpec& model,
                               const layout::ModelConfig& config, Inputs* in) {
  auto manifest = ReadManifest(o);
  if (!manifest.ok()) return manifest.status();
  auto engine_ranks = layout::EngineRanks(o.from.recipe, o.from.sizes);
  if (!engine_ranks.ok()) return engine_ranks.status();
  const std::vector<RankCoords>& ranks = manifest->has_value() ? (*manifest)->ranks : *engine_ranks;
  for (const RankCoords& r : ranks) {
    const std::string path =
        Join(o.in_dir, manifest->has_value() ? (*manifest)->files[r.rank] : RankFileName(r));
    if (!Exists(path)) {
      return absl::NotFoundError(absl::StrCat("rank file missing from the sharded set: ", path, " (",
                                              RankLabel(o.from, r), ")"));
    }
    auto f = SafetensorsFile::Open(path);
    if (!f.ok()) return f.status();
    auto shards = layout::BuildShards(model, config, o.from.recipe, o.from.options, r, DType::kF32);
    if (!shards.ok()) return shards.status();
    InputRank rank;
    rank.endpoint.id = absl::StrCat("in/", r.ToString());
    for (ShardSpec& s : *shards) {
      const TensorInfo* info = (*f)->Find(s.name);
      if (info == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": missing tensor '", s.name,
                                                       "' (expected by ", RankLabel(o.from, r), ")"));
      }
      if (info->shape != s.shape) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor '", s.name, "' has shape ", info->shape.ToString(), " but ",
            RankLabel(o.from, r), " of the model in ", o.model_config, " expects ",
            s.shape.ToString()));
      }
      s.dtype = info->dtype;
      rank.file.push_back(f->get());
      rank.info.push_back(info);
      rank.scale.push_back(nullptr);
    }
    if ((*f)->tensors().size() != shards->size()) {
      for (const TensorInfo& t : (*f)->tensors()) {
        bool known = false;
        for (const ShardSpec& s : *shards) known |= s.name == t.name;
        if (!known) {
          return absl::InvalidArgumentError(absl::StrCat(path, ": extra tensor '", t.name,
                                                         "' is not part of ", RankLabel(o.from, r)));
        }
      }
    }
    rank.endpoint.shards = std::move(*shards);
    in->ranks.push_back(std::move(rank));
    in->files.push_back(std::move(*f));
  }
  return absl::OkStatus();
}

absl::Status LoadAdapters(const ConvertOptions& o, const ModelSpec& model, Inputs* in,
                          std::map<int32_t, Adapter>* out) {
  const std::string cfg_path = Join(o.lora_dir, "adapter_config.json");
  auto text = ReadRegularFile(cfg_path);
  if (!text.ok()) return text.status();
  nlohmann::json cfg = nlohmann::json::parse(*text, nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": not a JSON object"));
  }
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int64_t>() < 1) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": 'r' must be a positive integer"));
  }
  if (!cfg.contains("lora_alpha") || !cfg["lora_alpha"].is_number()) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": 'lora_alpha' must be a number"));
  }
  if (cfg.value("fan_in_fan_out", false)) {
    return absl::InvalidArgumentError(
        absl::StrCat(cfg_path, ": fan_in_fan_out adapters (Conv1D models) are not supported"));
  }
  const int64_t r = cfg["r"].get<int64_t>();
  const double alpha = cfg["lora_alpha"].get<double>();
  const bool rslora = cfg.value("use_rslora", false);
  const float scale = static_cast<float>(rslora ? alpha / std::sqrt(double(r)) : alpha / double(r));

  auto f = SafetensorsFile::Open(Join(o.lora_dir, "adapter_model.safetensors"));
  if (!f.ok()) return f.status();
  std::map<std::string, std::pair<const TensorInfo*, const TensorInfo*>> pairs;
  for (const TensorInfo& t : (*f)->tensors()) {
    std::string base = t.name;
    const std::string prefix = "base_model.model.";
    if (absl::StartsWith(base, prefix)) base = base.substr(prefix.size());
    bool is_a = absl::EndsWith(base, ".lora_A.weight");
    bool is_b = absl::EndsWith(base, ".lora_B.weight");
    if (!is_a && !is_b) {
      return absl::InvalidArgumentError(absl::StrCat((*f)->path(), ": tensor '", t.name,
                                                     "' is neither lora_A nor lora_B"));
    }
    base = base.substr(0, base.size() - std::string(".lora_A.weight").size()) + ".weight";
    (is_a ? pairs[base].first : pairs[base].second) = &t;
  }
  for (const auto& [base, ab] : pairs) {
    const int32_t id = model.Find(base);
    if (id < 0) {
      return absl::InvalidArgumentError(absl::StrCat((*f)->path(), ": adapter for '", base,
                                                     "', which the model does not have"));
    }
    if (ab.first == nullptr || ab.second == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat((*f)->path(), ": adapter for '", base,
                                                     "' lacks its lora_", ab.first ? "B" : "A"));
    }
    const layout::Shape& w = model.tensor(id).shape;
    const layout::Shape want_a = layout::Shape::Of({r, w.d[1]}), want_b = layout::Shape::Of({w.d[0], r});
    if (w.ndim != 2 || ab.first->shape != want_a || ab.second->shape != want_b) {
      return absl::InvalidArgumentError(absl::StrCat(
          (*f)->path(), ": adapter for '", base, "' (", w.ToString(), ") has lora_A ",
          ab.first->shape.ToString(), " and lora_B ", ab.second->shape.ToString(), "; expected ",
          want_a.ToString(), " and ", want_b.ToString()));
    }
    (*out)[id] = Adapter{f->get(), ab.first, ab.second, o.lora_mode == "unmerge" ? -scale : scale};
  }
  in->files.push_back(std::move(*f));
  return absl::OkStatus();
}

int64_t PeakRssKib() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

}  // namespace

std::string LayoutSpec::ToString() const {
  std::string s = recipe;
  std::vector<std::string> parts;
  const std::pair<const char*, int> sz[] = {{"tp", sizes.tp}, {"cp", sizes.cp}, {"dp", sizes.dp},
                                            {"pp", sizes.pp}, {"ep", sizes.ep}, {"etp", sizes.etp}};
  for (auto [k, v] : sz) {
    // tp, cp, dp and pp default to 1; ep and etp to 0 (the engine's default).
    if (v > 1 || (v == 1 && k[0] == 'e')) parts.push_back(absl::StrCat(k, "=", v));
  }
  for (const auto& [k, v] : options) parts.push_back(absl::StrCat(k, "=", v));
  for (size_t i = 0; i < parts.size(); ++i) absl::StrAppend(&s, i ? "," : ":", parts[i]);
  return s;
}

absl::StatusOr<LayoutSpec> ParseLayoutSpec(const std::string& text) {
  LayoutSpec l;
  std::vector<std::string> head = absl::StrSplit(text, absl::MaxSplits(':', 1));
  l.recipe = head[0];
  const auto& names = layout::RecipeNames();
  if (std::find(names.begin(), names.end(), l.recipe) == names.end()) {
    return absl::InvalidArgumentError(absl::StrCat("layout '", text, "': unknown recipe '", l.recipe,
                                                   "' (megatron, vllm, hf, fsdp)"));
  }
  if (head.size() > 1 && !head[1].empty()) {
    for (absl::string_view item : absl::StrSplit(head[1], ',')) {
      std::vector<std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
      if (kv.size() != 2 || kv[0].empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("layout '", text, "': expected key=value, got '", item, "'"));
      }
      int* size = kv[0] == "tp"    ? &l.sizes.tp
                  : kv[0] == "cp"  ? &l.sizes.cp
                  : kv[0] == "dp"  ? &l.sizes.dp
                  : kv[0] == "pp"  ? &l.sizes.pp
                  : kv[0] == "ep"  ? &l.sizes.ep
                  : kv[0] == "etp" ? &l.sizes.etp
                                   : nullptr;
      if (size == nullptr) {
        l.options[kv[0]] = kv[1];
        continue;
      }
      if (!absl::SimpleAtoi(kv[1], size) || *size < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("layout '", text, "': ", kv[0], " must be a positive integer"));
      }
    }
  }
  if (auto ranks = layout::EngineRanks(l.recipe, l.sizes); !ranks.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("layout '", text, "': ", ranks.status().message()));
  }
  return l;
}

std::string RankFileName(const RankCoords& r) { return absl::StrFormat("rank-%05d.safetensors", r.rank); }

// The conversion; every output file it puts in place is added to *written.
static absl::StatusOr<ConvertReport> ConvertInto(const ConvertOptions& options,
                                                 std::vector<std::string>* written) {
  ConvertOptions o = options;
  const auto start = std::chrono::steady_clock::now();
  if (o.in_dir == o.out_dir || SameDirectory(o.in_dir, o.out_dir)) {
    return absl::InvalidArgumentError(absl::StrCat("--out ", o.out_dir, " is the input directory"));
  }
  auto write_text = [&](const std::string& path, const std::string& text) {
    absl::Status st = WriteFileAtomically(path, text);
    if (st.ok()) written->push_back(path);
    return st;
  };
  if (o.lora_mode != "merge" && o.lora_mode != "unmerge") {
    return absl::InvalidArgumentError(
        absl::StrCat("--lora-mode '", o.lora_mode, "' must be merge or unmerge"));
  }
  if (o.bucket_bytes < 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("bucket size (--bucket-mib) must be at least 4096 bytes, got ", o.bucket_bytes));
  }
  auto config_text = ReadRegularFile(o.model_config);
  if (!config_text.ok()) return config_text.status();
  auto config = layout::ParseHfConfig(*config_text);
  if (!config.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(o.model_config, ": ", config.status().message()));
  }
  auto tensors = layout::CanonicalTensors(*config, DType::kF32);
  if (!tensors.ok()) return tensors.status();
  auto model = ModelSpec::Create(*tensors);
  if (!model.ok()) return model.status();

  Inputs in;
  bool fused_in = o.from.options.count("experts") && o.from.options.at("experts") == "fused";
  absl::Status loaded = o.from.recipe == "hf" ? LoadHfInputs(o, *model, *config, &in, &fused_in)
                                              : LoadShardedInputs(o, *model, *config, &in);
  if (!loaded.ok()) return loaded;
  // --dtype fp8: a block-FP8 Hugging Face checkpoint (layout/fp8_checkpoint.h).
  const bool fp8_out = absl::AsciiStrToLower(o.dtype) == "fp8";
  if (fp8_out) {
    if (o.to.recipe != "hf") {
      return absl::InvalidArgumentError(absl::StrCat(
          "--dtype fp8 writes a Hugging Face block-FP8 checkpoint (--to hf); FP8 with scales in the '",
          o.to.recipe, "' layout is not supported yet"));
    }
    if (config->IsMoe() && o.to.options.count("experts") && o.to.options.at("experts") == "fused") {
      return absl::InvalidArgumentError(
          "--dtype fp8 writes MoE experts one matrix per expert with its own scales (--to hf:experts=per_expert), "
          "as block-FP8 checkpoints store them");
    }
    if (config->IsMoe()) o.to.options["experts"] = "per_expert";
    if (!o.lora_dir.empty() && o.lora_mode != "merge") {
      return absl::InvalidArgumentError("--dtype fp8 with --lora merges the adapter before quantizing; "
                                        "--lora-mode unmerge of an FP8 output is not supported");
    }
  }
  bool scaled_input = false;  // block-FP8 weights with scales, dequantized as read
  for (const InputRank& r : in.ranks) {
    for (const TensorInfo* t : r.scale) scaled_input |= t != nullptr;
  }
  // hf and fsdp outputs keep the input's expert form unless --to names one.
  if ((o.to.recipe == "hf" || o.to.recipe == "fsdp") && config->IsMoe() && !o.to.options.count("experts")) {
    o.to.options["experts"] = fused_in ? "fused" : "per_expert";
  }

  // Output dtype.
  DType out_dtype;
  if (fp8_out) {
    out_dtype = DType::kBF16;  // what is not quantized
  } else if (!o.dtype.empty()) {
    auto d = layout::ParseDType(o.dtype);
    if (!d.ok()) return d.status();
    out_dtype = *d;
  } else if (scaled_input) {
    return absl::InvalidArgumentError(
        "the input is a block-FP8 checkpoint (weights with weight_scale_inv): choose the output with --dtype "
        "(bf16 or fp32 dequantizes, fp8 writes block FP8 again)");
  } else {
    const InputRank& first = in.ranks.front();
    out_dtype = first.endpoint.shards.front().dtype;
    for (const InputRank& r : in.ranks) {
      for (size_t s = 0; s < r.endpoint.shards.size(); ++s) {
        if (r.endpoint.shards[s].dtype != out_dtype) {
          return absl::InvalidArgumentError(absl::StrCat(
              "the input mixes dtypes (", kernels::DTypeName(out_dtype), " in ",
              first.file.front()->path(), ", ", kernels::DTypeName(r.endpoint.shards[s].dtype),
              " for '", r.endpoint.shards[s].name, "' in ", r.file[s]->path(),
              "); choose the output dtype with --dtype"));
        }
      }
    }
  }
  for (const InputRank& r : in.ranks) {
    for (size_t s = 0; s < r.endpoint.shards.size(); ++s) {
      DType dt = r.endpoint.shards[s].dtype;
      if (r.scale[s] == nullptr && (dt == DType::kF8E4M3) != (out_dtype == DType::kF8E4M3)) {
        return absl::InvalidArgumentError(absl::StrCat(
            r.file[s]->path(), ": tensor '", r.endpoint.shards[s].name, "' is ",
            kernels::DTypeName(dt), ", which cannot be converted to ",
            kernels::DTypeName(out_dtype),
            " (fp8_e4m3 without scales is copied, not converted; --dtype fp8 quantizes with block scales)"));
      }
    }
  }

  std::map<int32_t, Adapter> adapters;
  if (!o.lora_dir.empty()) {
    WSYNC_RETURN_IF_ERROR(LoadAdapters(o, *model, &in, &adapters));
  }

  // Targets.
  std::vector<Endpoint> targets;
  auto to_ranks = layout::EngineRanks(o.to.recipe, o.to.sizes);
  if (!to_ranks.ok()) return to_ranks.status();
  const std::vector<RankCoords>& target_ranks = *to_ranks;
  for (const RankCoords& r : target_ranks) {
    auto shards = layout::BuildShards(*model, *config, o.to.recipe, o.to.options, r, out_dtype);
    if (!shards.ok()) return shards.status();
    targets.push_back({absl::StrCat("out/", r.ToString()), {}, std::move(*shards)});
  }
  std::vector<Endpoint> sources;
  for (const InputRank& r : in.ranks) sources.push_back(r.endpoint);
  layout::PlanOptions popts;
  popts.max_bucket_bytes = o.bucket_bytes;
  auto plan = layout::BuildPlan(*model, sources, targets, popts);
  if (!plan.ok()) return plan.status();

  // Ops and fills per target shard.
  std::vector<std::vector<std::vector<uint32_t>>> ops_of(targets.size()), fills_of(targets.size());
  for (size_t e = 0; e < targets.size(); ++e) {
    ops_of[e].resize(targets[e].shards.size());
    fills_of[e].resize(targets[e].shards.size());
  }
  for (uint32_t i = 0; i < plan->ops.size(); ++i) {
    ops_of[plan->ops[i].dst_endpoint][plan->ops[i].dst_shard].push_back(i);
  }
  for (uint32_t i = 0; i < plan->fills.size(); ++i) {
    fills_of[plan->fills[i].dst_endpoint][plan->fills[i].dst_shard].push_back(i);
  }

  // Output files: (endpoint, shard) -> (file, tensor index).
  WSYNC_RETURN_IF_ERROR(MakeDirs(o.out_dir));
  if (SameDirectory(o.in_dir, o.out_dir)) {  // e.g. --out $IN/ or a symlink to it
    return absl::InvalidArgumentError(absl::StrCat("--out ", o.out_dir, " is the input directory"));
  }
  struct OutFile {
    std::string name;
    std::vector<std::pair<uint32_t, uint32_t>> shards;  // (endpoint, shard)
  };
  std::vector<OutFile> files;
  // Block FP8 (hf only): which output tensors are quantized.
  auto quantized = [&](uint32_t e, uint32_t s) {
    const ShardSpec& sh = targets[e].shards[s];
    return fp8_out && layout::Fp8Quantized({sh.name, sh.shape, sh.dtype});
  };
  if (o.to.recipe == "hf") {
    uint64_t acc = 0;
    for (uint32_t s = 0; s < targets[0].shards.size(); ++s) {
      const ShardSpec& sh = targets[0].shards[s];
      uint64_t bytes = sh.shape.NumElements() * kernels::DTypeSize(sh.dtype);
      if (quantized(0, s)) bytes = sh.shape.NumElements() + layout::Fp8ScaleShape(sh.shape).NumElements() * 4;
      if (files.empty() || (acc > 0 && acc + bytes > o.max_shard_bytes)) {
        files.push_back({});
        acc = 0;
      }
      files.back().shards.push_back({0, s});
      acc += bytes;
    }
    for (size_t f = 0; f < files.size(); ++f) {
      files[f].name = files.size() == 1 ? "model.safetensors"
                                        : absl::StrFormat("model-%05d-of-%05d.safetensors", f + 1,
                                                          files.size());
    }
  } else {
    for (uint32_t e = 0; e < targets.size(); ++e) {
      OutFile f{RankFileName(target_ranks[e]), {}};
      for (uint32_t s = 0; s < targets[e].shards.size(); ++s) f.shards.push_back({e, s});
      files.push_back(std::move(f));
    }
  }

  ConvertReport report;
  const uint64_t bucket = o.bucket_bytes;
  std::vector<uint8_t> staging, fp8_bytes;
  // Block-FP8 inputs, dequantized to fp32 when an output tensor first reads
  // them and dropped once it is written: (endpoint, shard) -> (spec, data).
  std::map<std::pair<uint32_t, uint32_t>, std::pair<ShardSpec, std::vector<float>>> dequantized;
  auto source_view = [&](uint32_t e, uint32_t s) -> layout::ShardView {
    const InputRank& src = in.ranks[e];
    const ShardSpec& spec = src.endpoint.shards[s];
    const void* data = src.file[s]->Data(*src.info[s]);
    if (src.scale[s] == nullptr) return {&spec, nullptr, const_cast<void*>(data)};
    auto it = dequantized.find({e, s});
    if (it == dequantized.end()) {
      ShardSpec f32 = spec;
      f32.dtype = DType::kF32;
      std::vector<float> v(spec.shape.NumElements());
      const int64_t cols = spec.shape.d[spec.shape.ndim - 1], rows = spec.shape.d[spec.shape.ndim - 2];
      const int64_t matrices = spec.shape.NumElements() / (rows * cols);
      const layout::Shape ss = layout::Fp8ScaleShape(spec.shape);
      const int64_t scales_per = ss.d[ss.ndim - 1] * ss.d[ss.ndim - 2];
      const auto* q = static_cast<const uint8_t*>(data);
      const auto* scale = static_cast<const float*>(src.file[s]->Data(*src.scale[s]));
      for (int64_t m = 0; m < matrices; ++m) {
        kernels::DequantizeFp8Cpu(q + m * rows * cols, scale + m * scales_per, rows, cols, layout::kFp8Block,
                                  layout::kFp8Block, v.data() + m * rows * cols);
      }
      it = dequantized.emplace(std::make_pair(e, s), std::make_pair(std::move(f32), std::move(v))).first;
    }
    return {&it->second.first, nullptr, it->second.second.data()};
  };
  uint64_t read_since_release = 0;  // input bytes touched since pages were last dropped
  std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                 {"wsync_layout", o.to.ToString()}};
  for (const OutFile& of : files) {
    std::vector<TensorInfo> layout_info;
    std::vector<size_t> weight_index, scale_index;  // per shard of the file: its writer entries
    for (auto [e, s] : of.shards) {
      const ShardSpec& sh = targets[e].shards[s];
      weight_index.push_back(layout_info.size());
      scale_index.push_back(0);
      if (!quantized(e, s)) {
        layout_info.push_back({sh.name, sh.dtype, sh.shape, 0, 0});
        continue;
      }
      layout_info.push_back({sh.name, DType::kF8E4M3, sh.shape, 0, 0});
      scale_index.back() = layout_info.size();
      layout_info.push_back({layout::Fp8ScaleName(sh.name), DType::kF32, layout::Fp8ScaleShape(sh.shape), 0, 0});
    }
    const std::string path = Join(o.out_dir, of.name);
    auto writer = SafetensorsWriter::Create(path, layout_info, metadata);
    if (!writer.ok()) return writer.status();
    for (size_t k = 0; k < of.shards.size(); ++k) {
      auto [e, s] = of.shards[k];
      const ShardSpec& sh = targets[e].shards[s];
      // A quantized tensor is assembled in fp32 (LoRA merged there: one
      // rounding), then quantized slab by slab: whole 128-row blocks of a
      // matrix, or whole expert matrices.
      const bool quant = quantized(e, s);
      const int64_t rows = sh.shape.d[0];
      const int64_t row_elems = sh.shape.NumElements() / rows;
      const uint64_t row_bytes = static_cast<uint64_t>(row_elems) * kernels::DTypeSize(quant ? DType::kF32 : sh.dtype);
      const uint64_t out_row_bytes = quant ? static_cast<uint64_t>(row_elems) : row_bytes;
      int64_t slab_rows = std::max<int64_t>(1, static_cast<int64_t>(bucket / row_bytes));
      if (quant && sh.shape.ndim == 2) slab_rows = std::max(layout::kFp8Block, slab_rows / layout::kFp8Block * layout::kFp8Block);
      const layout::Shape scale_shape = quant ? layout::Fp8ScaleShape(sh.shape) : layout::Shape{};
      std::vector<float> scales(quant ? scale_shape.NumElements() : 0);
      for (int64_t a = 0; a < rows; a += slab_rows) {
        const int64_t n = std::min(slab_rows, rows - a);
        staging.resize(n * row_bytes);
        ShardSpec slab = sh;
        slab.pieces.clear();
        slab.shape.d[0] = n;
        if (quant) slab.dtype = DType::kF32;
        Box window = Box::Whole(sh.shape);
        window.off[0] = a;
        window.size[0] = n;
        std::vector<kernels::BoxCopyOp> copies;
        std::vector<kernels::LoraMergeOp> merges;
        for (uint32_t fi : fills_of[e][s]) {
          Box b = plan->fills[fi].dst_box.Intersect(window);
          if (b.ndim == 0) continue;
          b.off[0] -= a;
          layout::FillOp f{0, 0, b};
          copies.push_back(layout::LowerFill(f, {&slab, nullptr, staging.data()}));
        }
        for (uint32_t oi : ops_of[e][s]) {
          layout::CopyOp c;
          if (!layout::ClipCopy(plan->ops[oi], window, &c)) continue;
          c.dst_box.off[0] -= a;
          const InputRank& src = in.ranks[c.src_endpoint];
          const layout::ShardView src_view = source_view(c.src_endpoint, c.src_shard);
          const ShardSpec& src_spec = *src_view.spec;
          const void* src_data = src_view.base;
          const uint64_t src_bytes = layout::BoxBytes(c.src_box, src.endpoint.shards[c.src_shard].dtype);
          report.bytes_read += src_bytes;
          read_since_release += src_bytes;
          auto ad = adapters.find(c.tensor);
          if (ad == adapters.end()) {
            copies.push_back(layout::LowerCopy(c, {&src_spec, nullptr, const_cast<void*>(src_data)},
                                               {&slab, nullptr, staging.data()}));
            continue;
          }
          const Adapter& A = ad->second;
          layout::LoraFactors f;
          f.a = A.file->Data(*A.a);
          f.a_dtype = A.a->dtype;
          f.a_cols = A.a->shape.d[1];
          f.b = A.file->Data(*A.b);
          f.b_dtype = A.b->dtype;
          f.b_cols = A.b->shape.d[1];
          f.rank = A.a->shape.d[0];
          kernels::LoraMergeOp m = layout::LowerLoraMerge(
              c, f, layout::LowerMatrix(c, c.src_box, {&src_spec, nullptr, const_cast<void*>(src_data)}),
              src_spec.dtype, layout::LowerMatrix(c, c.dst_box, {&slab, nullptr, staging.data()}), slab.dtype,
              A.scale);
          merges.push_back(m);
        }
        if (std::string err = kernels::CheckBoxCopyOps(copies.data(), copies.size()); !err.empty()) {
          return absl::InvalidArgumentError(absl::StrCat("tensor '", sh.name, "': ", err));
        }
        if (std::string err = kernels::CheckLoraOps(merges.data(), merges.size()); !err.empty()) {
          return absl::InvalidArgumentError(absl::StrCat("tensor '", sh.name, "': ", err));
        }
        kernels::BoxCopyCpu(copies.data(), copies.size(), o.threads);
        kernels::LoraMergeCpu(merges.data(), merges.size(), o.threads);
        const void* out = staging.data();
        uint64_t out_bytes = staging.size();
        if (quant) {
          fp8_bytes.resize(n * row_elems);
          std::vector<kernels::Fp8QuantOp> qops;
          const int64_t r = sh.shape.d[sh.shape.ndim - 2], cols = sh.shape.d[sh.shape.ndim - 1];
          const int64_t scale_cols = scale_shape.d[scale_shape.ndim - 1];
          const int64_t matrices = sh.shape.ndim == 2 ? 1 : n;
          for (int64_t m = 0; m < matrices; ++m) {
            kernels::Fp8QuantOp q;
            q.src = staging.data() + m * r * cols * 4;
            q.src_dtype = DType::kF32;
            q.rows = sh.shape.ndim == 2 ? n : r;
            q.cols = q.src_ld = q.dst_ld = cols;
            q.dst = fp8_bytes.data() + m * r * cols;
            q.scale_inv = sh.shape.ndim == 2 ? scales.data() + (a / layout::kFp8Block) * scale_cols
                                             : scales.data() + (a + m) * scale_shape.d[1] * scale_cols;
            q.scale_ld = scale_cols;
            q.block_rows = q.block_cols = layout::kFp8Block;
            qops.push_back(q);
          }
          if (std::string err = kernels::CheckFp8QuantOps(qops.data(), qops.size()); !err.empty()) {
            return absl::InternalError(absl::StrCat("tensor '", sh.name, "': ", err));
          }
          if (std::string err = kernels::QuantizeFp8Cpu(qops.data(), qops.size(), o.threads); !err.empty()) {
            return absl::InvalidArgumentError(absl::StrCat(
                "tensor '", sh.name, "' cannot be quantized to FP8: ", err, " (", sh.shape.ndim == 2 ? "rows" : "experts",
                " counted from ", a, ")"));
          }
          out = fp8_bytes.data();
          out_bytes = fp8_bytes.size();
        }
        if (absl::Status st = (*writer)->Write(weight_index[k], a * out_row_bytes, out, out_bytes); !st.ok()) {
          return st;
        }
        // Drop mapped input pages once a bucket's worth was read (not after
        // every small tensor: madvise walks the whole mapping).
        if (read_since_release >= bucket) {
          for (const auto& f : in.files) f->ReleasePages();
          read_since_release = 0;
        }
      }
      report.bytes_written += rows * out_row_bytes;
      report.tensors_written++;
      if (quant) {
        if (absl::Status st = (*writer)->Write(scale_index[k], 0, scales.data(), scales.size() * 4); !st.ok()) {
          return st;
        }
        report.bytes_written += scales.size() * 4;
        report.tensors_written++;
      }
      dequantized.clear();
    }
    if (absl::Status st = (*writer)->Commit(); !st.ok()) return st;
    written->push_back(path);
    report.files_written++;
    if (!o.quiet) std::fprintf(stderr, "wrote %s (%zu tensors)\n", path.c_str(), of.shards.size());
  }
  report.lora_merged = static_cast<int64_t>(adapters.size());

  // Index, manifest, config.
  if (o.to.recipe == "hf") {
    if (files.size() > 1) {
      nlohmann::ordered_json idx;
      idx["metadata"]["total_size"] = report.bytes_written;
      for (const OutFile& of : files) {
        for (auto [e, s] : of.shards) {
          idx["weight_map"][targets[e].shards[s].name] = of.name;
          if (quantized(e, s)) idx["weight_map"][layout::Fp8ScaleName(targets[e].shards[s].name)] = of.name;
        }
      }
      if (absl::Status st = write_text(Join(o.out_dir, "model.safetensors.index.json"),
                                                idx.dump(2) + "\n");
          !st.ok()) {
        return st;
      }
    }
    // A block-FP8 output says so in its config (vLLM reads the method from
    // there); a dequantized one drops the input's FP8 quantization_config.
    std::string out_config = *config_text;
    if (fp8_out || scaled_input) {
      nlohmann::ordered_json j = nlohmann::ordered_json::parse(*config_text, nullptr, false);
      if (j.is_object()) {
        if (fp8_out) {
          j["quantization_config"] = nlohmann::ordered_json::parse(layout::Fp8QuantizationConfigJson(*model));
        } else {
          j.erase("quantization_config");
        }
        out_config = j.dump(2) + "\n";
      }
    }
    if (absl::Status st = write_text(Join(o.out_dir, "config.json"), out_config); !st.ok()) {
      return st;
    }
  } else {
    nlohmann::ordered_json m;
    m["format"] = "wsync.sharded-safetensors";
    m["version"] = 2;
    m["recipe"] = o.to.recipe;
    m["options"] = nlohmann::ordered_json::object();
    for (const auto& [k, v] : o.to.options) m["options"][k] = v;
    m["sizes"] = {{"tp", o.to.sizes.tp}, {"cp", o.to.sizes.cp}, {"dp", o.to.sizes.dp},
                  {"pp", o.to.sizes.pp}, {"ep", o.to.sizes.ep}, {"etp", o.to.sizes.etp}};
    m["world_size"] = target_ranks.size();
    m["dtype"] = kernels::DTypeName(out_dtype);
    m["ranks"] = nlohmann::ordered_json::array();
    for (size_t i = 0; i < target_ranks.size(); ++i) {
      const RankCoords& r = target_ranks[i];
      m["ranks"].push_back({{"file", files[i].name}, {"rank", r.rank}, {"tp", r.tp}, {"cp", r.cp},
                            {"dp", r.dp}, {"pp", r.pp}, {"etp", r.etp}, {"ep", r.ep}, {"edp", r.edp}});
    }
    m["model_config"] = nlohmann::ordered_json::parse(*config_text, nullptr, false);
    if (absl::Status st = write_text(Join(o.out_dir, kManifest), m.dump(2) + "\n"); !st.ok()) {
      return st;
    }
  }
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  report.peak_rss_kib = PeakRssKib();
  return report;
}

absl::Status ValidateLayoutManifest(const std::string& path, const std::string& text) {
  return ParseManifest(path, text).status();
}

absl::StatusOr<ConvertReport> Convert(const ConvertOptions& o) {
  std::vector<std::string> written;
  absl::StatusOr<ConvertReport> r = absl::InternalError("conversion did not run");
  try {
    r = ConvertInto(o, &written);
  } catch (const std::exception& e) {  // none should reach here; never across the module boundary
    r = absl::InternalError(absl::StrCat("conversion failed: ", e.what()));
  }
  if (!r.ok()) {
    // A failed conversion leaves nothing that looks like a complete output.
    for (const std::string& path : written) unlink(path.c_str());
  }
  return r;
}

}  // namespace wsync::convert
