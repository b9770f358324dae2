#ifndef WSYNC_DAEMON_LAYOUT_RECIPE_INTERNAL_H_
#define WSYNC_DAEMON_LAYOUT_RECIPE_INTERNAL_H_

// Helpers shared by the recipe implementations. Not part of the layout API.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/layout/recipe.h"

namespace wsync::layout::internal {

absl::StatusOr<int64_t> IntOption(const RecipeOptions& options, const std::string& key,
                                  int64_t fallback);
absl::Status CheckOptions(const std::string& recipe, const RecipeOptions& options,
                          const std::vector<std::string>& known);
// INVALID_ARGUMENT "<what> (n) is not divisible by <by> (size)" unless it is.
absl::Status Divides(int64_t n, int64_t size, const std::string& what, const std::string& by);

// Accumulates shards; the first error sticks and is returned by Finish.
class Builder {
 public:
  Builder(const ModelSpec& model, DType dtype);
  ShardSpec* Add(std::string name, Shape shape);
  size_t Last() const { return shards_.size() - 1; }
  // Adds a piece of canonical tensor `tensor` to shard #shard.
  void Map(size_t shard, const std::string& tensor, const Box& canonical, const Box& at);
  // A shard that is a whole canonical tensor.
  void Whole(const std::string& shard_name, const std::string& tensor);
  void Fail(absl::Status s) {
    if (status_.ok()) status_ = std::move(s);
  }
  absl::StatusOr<std::vector<ShardSpec>> Finish();

 private:
  const ModelSpec& model_;
  DType dtype_;
  std::vector<ShardSpec> shards_;
  absl::Status status_;
};

Box Rows(int64_t off, int64_t n, int64_t cols);   // rows [off, off+n) of a 2-d tensor
Box Cols(int64_t rows, int64_t off, int64_t n);   // cols [off, off+n) of a 2-d tensor
Box Range(int64_t off, int64_t n);                // 1-d
Box Slab3(int64_t index, int64_t row_off, int64_t rows, int64_t col_off, int64_t cols);

// Vocab-parallel rows of rank tp: padded/tp_size rows from tp*padded/tp_size;
// rows at or beyond `vocab` are padding (no piece).
void VocabRows(Builder& b, size_t shard, const std::string& tensor, int64_t vocab,
               int64_t padded, int tp, int tp_size, int64_t hidden);

absl::StatusOr<std::vector<ShardSpec>> Megatron(const ModelSpec&, const ModelConfig&,
                                                const RecipeOptions&, const RankCoords&, DType);
absl::StatusOr<std::vector<ShardSpec>> Vllm(const ModelSpec&, const ModelConfig&,
                                            const RecipeOptions&, const RankCoords&, DType);
absl::StatusOr<std::vector<ShardSpec>> Hf(const ModelSpec&, const ModelConfig&,
                                          const RecipeOptions&, const RankCoords&, DType);
absl::StatusOr<std::vector<ShardSpec>> Fsdp(const ModelSpec&, const ModelConfig&,
                                            const RecipeOptions&, const RankCoords&, DType);

}  // namespace wsync::layout::internal

#endif  // WSYNC_DAEMON_LAYOUT_RECIPE_INTERNAL_H_
