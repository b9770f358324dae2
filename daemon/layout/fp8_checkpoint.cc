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

std::string Fp8ScaleName(const std::string& weight_name) {
  // "X.weight" and vLLM's fused "X.w13_weight" alike.
  if (absl::EndsWith(weight_name, "weight")) return weight_name + "_scale_inv";
  absl::string_view stem(weight_name);
  if (absl::EndsWith(stem, kWeight)) stem.remove_suffix(kWeight.size());
  return std::string(stem) + std::string(kScaleInv);
}

bool IsFp8ScaleName(const std::string& name, std::string* weight_name) {
  if (!absl::EndsWith(name, kScaleInv)) return false;
  if (weight_name != nullptr) *weight_name = name.substr(0, name.size() - kScaleInv.size()) + std::string(kWeight);
  return true;
}

Shape Fp8ScaleShape(const Shape& w) {
  Shape s = w;
  for (int d = std::max(0, w.ndim - 2); d < w.ndim; ++d) s.d[d] = (w.d[d] + kFp8Block - 1) / kFp8Block;
  return s;
}

std::optional<ShardSpec> Fp8ScaleShard(const ModelSpec& model, const ShardSpec& weights) {
  const int nd = weights.shape.ndim;
  if ((nd != 2 && nd != 3) || weights.pieces.empty()) return std::nullopt;
  ShardSpec out{Fp8ScaleName(weights.name), Fp8ScaleShape(weights.shape), DType::kF32, {}};
  for (const Piece& p : weights.pieces) {
    const int32_t st = model.ScaleTensorOf(p.tensor);
    if (st < 0 || p.canonical.ndim != 2 || p.shard.ndim != nd) return std::nullopt;
    const Shape& full = model.tensor(p.tensor).shape;
    Piece q;
    q.tensor = st;
    q.canonical.ndim = 2;
    q.shard.ndim = nd;
    // A 3-d buffer (fused experts) holds one matrix per leading index.
    for (int d = 0; d + 2 < nd; ++d) {
      if (p.shard.size[d] != 1) return std::nullopt;
      q.shard.off[d] = p.shard.off[d];
      q.shard.size[d] = 1;
    }
    for (int d = 0; d < 2; ++d) {
      const int sd = nd - 2 + d;
      const int64_t off = p.canonical.off[d], size = p.canonical.size[d];
      if (p.shard.size[sd] != size || off % kFp8Block != 0 || p.shard.off[sd] % kFp8Block != 0 ||
          (size % kFp8Block != 0 && off + size != full.d[d])) {
        return std::nullopt;
      }
      q.canonical.off[d] = off / kFp8Block;
      q.shard.off[sd] = p.shard.off[sd] / kFp8Block;
      q.canonical.size[d] = q.shard.size[sd] = (size + kFp8Block - 1) / kFp8Block;
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
