#include "daemon/layout/recipe.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout {

namespace {

struct Dim {
  const char* name;
  int RankCoords::*index;
  int RankCoords::*size;
};
constexpr Dim kDense[] = {{"tp", &RankCoords::tp, &RankCoords::tp_size},
                          {"cp", &RankCoords::cp, &RankCoords::cp_size},
                          {"dp", &RankCoords::dp, &RankCoords::dp_size},
                          {"pp", &RankCoords::pp, &RankCoords::pp_size}};
constexpr Dim kExpert[] = {{"etp", &RankCoords::etp, &RankCoords::etp_size},
                           {"ep", &RankCoords::ep, &RankCoords::ep_size},
                           {"edp", &RankCoords::edp, &RankCoords::edp_size}};

std::string Dims(const RankCoords& r, const Dim* begin, const Dim* end) {
  std::string out;
  for (const Dim* d = begin; d != end; ++d) {
    if (r.*(d->size) > 1) absl::StrAppend(&out, out.empty() ? "" : ", ", d->name, " ", r.*(d->index), "/", r.*(d->size));
  }
  return out;
}

// a * b * c * d, or -1 past INT32_MAX.
int64_t Product(std::initializer_list<int64_t> v) {
  int64_t p = 1;
  for (int64_t x : v) {
    p *= x;
    if (p > INT32_MAX) return -1;
  }
  return p;
}

}  // namespace

std::string RankCoords::ToString() const {
  std::string dense = Dims(*this, std::begin(kDense), std::end(kDense));
  // Experts sharded like the dense TP ranks (the default) add nothing.
  const bool follows_tp = ep_size <= 1 && etp_size == tp_size && etp == tp;
  std::string expert = follows_tp ? "" : Dims(*this, std::begin(kExpert), std::end(kExpert));
  std::string inner = dense;
  if (!expert.empty()) absl::StrAppend(&inner, inner.empty() ? "" : "; ", expert);
  return absl::StrCat("rank ", rank, "/", world_size, inner.empty() ? "" : absl::StrCat(" (", inner, ")"));
}

bool RankCoords::SameSizes(const RankCoords& o) const {
  if (world_size != o.world_size) return false;
  for (const Dim& d : kDense) {
    if (this->*(d.size) != o.*(d.size)) return false;
  }
  for (const Dim& d : kExpert) {
    if (this->*(d.size) != o.*(d.size)) return false;
  }
  return true;
}

absl::Status CompleteRank(RankCoords* r) {
  for (const Dim& d : kDense) r->*(d.size) = std::max(1, r->*(d.size));
  for (const Dim& d : kExpert) r->*(d.size) = std::max(1, r->*(d.size));
  auto in_range = [r](const Dim& d) -> absl::Status {
    if (r->*(d.index) >= 0 && r->*(d.index) < r->*(d.size)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat("rank coordinate ", d.name, " = ", r->*(d.index),
                                                   " is outside [0, ", r->*(d.size), ")"));
  };
  for (const Dim& d : kDense) {
    if (absl::Status s = in_range(d); !s.ok()) return s;
  }
  for (const Dim& d : kExpert) {
    if (absl::Status s = in_range(d); !s.ok()) return s;
  }
  const int64_t dense = Product({r->tp_size, r->cp_size, r->dp_size, r->pp_size});
  if (dense < 0) return absl::InvalidArgumentError("the dense grid tp x cp x dp x pp is too large");
  if (r->world_size == 0) {
    r->world_size = static_cast<int>(dense);
    r->rank = r->tp + r->tp_size * (r->cp + r->cp_size * (r->dp + r->dp_size * r->pp));
  }
  const bool expert_default = r->etp_size == 1 && r->ep_size == 1 && r->edp_size == 1 && r->etp == 0 &&
                              r->ep == 0 && r->edp == 0;
  if (expert_default && r->world_size > r->pp_size) {
    r->etp_size = r->tp_size;
    r->etp = r->tp;
    r->edp_size = r->cp_size * r->dp_size;
    r->edp = r->dp * r->cp_size + r->cp;
  }
  if (r->world_size < 1 || r->rank < 0 || r->rank >= r->world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", r->rank, " is outside the world [0, ", r->world_size, ")"));
  }
  if (dense != r->world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the dense grid tp x cp x dp x pp = ", r->tp_size, " x ", r->cp_size, " x ", r->dp_size, " x ",
        r->pp_size, " = ", dense, " processes, but world_size is ", r->world_size));
  }
  const int64_t expert = Product({r->etp_size, r->ep_size, r->edp_size, r->pp_size});
  if (expert != r->world_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the expert grid etp x ep x edp x pp = ", r->etp_size, " x ", r->ep_size, " x ", r->edp_size,
        " x ", r->pp_size, " = ", expert, " processes, but world_size is ", r->world_size,
        " (both grids cover the same processes)"));
  }
  return absl::OkStatus();
}

