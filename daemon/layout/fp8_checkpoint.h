#ifndef WSYNC_DAEMON_LAYOUT_FP8_CHECKPOINT_H_
#define WSYNC_DAEMON_LAYOUT_FP8_CHECKPOINT_H_

// FP8 scale groups (block, channel, tensor; kernels/fp8.h has the
// arithmetic) and the block-FP8 checkpoint convention of DeepSeek-V3 and Qwen3-FP8, which
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
#include <vector>

#include "daemon/layout/types.h"

namespace wsync::layout {

inline constexpr int64_t kFp8Block = 128;

// Whether canonical tensor `t` is quantized in a block-FP8 checkpoint: a
// ".weight" of 2 dimensions (or 3: fused experts, one matrix per expert)
// under "model.layers.", other than a norm or a MoE router (".gate.weight",
// ".shared_expert_gate.weight").
bool Fp8Quantized(const TensorSpec& t);

// "block", "channel" or "tensor".
const char* Fp8ScalingName(Fp8Scaling s);

// The elements one scale of `s` covers in a `rows` x `cols` matrix: 128 x
// 128, 1 x cols, or rows x cols.
ScaleGroup Fp8GroupOf(Fp8Scaling s, int64_t rows, int64_t cols);

// The scale tensor's name: "X.weight" -> "X.weight_scale_inv" for block
// scales, "X.weight_scale" for channel and tensor scales (vLLM's names);
// vLLM's fused "X.w13_weight" -> "X.w13_weight_scale_inv" alike.
std::string Fp8ScaleName(const std::string& weight_name, Fp8Scaling s = Fp8Scaling::kBlock);

// Whether `name` looks like a block-scale tensor ("....weight_scale_inv"),
// and the weight it scales.
bool IsFp8ScaleName(const std::string& name, std::string* weight_name);

// The scale tensor's shape for a weight of shape `w`: leading dimensions
// kept, the last two (or the only one) counted in groups of Fp8GroupOf,
// rounding up.
Shape Fp8ScaleShape(const Shape& w, Fp8Scaling s = Fp8Scaling::kBlock);

// The scaling that a scale tensor named `scale_name` of shape `scale`
// denotes for a 2-d weight of shape `w`: a name ending "_scale_inv" is
// block scaling, one ending "_scale" channel or tensor scaling, and any
// other name whichever of block, channel and tensor fits first (where two
// fit, they group the same elements). nullopt when the shape fits none
// allowed by the name.
std::optional<Fp8Scaling> Fp8ScalingOf(const std::string& scale_name, const Shape& scale, const Shape& w);
// The scalings a scale tensor named `scale_name` may denote, in the order
// Fp8ScalingOf tries them.
std::vector<Fp8Scaling> Fp8ScalingsNamed(const std::string& scale_name);

// Whether canonical tensor `tensor` of `model` lands in a buffer of `dtype`
// by quantization: a weight with FP8 scales, into a float8_e4m3fn buffer.
bool QuantizedInto(const ModelSpec& model, int32_t tensor, DType dtype);

// The buffer that holds the scales of `weights` where an engine keeps them
// beside an FP8 weight buffer: Fp8ScaleName(name), fp32, the pieces' scales
// stacked as their weights are (vLLM stacks q/k/v and gate/up scales as it
// stacks their weights): along each of the last two dimensions, the
// distinct row (column) ranges of the pieces, in order, get their groups'
// scales one after the other. Block scales thus sit where their blocks'
// rows and columns are, channel scales are [rows, 1], and qkv's tensor
// scales [3, 1]. Empty when a piece's tensor has no scale tensor in `model`
// or does not cover whole groups (such a buffer cannot be FP8), the pieces
// differ in scaling, leave rows or columns of the buffer uncovered or
// overlap partly, or the buffer is neither 2-d nor a 3-d stack of whole
// matrices (vLLM's fused experts: `w13_weight` -> `w13_weight_scale_inv` of
// shape [E, rows/128, cols/128], or `w13_weight_scale` [E, 2, 1] per
// tensor).
std::optional<ShardSpec> Fp8ScaleShard(const ModelSpec& model, const ShardSpec& weights);

// The "quantization_config" object above for `model`'s tensors, as JSON text.
std::string Fp8QuantizationConfigJson(const ModelSpec& model);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_FP8_CHECKPOINT_H_
