#include "daemon/layout/fp8_checkpoint.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"

namespace wsync::layout {

namespace {
constexpr absl::string_view kWeight = ".weight";
constexpr absl::string_view kScaleInv = ".weight_scale_inv";
}  // namespace

bool Fp8Quantized(const TensorSpec& t) {
  if (t.shape.ndim != 2 && t.shape.ndim != 3) return false;
  if (!absl::StartsWith(t.name, "model.layers.") || !absl::EndsWith(t.name, kWeight)) return false;
  if (absl::StrContains(t.name, "norm")) return false;
  // MoE routers: mlp.gate (Qwen, DeepSeek), block_sparse_moe.gate (Mixtral),
  // shared_expert_gate (Qwen2-MoE).
  if (absl::EndsWith(t.name, ".gate.weight") || absl::EndsWith(t.name, ".shared_expert_gate.weight")) return false;
  return true;
}

const char* Fp8ScalingName(Fp8Scaling s) {
  switch (s) {
    case Fp8Scaling::kBlock:
      return "block";
    case Fp8Scaling::kChannel:
      return "channel";
    case Fp8Scaling::kTensor:
      return "tensor";
  }
  return "?";
}

ScaleGroup Fp8GroupOf(Fp8Scaling s, int64_t rows, int64_t cols) {
  switch (s) {
    case Fp8Scaling::kBlock:
      return {kFp8Block, kFp8Block};
    case Fp8Scaling::kChannel:
      return {1, cols};
    case Fp8Scaling::kTensor:
      break;
  }
  return {rows, cols};
}

std::string Fp8ScaleName(const std::string& weight_name, Fp8Scaling s) {
  const absl::string_view suffix = s == Fp8Scaling::kBlock ? "_scale_inv" : "_scale";
  // "X.weight" and vLLM's fused "X.w13_weight" alike.
  if (absl::EndsWith(weight_name, "weight")) return absl::StrCat(weight_name, suffix);
  absl::string_view stem(weight_name);
  if (absl::EndsWith(stem, kWeight)) stem.remove_suffix(kWeight.size());
  return absl::StrCat(stem, kWeight, suffix);
}

bool IsFp8ScaleName(const std::string& name, std::string* weight_name) {
  if (!absl::EndsWith(name, kScaleInv)) return false;
  if (weight_name != nullptr) *weight_name = name.substr(0, name.size() - kScaleInv.size()) + std::string(kWeight);
  return true;
}

Shape Fp8ScaleShape(const Shape& w, Fp8Scaling s) {
  Shape out = w;
  if (w.ndim == 0) return out;
  const int64_t rows = w.ndim >= 2 ? w.d[w.ndim - 2] : 1, cols = w.d[w.ndim - 1];
  const ScaleGroup g = Fp8GroupOf(s, rows, cols);
  if (w.ndim >= 2) out.d[w.ndim - 2] = (rows + g.rows - 1) / g.rows;
  out.d[w.ndim - 1] = (cols + g.cols - 1) / g.cols;
  return out;
}

std::vector<Fp8Scaling> Fp8ScalingsNamed(const std::string& scale_name) {
  if (absl::EndsWith(scale_name, "_scale_inv")) return {Fp8Scaling::kBlock};
  if (absl::EndsWith(scale_name, "_scale")) return {Fp8Scaling::kChannel, Fp8Scaling::kTensor};
  return {Fp8Scaling::kBlock, Fp8Scaling::kChannel, Fp8Scaling::kTensor};
}

std::optional<Fp8Scaling> Fp8ScalingOf(const std::string& scale_name, const Shape& scale, const Shape& w) {
  for (Fp8Scaling s : Fp8ScalingsNamed(scale_name)) {
    if (scale == Fp8ScaleShape(w, s)) return s;
  }
  return std::nullopt;
}

bool QuantizedInto(const ModelSpec& model, int32_t tensor, DType dtype) {
  return dtype == DType::kF8E4M3 && model.ScaleTensorOf(tensor) >= 0;
}

namespace {

// One distinct range of a scale buffer's dimension that pieces cover, and
// the scales of its groups.
struct Span {
  int64_t off = 0, size = 0, groups = 0, group = 0;
  int64_t scale_off = 0;
};

// Stacks the distinct ranges of one dimension (docs above); false when they
// overlap partly, leave a gap, or a range's groups do not start where a
// uniform grid of groups would put them.
bool StackSpans(std::vector<Span>* spans, int64_t extent, int64_t* scales) {
  std::sort(spans->begin(), spans->end(), [](const Span& a, const Span& b) { return a.off < b.off; });
  int64_t at = 0, n = 0;
  const bool uniform = std::all_of(spans->begin(), spans->end(),
                                   [&](const Span& s) { return s.group == spans->front().group; });
  for (Span& s : *spans) {
    if (s.off != at) return false;
    if (uniform && n * s.group != s.off) return false;
    s.scale_off = n;
    at += s.size;
    n += s.groups;
  }
  *scales = n;
  return at == extent;
}

}  // namespace

std::optional<ShardSpec> Fp8ScaleShard(const ModelSpec& model, const ShardSpec& weights) {
  const int nd = weights.shape.ndim;
  if ((nd != 2 && nd != 3) || weights.pieces.empty()) return std::nullopt;
  const int32_t first = model.ScaleTensorOf(weights.pieces[0].tensor);
  if (first < 0) return std::nullopt;
  const Fp8Scaling scaling = model.ScalingOf(weights.pieces[0].tensor);
  std::vector<Span> spans[2];
  for (const Piece& p : weights.pieces) {
    if (model.ScaleTensorOf(p.tensor) < 0 || model.ScalingOf(p.tensor) != scaling) return std::nullopt;
    if (p.canonical.ndim != 2 || p.shard.ndim != nd) return std::nullopt;
    // A 3-d buffer (fused experts) holds one matrix per leading index.
    for (int d = 0; d + 2 < nd; ++d) {
      if (p.shard.size[d] != 1) return std::nullopt;
    }
    const Shape& full = model.tensor(p.tensor).shape;
    const ScaleGroup g = model.ScaleGroupOf(p.tensor);
    for (int d = 0; d < 2; ++d) {
      const int sd = nd - 2 + d;
      const int64_t off = p.canonical.off[d], size = p.canonical.size[d], gd = d == 0 ? g.rows : g.cols;
      if (p.shard.size[sd] != size || off % gd != 0 || (size % gd != 0 && off + size != full.d[d])) {
        return std::nullopt;
      }
      const Span s{p.shard.off[sd], size, (size + gd - 1) / gd, gd, 0};
      auto same = std::find_if(spans[d].begin(), spans[d].end(), [&](const Span& o) { return o.off == s.off; });
      if (same == spans[d].end()) {
        spans[d].push_back(s);
      } else if (same->size != s.size || same->groups != s.groups) {
        return std::nullopt;
      }
    }
  }
  ShardSpec out{Fp8ScaleName(weights.name, scaling), weights.shape, DType::kF32, {}};
  for (int d = 0; d < 2; ++d) {
    if (!StackSpans(&spans[d], weights.shape.d[nd - 2 + d], &out.shape.d[nd - 2 + d])) return std::nullopt;
  }
  for (const Piece& p : weights.pieces) {
    const ScaleGroup g = model.ScaleGroupOf(p.tensor);
    Piece q;
    q.tensor = model.ScaleTensorOf(p.tensor);
    q.canonical.ndim = 2;
    q.shard.ndim = nd;
    for (int d = 0; d + 2 < nd; ++d) {
      q.shard.off[d] = p.shard.off[d];
      q.shard.size[d] = 1;
    }
    for (int d = 0; d < 2; ++d) {
      const int sd = nd - 2 + d;
      const Span& s =
          *std::find_if(spans[d].begin(), spans[d].end(), [&](const Span& o) { return o.off == p.shard.off[sd]; });
      q.canonical.off[d] = p.canonical.off[d] / (d == 0 ? g.rows : g.cols);
      q.canonical.size[d] = q.shard.size[sd] = s.groups;
      q.shard.off[sd] = s.scale_off;
    }
    out.pieces.push_back(q);
  }
  return out;
}

std::string Fp8QuantizationConfigJson(const ModelSpec& model) {
  std::vector<std::string> kept;
  for (size_t i = 0; i < model.size(); ++i) {
    const TensorSpec& t = model.tensor(i);
    if (t.shape.ndim != 2 || !absl::EndsWith(t.name, kWeight) || !t.scales_of.empty() || Fp8Quantized(t)) continue;
    if (absl::StrContains(t.name, "norm")) continue;
    kept.push_back(absl::StrCat("\"", t.name.substr(0, t.name.size() - kWeight.size()), "\""));
  }
  return absl::StrCat(
      R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128], )",
      R"("modules_to_not_convert": [)", absl::StrJoin(kept, ", "), "]}");
}

}  // namespace wsync::layout
