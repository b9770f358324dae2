#ifndef WSYNC_DAEMON_LAYOUT_RECIPE_H_
#define WSYNC_DAEMON_LAYOUT_RECIPE_H_

// Recipes: the shards (buffers and their pieces) one rank of a framework
// holds, generated from the model config and the rank's coordinates.
//
//   megatron  Megatron-LM core (mcore) names: fused GQA-interleaved QKV with
//             its input layernorm, GLU fc1, row-parallel proj/fc2,
//             vocab-parallel embedding/output padded to
//             make_vocab_size_divisible_by * TP, MoE router/experts/shared
//             experts under EP and expert-TP, pipeline stages.
//   vllm      vLLM names: blocked [q; k; v] qkv_proj with KV-head
//             replication when TP > KV heads, gate_up_proj, vocab padded to
//             a multiple of 64, FusedMoE w13/w2 under EP or TP.
//   hf        canonical tensors, whole.
//   fsdp      canonical names, each tensor split on dim 0 over dp ranks
//             (torch.chunk: ceil(rows/dp) rows each, the last shard shorter
//             or absent).
// docs/layouts.md draws each layout.

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/types.h"

namespace wsync::layout {

// A rank's position. Sizes < 1 are treated as 1.
struct RankCoords {
  int tp = 0, tp_size = 1;
  int pp = 0, pp_size = 1;
  int ep = 0, ep_size = 1;
  int etp = 0, etp_size = 1;
  int dp = 0, dp_size = 1;
  std::string ToString() const;  // "tp1/4 pp0/2 ep0/1 etp0/1 dp0/1"
};

using RecipeOptions = std::map<std::string, std::string>;

// The recipe names: "megatron", "vllm", "hf", "fsdp".
const std::vector<std::string>& RecipeNames();

// The shards of one rank under `recipe`, with buffers of `dtype`. Every
// returned shard passes ValidateShard. INVALID_ARGUMENT for an unknown
// recipe or option, coordinates out of range, or a parallel size the model
// cannot be split by (naming the quantity and the size), NOT_FOUND if the
// model lacks a tensor the recipe needs.
absl::StatusOr<std::vector<ShardSpec>> BuildShards(const ModelSpec& model,
                                                   const ModelConfig& config,
                                                   const std::string& recipe,
                                                   const RecipeOptions& options,
                                                   const RankCoords& rank, DType dtype);

// Every rank of a layout with the given sizes (indices enumerated tp
// fastest, then etp, ep, pp, dp), for tools and tests.
std::vector<RankCoords> AllRanks(const RankCoords& sizes);

// Padded vocabulary rows of a recipe: megatron pads to
// make_vocab_size_divisible_by * tp_size, vllm to vocab_padding (64).
absl::StatusOr<int64_t> PaddedVocab(const std::string& recipe, const RecipeOptions& options,
                                    int64_t vocab, int tp_size);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_RECIPE_H_
