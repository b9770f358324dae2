#include "daemon/layout/recipe.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/layout/recipe_internal.h"

namespace wsync::layout {

std::string RankCoords::ToString() const {
  return absl::StrCat("tp", tp, "/", tp_size, " pp", pp, "/", pp_size, " ep", ep, "/", ep_size,
                      " etp", etp, "/", etp_size, " dp", dp, "/", dp_size);
}

const std::vector<std::string>& RecipeNames() {
  static const auto* names = new std::vector<std::string>{"megatron", "vllm", "hf", "fsdp"};
  return *names;
}

std::vector<RankCoords> AllRanks(const RankCoords& s) {
  std::vector<RankCoords> out;
  RankCoords r = s;
  for (r.dp = 0; r.dp < std::max(1, s.dp_size); ++r.dp)
    for (r.pp = 0; r.pp < std::max(1, s.pp_size); ++r.pp)
      for (r.ep = 0; r.ep < std::max(1, s.ep_size); ++r.ep)
        for (r.etp = 0; r.etp < std::max(1, s.etp_size); ++r.etp)
          for (r.tp = 0; r.tp < std::max(1, s.tp_size); ++r.tp) out.push_back(r);
  return out;
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
  for (auto [idx, size, name] :
       {std::tuple{&r.tp, &r.tp_size, "tp"}, {&r.pp, &r.pp_size, "pp"}, {&r.ep, &r.ep_size, "ep"},
        {&r.etp, &r.etp_size, "etp"}, {&r.dp, &r.dp_size, "dp"}}) {
    if (*size < 1) *size = 1;
    if (*idx < 0 || *idx >= *size) {
      return absl::InvalidArgumentError(absl::StrCat("rank coordinate ", name, " = ", *idx,
                                                     " is outside [0, ", *size, ")"));
    }
  }
  if (recipe == "megatron") return internal::Megatron(model, config, options, r, dtype);
  if (recipe == "vllm") return internal::Vllm(model, config, options, r, dtype);
  if (recipe == "hf") return internal::Hf(model, config, options, r, dtype);
  if (recipe == "fsdp") return internal::Fsdp(model, config, options, r, dtype);
  return absl::InvalidArgumentError(
      absl::StrCat("unknown recipe '", recipe, "' (known: megatron, vllm, hf, fsdp)"));
}

}  // namespace wsync::layout
