#include "daemon/layout/fp8_checkpoint.h"

#include "absl/strings/match.h"
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
  for (int d = w.ndim - 2; d < w.ndim; ++d) s.d[d] = (w.d[d] + kFp8Block - 1) / kFp8Block;
  return s;
}

std::string Fp8QuantizationConfigJson() {
  return R"({"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]})";
}

}  // namespace wsync::layout
