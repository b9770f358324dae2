#ifndef WSYNC_CLIENT_CONVERT_CONVERT_H_
#define WSYNC_CLIENT_CONVERT_CONVERT_H_

// Offline resharding of safetensors checkpoints with the daemon's layout
// engine: the same recipes, planner and CPU kernels, file to file.
//
// Layouts on disk:
// - hf: a Hugging Face checkpoint: model.safetensors, or
//   model-0000K-of-0000N.safetensors plus model.safetensors.index.json.
// - megatron, vllm, fsdp: one file per process, rank-{rank:05}.safetensors,
//   holding that process's buffers under the recipe's names, plus a
//   manifest wsync_layout.json (version 2: recipe, options, sizes,
//   world_size, dtype, each process's file and coordinates in the dense and
//   expert grids, and the model's config.json).

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/layout/recipe.h"

namespace wsync::convert {

// "megatron:tp=2,pp=2", "megatron:tp=2,dp=2,ep=2,etp=1", "vllm:tp=4,ep=4",
// "hf", "fsdp:dp=8". Keys tp, cp, dp, pp, ep and etp set the engine's
// parallel sizes (layout::EngineRanks says what they mean per engine);
// other keys are recipe options ("megatron:tp=2,spec=local").
struct LayoutSpec {
  std::string recipe;
  layout::LayoutSizes sizes;
  layout::RecipeOptions options;
  std::string ToString() const;
};
absl::StatusOr<LayoutSpec> ParseLayoutSpec(const std::string& text);

struct ConvertOptions {
  std::string model_config;  // path of a Hugging Face config.json
  LayoutSpec from, to;
  std::string in_dir, out_dir;
  std::string dtype;         // output dtype ("" = the input's)
  std::string lora_dir;      // PEFT adapter directory ("" = none)
  std::string lora_mode = "merge";  // merge | unmerge
  uint64_t bucket_bytes = 64ull << 20;
  int threads = 2;
  uint64_t max_shard_bytes = 5ull << 30;  // hf output: bytes per file
  bool quiet = false;
};

struct ConvertReport {
  int64_t tensors_written = 0;
  int files_written = 0;
  uint64_t bytes_read = 0;     // input tensor bytes used
  uint64_t bytes_written = 0;  // output tensor bytes
  double seconds = 0;
  int64_t peak_rss_kib = 0;
  int64_t lora_merged = 0;  // base tensors an adapter was applied to
};

// Converts the checkpoint in in_dir (layout `from`) to out_dir (layout
// `to`). Errors name the file and tensor: missing or extra tensors, shape
// or dtype mismatches with the config, corrupt files, missing rank files.
// Memory stays bounded by the bucket size: inputs are mmapped and output is
// produced bucket by bucket into temporary files renamed when complete.
absl::StatusOr<ConvertReport> Convert(const ConvertOptions& options);

// Checks the text of a sharded checkpoint's wsync_layout.json field by field
// (docs/convert.md); INVALID_ARGUMENT starting with `path` and naming the
// field otherwise. Never throws.
absl::Status ValidateLayoutManifest(const std::string& path, const std::string& text);

// The file name of a process in the sharded layouts.
std::string RankFileName(const layout::RankCoords& rank);

}  // namespace wsync::convert

#endif  // WSYNC_CLIENT_CONVERT_CONVERT_H_