const std::vector<std::string>& RecipeNames() {
  static const auto* names = new std::vector<std::string>{"megatron", "vllm", "hf", "fsdp"};
  return *names;
}

absl::StatusOr<std::vector<RankCoords>> EngineRanks(const std::string& recipe, const LayoutSizes& s) {
  for (auto [v, name] : {std::pair{s.tp, "tp"}, {s.cp, "cp"}, {s.dp, "dp"}, {s.pp, "pp"}}) {
    if (v < 1) return absl::InvalidArgumentError(absl::StrCat(recipe, " layout: ", name, " must be at least 1"));
  }
  if (s.ep < 0 || s.etp < 0) {
    return absl::InvalidArgumentError(absl::StrCat(recipe, " layout: ep and etp must not be negative"));
  }
  const int64_t world = Product({s.tp, s.cp, s.dp, s.pp});
  if (world < 0 || world > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(recipe, " layout: more than 65536 processes"));
  }
  std::vector<RankCoords> out(world);
  auto dense = [&](RankCoords& r, int tp, int cp, int dp, int pp) {
    r.world_size = static_cast<int>(world);
    r.tp = tp, r.tp_size = s.tp, r.cp = cp, r.cp_size = s.cp, r.dp = dp, r.dp_size = s.dp;
    r.pp = pp, r.pp_size = s.pp;
  };
  if (recipe == "megatron") {
    const int etp = s.etp == 0 ? s.tp : s.etp, ep = s.ep == 0 ? 1 : s.ep;
    if (world % (int64_t{etp} * ep * s.pp) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "megatron layout: etp x ep x pp = ", etp, " x ", ep, " x ", s.pp,
          " does not divide the world of tp x cp x dp x pp = ", world, " processes",
          s.etp == 0 ? " (etp defaults to tp, as Megatron-core's expert_tensor_parallel_size does; give "
                       "etp=1 for whole experts, or a larger dp)"
                     : ""));
    }
    const int edp = static_cast<int>(world / (int64_t{etp} * ep * s.pp));
    for (int r = 0; r < world; ++r) {
      RankCoords& c = out[r];
      c.rank = r;
      dense(c, r % s.tp, r / s.tp % s.cp, r / (s.tp * s.cp) % s.dp, r / (s.tp * s.cp * s.dp));
      c.etp = r % etp, c.etp_size = etp;
      c.ep = r / etp % ep, c.ep_size = ep;
      c.edp = r / (etp * ep) % edp, c.edp_size = edp;
    }
    return out;
  }
  if (recipe == "vllm") {
    if (s.cp != 1 || (s.etp != 0 && s.etp != 1)) {
      return absl::InvalidArgumentError(
          "vllm layout: cp and etp are not vLLM parallel sizes (experts are tensor-parallel over dp x tp, "
          "or expert-parallel with ep = tp x dp)");
    }
    const int flat = s.tp * s.dp;
    if (s.ep != 0 && s.ep != flat) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vllm layout: ep=", s.ep, " is not vLLM's expert-parallel size; with enable_expert_parallel "
          "it is tp x dp = ", flat, " (give ep=", flat, ", or no ep for tensor-parallel experts)"));
    }
    for (int dp = 0; dp < s.dp; ++dp)
      for (int pp = 0; pp < s.pp; ++pp)
        for (int tp = 0; tp < s.tp; ++tp) {
          const int r = (dp * s.pp + pp) * s.tp + tp;
          RankCoords& c = out[r];
          c.rank = r;
          dense(c, tp, 0, dp, pp);
          if (s.ep != 0) {
            c.ep = dp * s.tp + tp, c.ep_size = flat;
          } else {
            c.etp = dp * s.tp + tp, c.etp_size = flat;
          }
        }
    return out;
  }
  if (recipe == "hf" || recipe == "fsdp") {
    if (s.tp * s.cp * s.pp != 1 || s.ep > 1 || s.etp > 1 || (recipe == "hf" && s.dp != 1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          recipe == "hf" ? "the hf layout is one process of whole tensors"
                         : "the fsdp layout shards over dp only",
          "; got tp=", s.tp, ", cp=", s.cp, ", dp=", s.dp, ", pp=", s.pp, ", ep=", s.ep, ", etp=", s.etp));
    }
    for (int r = 0; r < world; ++r) {
      dense(out[r], 0, 0, r, 0);
      out[r].rank = r;
      out[r].edp = r, out[r].edp_size = s.dp;
    }
    return out;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown recipe '", recipe, "' (known: megatron, vllm, hf, fsdp)"));
}

