#ifndef WSYNC_DAEMON_LAYOUT_FP8_CHECKPOINT_H_
#define WSYNC_DAEMON_LAYOUT_FP8_CHECKPOINT_H_

// The block-FP8 checkpoint convention of DeepSeek-V3 and Qwen3-FP8, which
// vLLM loads with its "fp8" quantization method: the weight of every linear
// layer inside a decoder layer is float8_e4m3fn, with one fp32
// `weight_scale_inv` per 128 x 128 block (kernels/fp8.h has the
// arithmetic); embeddings, norms, biases, the MoE router (`mlp.gate`) and
// lm_head stay in full precision. config.json carries
//   "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
//                           "activation_scheme": "dynamic",
//                           "weight_block_size": [128, 128],
//                           "modules_to_not_convert": [...]}
// where the list names every 2-d weight left in full precision by its
// module ("model.layers.0.mlp.gate", "lm_head"): vLLM builds some routers
// (Qwen3-MoE's) as quantizable linears and keeps only the listed ones
// unquantized.

#include <cstdint>
#include <optional>
#include <string>

#include "daemon/layout/types.h"

namespace wsync::layout {

inline constexpr int64_t kFp8Block = 128;

// Whether canonical tensor `t` is quantized in a block-FP8 checkpoint: a
// ".weight" of 2 dimensions (or 3: fused experts, one matrix per expert)
// under "model.layers.", other than a norm or a MoE router (".gate.weight",
// ".shared_expert_gate.weight").
bool Fp8Quantized(const TensorSpec& t);

// "X.weight" -> "X.weight_scale_inv", "X.w13_weight" -> "X.w13_weight_scale_inv".
std::string Fp8ScaleName(const std::string& weight_name);

// Whether `name` looks like a scale tensor ("....weight_scale_inv"), and
// the weight it scales.
bool IsFp8ScaleName(const std::string& name, std::string* weight_name);

// The scale tensor's shape for a weight of shape `w`: leading dimensions
// kept, the last two (or the only one) divided by kFp8Block rounding up.
Shape Fp8ScaleShape(const Shape& w);

// The buffer that holds the block scales of `weights` where an engine keeps
// them beside an FP8 weight buffer: "<name>_scale_inv", fp32, one scale per
// 128 x 128 block of the buffer, each piece's blocks where its rows and
// columns are (vLLM stacks q/k/v and gate/up scales as it stacks their
// weights). Empty when a piece's tensor has no scale tensor in `model` or
// does not cover whole blocks (such a buffer cannot be FP8), or the buffer
// is neither 2-d nor a 3-d stack of whole matrices (vLLM's fused experts,
// `w13_weight` -> `w13_weight_scale_inv` of shape [E, rows/128, cols/128]).
std::optional<ShardSpec> Fp8ScaleShard(const ModelSpec& model, const ShardSpec& weights);

// The "quantization_config" object above for `model`'s tensors, as JSON text.
std::string Fp8QuantizationConfigJson(const ModelSpec& model);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_FP8_CHECKPOINT_H_
