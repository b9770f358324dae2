#ifndef WSYNC_DAEMON_LAYOUT_TYPES_H_
#define WSYNC_DAEMON_LAYOUT_TYPES_H_

// The layout model: canonical tensors, boxes, pieces and shards.
//
// Every weight has a canonical form (the full tensor, in Hugging Face naming
// and layout). A shard is a buffer some rank holds, described as a list of
// pieces: each piece places a box of one canonical tensor at a box of the
// shard. The two boxes hold the same elements in the same order; their
// sizes agree once dimensions of size 1 are dropped, so a 2-d expert weight
// can sit at index e of a 3-d [experts, out, in] buffer.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace wsync::layout {

using kernels::DType;

inline constexpr int kMaxDims = 4;
// The most bytes one tensor, shard or model may hold (4 EiB): far above any
// real model, and low enough that no sum or product of sizes, offsets and
// element sizes below it overflows 64 bits.
inline constexpr uint64_t kMaxShapeBytes = uint64_t{1} << 62;

// A tensor shape of up to kMaxDims dimensions, each >= 1.
struct Shape {
  int32_t ndim = 0;
  int64_t d[kMaxDims] = {};

  static Shape Of(std::initializer_list<int64_t> dims);
  int64_t NumElements() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string ToString() const;  // "[4096, 11008]"
};

// An N-d box: size[i] elements from off[i] in dimension i.
struct Box {
  int32_t ndim = 0;
  int64_t off[kMaxDims] = {};
  int64_t size[kMaxDims] = {};

  // The box covering all of `shape`.
  static Box Whole(const Shape& shape);
  int64_t NumElements() const;
  bool Empty() const;
  bool Contains(const Box& inner) const;
  bool Overlaps(const Box& o) const;
  // The intersection (ndim 0 when empty). Boxes must have the same ndim.
  Box Intersect(const Box& o) const;
  bool InsideShape(const Shape& shape) const;
  bool operator==(const Box& o) const;
  std::string ToString() const;  // "[0:4, 8:16]" (half-open ranges)
};

// `outer` minus `inner` (inner inside outer), as at most 2*ndim disjoint boxes
// appended to `out`.
void SubtractBox(const Box& outer, const Box& inner, std::vector<Box>* out);

// A canonical tensor of a model.
struct TensorSpec {
  std::string name;
  Shape shape;
  DType dtype = DType::kF32;
  // Set on a derived tensor: the FP8 scales (fp32, one per group of
  // elements, layout/fp8_checkpoint.h) of the 2-d weight named here. Syncs
  // compute it while quantizing that weight into FP8 target buffers; no
  // source holds it.
  std::string scales_of;
};

// How a scale tensor groups its weight's elements (layout/fp8_checkpoint.h):
// one scale per 128 x 128 block ("X.weight_scale_inv" [ceil(rows/128),
// ceil(cols/128)]), per output channel, that is per row ("X.weight_scale"
// [rows, 1]), or per tensor ("X.weight_scale" [1, 1]).
enum class Fp8Scaling { kBlock, kChannel, kTensor };

// The elements one FP8 scale covers: `rows` x `cols` (the last group of a
// dimension may be smaller).
struct ScaleGroup {
  int64_t rows = 0, cols = 0;
};

// One piece of a shard: canonical box of `tensor` (an index into the
// model's tensor table) stored at `shard` box of the shard.
struct Piece {
  int32_t tensor = -1;
  Box canonical;
  Box shard;
};

// A buffer a rank holds.
struct ShardSpec {
  std::string name;
  Shape shape;
  DType dtype = DType::kBF16;
  std::vector<Piece> pieces;
};

// Checks a shape: 1 to kMaxDims dimensions, each >= 1, a known dtype, and
// at most kMaxShapeBytes bytes (checked without overflow). INVALID_ARGUMENT
// starting with `what`.
absl::Status CheckShape(const Shape& shape, DType dtype, const std::string& what);