namespace internal {

absl::StatusOr<int64_t> IntOption(const RecipeOptions& options, const std::string& key,
                                  int64_t fallback) {
  auto it = options.find(key);
  if (it == options.end()) return fallback;
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v) || v < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("recipe option ", key, "='", it->second, "' must be a positive integer"));
  }
  return v;
}

absl::Status CheckOptions(const std::string& recipe, const RecipeOptions& options,
                          const std::vector<std::string>& known) {
  for (const auto& [k, v] : options) {
    if (std::find(known.begin(), known.end(), k) == known.end()) {
      std::string list;
      for (const auto& n : known) absl::StrAppend(&list, list.empty() ? "" : ", ", n);
      return absl::InvalidArgumentError(absl::StrCat("unknown ", recipe, " recipe option '", k,
                                                     "' (known: ", list.empty() ? "none" : list,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

absl::Status Divides(int64_t n, int64_t size, const std::string& what, const std::string& by) {
  if (size >= 1 && n % size == 0) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " (", n, ") is not divisible by ", by, " (", size, ")"));
}

Builder::Builder(const ModelSpec& model, DType dtype) : model_(model), dtype_(dtype) {}

ShardSpec* Builder::Add(std::string name, Shape shape) {
  shards_.push_back(ShardSpec{std::move(name), shape, dtype_, {}});
  return &shards_.back();
}

void Builder::Map(size_t shard, const std::string& tensor, const Box& canonical, const Box& at) {
  if (!status_.ok()) return;
  int32_t id = model_.Find(tensor);
  if (id < 0) {
    status_ = absl::NotFoundError(absl::StrCat("recipe needs canonical tensor '", tensor,
                                               "', which the model does not have (shard '",
                                               shards_[shard].name, "')"));
    return;
  }
  shards_[shard].pieces.push_back(Piece{id, canonical, at});
}

void Builder::Whole(const std::string& shard_name, const std::string& tensor) {
  int32_t id = model_.Find(tensor);
  if (id < 0) {
    if (status_.ok()) {
      status_ = absl::NotFoundError(absl::StrCat("recipe needs canonical tensor '", tensor,
                                                 "', which the model does not have"));
    }
    return;
  }
  const Shape& s = model_.tensor(id).shape;
  Add(shard_name, s);
  Map(Last(), tensor, Box::Whole(s), Box::Whole(s));
}

absl::StatusOr<std::vector<ShardSpec>> Builder::Finish() {
  if (!status_.ok()) return status_;
  for (const ShardSpec& s : shards_) {
    if (absl::Status st = ValidateShard(model_, s); !st.ok()) {
      return absl::InternalError(absl::StrCat("recipe produced an invalid shard: ", st.message()));
    }
  }
  return std::move(shards_);
}

Box Rows(int64_t off, int64_t n, int64_t cols) {
  Box b;
  b.ndim = 2;
  b.off[0] = off;
  b.size[0] = n;
  b.size[1] = cols;
  return b;
}

Box Cols(int64_t rows, int64_t off, int64_t n) {
  Box b;
  b.ndim = 2;
  b.size[0] = rows;
  b.off[1] = off;
  b.size[1] = n;
  return b;
}

Box Range(int64_t off, int64_t n) {
  Box b;
  b.ndim = 1;
  b.off[0] = off;
  b.size[0] = n;
  return b;
}

Box Slab3(int64_t index, int64_t row_off, int64_t rows, int64_t col_off, int64_t cols) {
  Box b;
  b.ndim = 3;
  b.off[0] = index;
  b.size[0] = 1;
  b.off[1] = row_off;
  b.size[1] = rows;
  b.off[2] = col_off;
  b.size[2] = cols;
  return b;
}

void VocabRows(Builder& b, size_t shard, const std::string& tensor, int64_t vocab,
               int64_t padded, int tp, int tp_size, int64_t hidden) {
  const int64_t per = padded / tp_size;
  const int64_t begin = tp * per;
  const int64_t end = std::min(vocab, begin + per);
  if (end > begin) b.Map(shard, tensor, Rows(begin, end - begin, hidden), Rows(0, end - begin, hidden));
}

}  // namespace internal

absl::StatusOr<int64_t> PaddedVocab(const std::string& recipe, const RecipeOptions& options,
                                    int64_t vocab, int tp_size) {
  int64_t multiple = 1;
  if (recipe == "megatron") {
    auto m = internal::IntOption(options, "make_vocab_size_divisible_by", 128);
    if (!m.ok()) return m.status();
    multiple = *m * std::max(1, tp_size);
  } else if (recipe == "vllm") {
    auto m = internal::IntOption(options, "vocab_padding", 64);
    if (!m.ok()) return m.status();
    multiple = *m;
  }
  return (vocab + multiple - 1) / multiple * multiple;
}

absl::StatusOr<std::vector<ShardSpec>> BuildShards(const ModelSpec& model,
                                                   const ModelConfig& input,
                                                   const std::string& recipe,
                                                   const RecipeOptions& options,
                                                   const RankCoords& in_rank, DType dtype) {
  ModelConfig config = input;
  if (absl::Status s = NormalizeConfig(&config); !s.ok()) return s;
  RankCoords r = in_rank;
  if (absl::Status st = CompleteRank(&r); !st.ok()) return st;
  if (recipe == "megatron") return internal::Megatron(model, config, options, r, dtype);
  // Generator layouts also offer the buffers of FP8 block scales, where the
  // model has them (the trainer's never hold them).
  auto with_scales = [&](absl::StatusOr<std::vector<ShardSpec>> shards) -> absl::StatusOr<std::vector<ShardSpec>> {
    if (!shards.ok()) return shards;
    const size_t n = shards->size();
    for (size_t i = 0; i < n; ++i) {
      if (auto sc = Fp8ScaleShard(model, (*shards)[i])) shards->push_back(*std::move(sc));
    }
    return shards;
  };
  if (recipe == "vllm") return with_scales(internal::Vllm(model, config, options, r, dtype));
  if (recipe == "hf") return with_scales(internal::Hf(model, config, options, r, dtype));
  if (recipe == "fsdp") return internal::Fsdp(model, config, options, r, dtype);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown recipe '", recipe, "' (known: megatron, vllm, hf, fsdp)"));
}

}  // namespace wsync::layout
