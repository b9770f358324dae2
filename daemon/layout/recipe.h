#ifndef WSYNC_DAEMON_LAYOUT_RECIPE_H_
#define WSYNC_DAEMON_LAYOUT_RECIPE_H_

// Recipes: the shards (buffers and their pieces) one process of a framework
// holds, generated from the model config and the process's coordinates.
// Dense weights follow the dense coordinates (tp, pp), routed experts the
// expert coordinates (etp, ep); cp, dp and edp are copies.
//
//   megatron  Megatron-LM core (mcore) names with global layer and expert
//             numbers: fused GQA-interleaved QKV, GLU fc1, row-parallel
//             proj/fc2, vocab-parallel embedding/output padded to
//             make_vocab_size_divisible_by * TP, MoE router/experts/shared
//             experts, pipeline stages and virtual-pipeline chunks (vpp).
//             Options: spec=te|local (fused or separate layer norms),
//             moe_layout=grouped|sequential, vpp, make_vocab_size_divisible_by.
//   vllm      vLLM names: blocked [q; k; v] qkv_proj with KV-head
//             replication when TP > KV heads, gate_up_proj, vocab padded to
//             a multiple of 64 (vocab_padding), FusedMoE
//             experts.routed_experts.w13/w2 (moe_names=legacy: experts.w13)
//             with expert_placement=linear|round_robin.
//   hf        canonical tensors, whole (experts=fused: Transformers v5
//             gate_up_proj/down_proj per layer).
//   fsdp      canonical names, each tensor split on dim 0 over dp processes
//             (torch.chunk: ceil(rows/dp) rows each, the last shard shorter
//             or absent); experts=fused as for hf.
// docs/layouts.md draws each layout.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/types.h"

namespace wsync::layout {

// One process of an engine's parallel layout: its index in the layout's
// world and its coordinates in the engine's two grids over that world, as
// Megatron-core's parallel_state and vLLM's parallel config define them.
// Dense weights (attention, dense MLPs, embeddings, norms, shared experts)
// follow the dense grid tp x cp x dp x pp; routed experts follow the expert
// grid etp x ep x edp x pp. Both grids cover the same world_size processes
// and share pp. Weights are identical across cp and dp (dense) and edp
// (experts): those are copies, not shards.
struct RankCoords {
  int rank = 0, world_size = 0;  // world_size 0: derived (CompleteRank)
  int tp = 0, tp_size = 1;
  int cp = 0, cp_size = 1;
  int dp = 0, dp_size = 1;
  int pp = 0, pp_size = 1;
  int etp = 0, etp_size = 1;
  int ep = 0, ep_size = 1;
  int edp = 0, edp_size = 1;
  // "rank 1/4 (tp 1/2, dp 0/2; ep 1/4)": dimensions of size 1 are left
  // out, and so is an expert grid that only repeats tp (etp = tp, no ep).
  std::string ToString() const;
  // The same layout: every size and world_size equal.
  bool SameSizes(const RankCoords& o) const;
};

// Fills what a caller may leave out, then checks the result:
// - sizes below 1 are 1;
// - world_size 0 means the dense grid's product, and then `rank` is the
//   process's index in Megatron-core's default order (tp fastest, then cp,
//   dp, pp);
// - an expert grid left at its defaults (every expert size 1 and every
//   expert coordinate 0) while the dense grid has more than pp_size
//   processes takes Megatron-core's default: etp = tp, ep = 1, edp = cp x dp.
// INVALID_ARGUMENT naming the coordinate when one is outside its size, when
// a grid's product is not world_size, or when rank is outside the world.
absl::Status CompleteRank(RankCoords* rank);

// The sizes of a layout as a user writes them ("megatron:tp=2,ep=2").
struct LayoutSizes {
  int tp = 1, cp = 1, dp = 1, pp = 1;
  int ep = 0;   // 0: the engine's default (no expert parallelism)
  int etp = 0;  // 0: the engine's default (megatron: tp; others: 1)
};

using RecipeOptions = std::map<std::string, std::string>;

// The recipe names: "megatron", "vllm", "hf", "fsdp".
const std::vector<std::string>& RecipeNames();

// The shards of one rank under `recipe`, with buffers of `dtype`. Every
// returned shard passes ValidateShard. INVALID_ARGUMENT for an unknown
// recipe or option, coordinates out of range, or a parallel size the model
// cannot be split by (naming the quantity and the size), NOT_FOUND if the
// model lacks a tensor the recipe needs. Where the model has FP8 block
// scales, "vllm" and "hf" also return the fp32 scale buffer of each weight
// buffer that can be FP8 (Fp8ScaleShard), after the others, in fp32.
absl::StatusOr<std::vector<ShardSpec>> BuildShards(const ModelSpec& model,
                                                   const ModelConfig& config,
                                                   const std::string& recipe,
                                                   const RecipeOptions& options,
                                                   const RankCoords& rank, DType dtype);

// Every process of a layout, indexed by rank, with its coordinates as the
// engine assigns them (docs/layouts.md):
//   megatron  world = tp*cp*dp*pp in the order tp-cp-ep-dp-pp (tp fastest);
//             expert grid etp (default tp) x ep x edp = world/(etp*ep*pp).
//   vllm      world = tp*dp*pp, rank = (dp*pp_size + pp)*tp_size + tp;
//             ep 0: experts tensor-parallel over the flattened dp x tp
//             (etp = dp*tp_size + tp); ep = tp*dp (enable_expert_parallel):
//             whole experts on ep = dp*tp_size + tp. Other ep sizes and any
//             cp or etp are INVALID_ARGUMENT.
//   hf        one process.
//   fsdp      world = dp, every tensor chunked over dp.
absl::StatusOr<std::vector<RankCoords>> EngineRanks(const std::string& recipe,
                                                    const LayoutSizes& sizes);

// Padded vocabulary rows of a recipe: megatron pads to
// make_vocab_size_divisible_by * tp_size, vllm to vocab_padding (64).
absl::StatusOr<int64_t> PaddedVocab(const std::string& recipe, const RecipeOptions& options,
                                    int64_t vocab, int tp_size);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_RECIPE_H_
