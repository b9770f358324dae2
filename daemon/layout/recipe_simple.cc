// The hf (whole canonical tensors) and fsdp (dim-0 chunks) layouts.
#include "absl/strings/str_cat.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout::internal {

absl::StatusOr<std::vector<ShardSpec>> Hf(const ModelSpec& model, const ModelConfig&,
                                          const RecipeOptions& options, const RankCoords& r,
                                          DType dtype) {
  if (absl::Status s = CheckOptions("hf", options, {}); !s.ok()) return s;
  if (r.tp_size * r.pp_size * r.ep_size * r.etp_size * r.dp_size != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the hf recipe is a single rank of whole tensors; got ", r.ToString()));
  }
  Builder b(model, dtype);
  for (const TensorSpec& t : model.tensors()) b.Whole(t.name, t.name);
  return b.Finish();
}

absl::StatusOr<std::vector<ShardSpec>> Fsdp(const ModelSpec& model, const ModelConfig&,
                                            const RecipeOptions& options, const RankCoords& r,
                                            DType dtype) {
  if (absl::Status s = CheckOptions("fsdp", options, {}); !s.ok()) return s;
  if (r.tp_size * r.pp_size * r.ep_size * r.etp_size != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the fsdp recipe shards over dp only; got ", r.ToString()));
  }
  Builder b(model, dtype);
  for (const TensorSpec& t : model.tensors()) {
    const int64_t rows = t.shape.d[0];
    const int64_t chunk = (rows + r.dp_size - 1) / r.dp_size;
    const int64_t begin = r.dp * chunk;
    const int64_t end = std::min(rows, begin + chunk);
    if (end <= begin) continue;  // torch.chunk gives trailing ranks nothing
    Shape local = t.shape;
    local.d[0] = end - begin;
    Box canonical = Box::Whole(t.shape);
    canonical.off[0] = begin;
    canonical.size[0] = end - begin;
    b.Add(t.name, local);
    b.Map(b.Last(), t.name, canonical, Box::Whole(local));
  }
  return b.Finish();
}

}  // namespace wsync::layout::internal