// The canonical tensors of a model, looked up by index or name.
// Immutable once created; thread-safe.
class ModelSpec {
 public:
  ModelSpec() = default;

  // Rejects empty or duplicate names, bad shapes (CheckShape), reserved
  // dtypes, models over kMaxShapeBytes in all, and scale tensors that do not
  // fit their weight (unknown, not 2-d, itself derived, already scaled, not
  // fp32 of a scaling's shape: Fp8ScalingOf) with INVALID_ARGUMENT naming
  // the tensor.
  static absl::StatusOr<ModelSpec> Create(std::vector<TensorSpec> tensors);

  int32_t size() const { return static_cast<int32_t>(tensors_.size()); }
  const TensorSpec& tensor(int32_t i) const { return tensors_[i]; }
  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  // Index of `name`, or -1.
  int32_t Find(const std::string& name) const;
  // For a derived scale tensor, the weight it scales; else -1.
  int32_t ScalesOf(int32_t t) const { return scales_of_[t]; }
  // The derived scale tensor of weight `w`, or -1.
  int32_t ScaleTensorOf(int32_t w) const { return scale_tensor_[w]; }
  // For a weight with a scale tensor, how that groups its elements.
  Fp8Scaling ScalingOf(int32_t w) const { return scaling_[w]; }
  ScaleGroup ScaleGroupOf(int32_t w) const;
  // Sum of canonical sizes in bytes at each tensor's dtype.
  uint64_t TotalBytes() const;

 private:
  std::vector<TensorSpec> tensors_;
  absl::flat_hash_map<std::string, int32_t> index_;
  std::vector<int32_t> scales_of_, scale_tensor_;
  std::vector<Fp8Scaling> scaling_;
};

// Checks one shard against the model: shape and dtype, every piece's
// tensor, rank, bounds in the canonical tensor and in the shard, matching
// sizes, and no two pieces overlapping in the shard. INVALID_ARGUMENT with a
// message naming the shard, the tensor and both boxes or shapes.
absl::Status ValidateShard(const ModelSpec& model, const ShardSpec& shard);

// Checks that a buffer a client declared has the shape its recipe expects.
// INVALID_ARGUMENT naming the buffer and both shapes.
absl::Status CheckDeclaredShape(const ShardSpec& expected, const Shape& shape);

// CheckDeclaredShape, and the same dtype too.
absl::Status CheckDeclaredBuffer(const ShardSpec& expected, const Shape& shape, DType dtype);

// The parts of canonical tensors that no piece of `shards` covers, as
// "tensor 'name' [0:4, 8:16]", at most `limit` of them (checkpoint order);
// empty when every canonical byte has at least one holder. Derived scale
// tensors are skipped: syncs compute them, nothing holds them.
std::vector<std::string> UncoveredParts(const ModelSpec& model,
                                        const std::vector<const ShardSpec*>& shards, size_t limit);

// The index of the k-th dimension of `b` whose size is not 1, or -1. Boxes
// holding the same elements pair their non-unit dimensions in this order.
int NthNonUnitDim(const Box& b, int k);

// For piece p: maps canonical dimension i to the shard dimension holding it
// (-1 for a canonical dimension of size 1 in the piece). Requires a valid
// piece (ValidateShard).
void PieceDimMap(const Piece& p, int32_t map[kMaxDims]);

// Maps `sub`, a box inside p.canonical, to shard coordinates.
Box MapToShard(const Piece& p, const int32_t map[kMaxDims], const Box& sub);

// Parses "fp32"/"float32", "bf16"/"bfloat16", "fp16"/"float16",
// "fp8_e4m3" (also safetensors' F32/BF16/F16/F8_E4M3).
absl::StatusOr<DType> ParseDType(const std::string& text);

}  // namespace wsync::layout

#endif  // WSYNC_DAEMON_LAYOUT_TYPES_H_
