// The hf (whole tensors) and fsdp (dim-0 chunks) layouts. Both store MoE
// experts per expert (Transformers v4 checkpoints) or fused per layer
// (Transformers v5: mlp.experts.gate_up_proj [E, 2I, H] with gate rows
// first, and mlp.experts.down_proj [E, H, I]; Mixtral's block_sparse_moe
// becomes mlp), chosen by the option experts=per_expert|fused.
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout::internal {
namespace {

absl::StatusOr<bool> FusedExperts(const std::string& recipe, const RecipeOptions& options) {
  if (absl::Status s = CheckOptions(recipe, options, {"experts"}); !s.ok()) return s;
  auto it = options.find("experts");
  if (it == options.end() || it->second == "per_expert") return false;
  if (it->second == "fused") return true;
  return absl::InvalidArgumentError(absl::StrCat(recipe, " recipe option experts='", it->second,
                                                 "' must be per_expert or fused"));
}

// A buffer holding whole canonical tensors or stacked experts.
struct WholeBuffer {
  std::string name;
  Shape shape;
  std::vector<std::pair<std::string, Box>> pieces;  // canonical tensor (whole) at a box
};

// The model's buffers in checkpoint order, experts fused or not.
std::vector<WholeBuffer> WholeBuffers(const ModelSpec& model, const ModelConfig& c, bool fused) {
  std::vector<WholeBuffer> out;
  int64_t fused_layer = -1;
  for (const TensorSpec& t : model.tensors()) {
    int64_t l = -1;
    if (fused && c.IsMoe() && absl::StartsWith(t.name, "model.layers.") &&
        absl::SimpleAtoi(absl::string_view(t.name).substr(13, t.name.find('.', 13) - 13), &l)) {
      if (c.IsMoeLayer(l)) {
        const MoeNames n = MoeNamesFor(c, l);
        if (absl::StartsWith(t.name, n.expert_prefix)) {
          if (fused_layer == l) continue;
          fused_layer = l;
          const int64_t E = c.num_experts, I = c.ExpertSize(), H = c.hidden_size;
          const std::string layer = absl::StrCat("model.layers.", l, ".mlp.experts.");
          WholeBuffer gate_up{layer + "gate_up_proj", Shape::Of({E, 2 * I, H}), {}};
          WholeBuffer down{layer + "down_proj", Shape::Of({E, H, I}), {}};
          for (int64_t e = 0; e < E; ++e) {
            const std::string ep = absl::StrCat(n.expert_prefix, e, ".");
            gate_up.pieces.push_back({ep + n.gate + ".weight", Slab3(e, 0, I, 0, H)});
            gate_up.pieces.push_back({ep + n.up + ".weight", Slab3(e, I, I, 0, H)});
            down.pieces.push_back({ep + n.down + ".weight", Slab3(e, 0, H, 0, I)});
          }
          out.push_back(std::move(gate_up));
          out.push_back(std::move(down));
          continue;
        }
      }
    }
    std::string name = t.name;
    if (fused) name = absl::StrReplaceAll(name, {{".block_sparse_moe.", ".mlp."}});
    out.push_back({std::move(name), t.shape, {{t.name, Box::Whole(t.shape)}}});
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<ShardSpec>> Hf(const ModelSpec& model, const ModelConfig& c,
                                          const RecipeOptions& options, const RankCoords& r,
                                          DType dtype) {
  auto fused = FusedExperts("hf", options);
  if (!fused.ok()) return fused.status();
  if (r.world_size != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("the hf recipe is a single process of whole tensors; got ", r.ToString()));
  }
  Builder b(model, dtype);
  for (const WholeBuffer& w : WholeBuffers(model, c, *fused)) {
    b.Add(w.name, w.shape);
    for (const auto& [tensor, at] : w.pieces) {
      const int32_t id = model.Find(tensor);
      b.Map(b.Last(), tensor, Box::Whole(model.tensor(id).shape), at);
    }
  }
  return b.Finish();
}

absl::StatusOr<std::vector<ShardSpec>> Fsdp(const ModelSpec& model, const ModelConfig& c,
                                            const RecipeOptions& options, const RankCoords& r,
                                            DType dtype) {
  auto fused = FusedExperts("fsdp", options);
  if (!fused.ok()) return fused.status();
  if (r.tp_size * r.cp_size * r.pp_size != 1 || r.dp_size != r.world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the fsdp recipe shards over dp only; got ", r.ToString()));
  }
  Builder b(model, dtype);
  for (const WholeBuffer& w : WholeBuffers(model, c, *fused)) {
    // torch.chunk on dim 0: ceil(rows/dp) rows each, the last shorter or absent.
    const int64_t rows = w.shape.d[0];
    const int64_t chunk = (rows + r.dp_size - 1) / r.dp_size;
    const int64_t begin = r.dp * chunk;
    const int64_t end = std::min(rows, begin + chunk);
    if (end <= begin) continue;
    Shape local = w.shape;
    local.d[0] = end - begin;
    b.Add(w.name, local);
    for (const auto& [tensor, at] : w.pieces) {
      const int64_t lo = std::max(begin, at.off[0]), hi = std::min(end, at.off[0] + at.size[0]);
      if (hi <= lo) continue;
      Box canonical = Box::Whole(model.tensor(model.Find(tensor)).shape);
      Box shard = at;
      shard.off[0] = lo - begin;
      shard.size[0] = hi - lo;
      if (at.size[0] > 1 || at.ndim == canonical.ndim) {  // the piece's dim 0 is the tensor's dim 0
        canonical.off[0] = lo - at.off[0];
        canonical.size[0] = hi - lo;
      }
      b.Map(b.Last(), tensor, canonical, shard);
    }
  }
  return b.Finish();
}

}  // namespace wsync::layout::internal
