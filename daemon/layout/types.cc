#include "daemon/layout/types.h"

#include <algorithm>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/layout/fp8_checkpoint.h"

namespace wsync::layout {

Shape Shape::Of(std::initializer_list<int64_t> dims) {
  Shape s;
  for (int64_t v : dims) s.d[s.ndim++] = v;
  return s;
}

int64_t Shape::NumElements() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= d[i];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i) {
    if (d[i] != o.d[i]) return false;
  }
  return true;
}

std::string Shape::ToString() const {
  return absl::StrCat("[", absl::StrJoin(d, d + ndim, ", "), "]");
}

Box Box::Whole(const Shape& shape) {
  Box b;
  b.ndim = shape.ndim;
  for (int i = 0; i < shape.ndim; ++i) b.size[i] = shape.d[i];
  return b;
}

int64_t Box::NumElements() const {
  if (ndim == 0) return 0;
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= size[i];
  return n;
}

bool Box::Empty() const { return NumElements() == 0; }

bool Box::Contains(const Box& in) const {
  if (in.ndim != ndim) return false;
  for (int i = 0; i < ndim; ++i) {
    if (in.off[i] < off[i] || in.off[i] + in.size[i] > off[i] + size[i]) return false;
  }
  return true;
}

bool Box::Overlaps(const Box& o) const {
  if (o.ndim != ndim || ndim == 0) return false;
  for (int i = 0; i < ndim; ++i) {
    if (o.off[i] >= off[i] + size[i] || off[i] >= o.off[i] + o.size[i]) return false;
  }
  return true;
}

Box Box::Intersect(const Box& o) const {
  Box r;
  if (o.ndim != ndim) return r;
  r.ndim = ndim;
  for (int i = 0; i < ndim; ++i) {
    int64_t lo = std::max(off[i], o.off[i]);
    int64_t hi = std::min(off[i] + size[i], o.off[i] + o.size[i]);
    if (hi <= lo) return Box();
    r.off[i] = lo;
    r.size[i] = hi - lo;
  }
  return r;
}

bool Box::InsideShape(const Shape& shape) const {
  if (shape.ndim != ndim) return false;
  for (int i = 0; i < ndim; ++i) {
    // Written so that no sum can overflow, whatever a client sent.
    if (off[i] < 0 || size[i] < 1 || size[i] > shape.d[i] || off[i] > shape.d[i] - size[i]) return false;
  }
  return true;
}

bool Box::operator==(const Box& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i) {
    if (off[i] != o.off[i] || size[i] != o.size[i]) return false;
  }
  return true;
}

std::string Box::ToString() const {
  std::string s = "[";
  for (int i = 0; i < ndim; ++i) {
    int64_t end;
    if (__builtin_add_overflow(off[i], size[i], &end)) {
      absl::StrAppend(&s, i ? ", " : "", off[i], ":+", size[i]);  // a hostile box: no wrapped end
    } else {
      absl::StrAppend(&s, i ? ", " : "", off[i], ":", end);
    }
  }
  return s + "]";
}

std::vector<std::string> UncoveredParts(const ModelSpec& model,
                                        const std::vector<const ShardSpec*>& shards, size_t limit) {
  std::vector<std::vector<const Box*>> held(model.size());
  for (const ShardSpec* s : shards) {
    for (const Piece& p : s->pieces) {
      if (p.tensor >= 0 && p.tensor < model.size()) held[p.tensor].push_back(&p.canonical);
    }
  }
  std::vector<std::string> out;
  for (int32_t t = 0; t < model.size() && out.size() < limit; ++t) {
    if (model.ScalesOf(t) >= 0) continue;
    std::vector<Box> left = {Box::Whole(model.tensor(t).shape)}, next;
    for (const Box* h : held[t]) {
      next.clear();
      for (const Box& b : left) {
        if (!b.Overlaps(*h)) {
          next.push_back(b);
        } else {
          SubtractBox(b, b.Intersect(*h), &next);
        }
      }
      left.swap(next);
      if (left.empty()) break;
    }
    for (const Box& b : left) {
      if (out.size() == limit) break;
      out.push_back(absl::StrCat("tensor '", model.tensor(t).name, "' ", b.ToString()));
    }
  }
  return out;
}

void SubtractBox(const Box& outer, const Box& inner, std::vector<Box>* out) {
  Box rest = outer;
  for (int d = 0; d < outer.ndim; ++d) {
    if (inner.off[d] > rest.off[d]) {
      Box below = rest;
      below.size[d] = inner.off[d] - rest.off[d];
      out->push_back(below);
    }
    int64_t rest_end = rest.off[d] + rest.size[d];
    int64_t inner_end = inner.off[d] + inner.size[d];
    if (inner_end < rest_end) {
      Box above = rest;
      above.off[d] = inner_end;
      above.size[d] = rest_end - inner_end;
      out->push_back(above);
    }
    rest.off[d] = inner.off[d];
    rest.size[d] = inner.size[d];
  }
}

absl::Status CheckShape(const Shape& shape, DType dtype, const std::string& what) {
  if (shape.ndim < 1 || shape.ndim > kMaxDims) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": rank ", shape.ndim, " outside [1, ", kMaxDims, "]"));
  }
  uint64_t bytes = kernels::DTypeSize(dtype);
  if (bytes == 0) return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype"));
  for (int d = 0; d < shape.ndim; ++d) {
    if (shape.d[d] < 1) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", shape.ToString(), " has a dimension < 1"));
    }
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(shape.d[d]), &bytes) || bytes > kMaxShapeBytes) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", shape.ToString(), " of ",
                                                     kernels::DTypeName(dtype), " is larger than ", kMaxShapeBytes,
                                                     " bytes"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelSpec> ModelSpec::Create(std::vector<TensorSpec> tensors) {
  ModelSpec m;
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = tensors[i];
    if (t.name.empty()) return absl::InvalidArgumentError(absl::StrCat("tensor #", i, " has no name"));
    if (absl::Status s = CheckShape(t.shape, t.dtype, absl::StrCat("tensor '", t.name, "'")); !s.ok()) return s;
    total += static_cast<uint64_t>(t.shape.NumElements()) * kernels::DTypeSize(t.dtype);
    if (total > kMaxShapeBytes) {
      return absl::InvalidArgumentError(absl::StrCat("the model's tensors up to '", t.name, "' hold more than ",
                                                     kMaxShapeBytes, " bytes"));
    }
    if (!m.index_.emplace(t.name, static_cast<int32_t>(i)).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
  }
  m.scales_of_.assign(tensors.size(), -1);
  m.scale_tensor_.assign(tensors.size(), -1);
  m.scaling_.assign(tensors.size(), Fp8Scaling::kBlock);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = tensors[i];
    if (t.scales_of.empty()) continue;
    const std::string what = absl::StrCat("scale tensor '", t.name, "' of '", t.scales_of, "'");
    const int32_t w = m.Find(t.scales_of);
    if (w < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": the model has no such tensor"));
    const TensorSpec& wt = tensors[w];
    if (!wt.scales_of.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": that is a scale tensor itself"));
    if (wt.shape.ndim != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": FP8 scales are for 2-d weights, not ", wt.shape.ToString()));
    }
    const std::optional<Fp8Scaling> scaling = Fp8ScalingOf(t.name, t.shape, wt.shape);
    if (t.dtype != DType::kF32 || !scaling) {
      std::string want;
      for (Fp8Scaling sc : Fp8ScalingsNamed(t.name)) {
        absl::StrAppend(&want, want.empty() ? "" : ", or ", Fp8ScaleShape(wt.shape, sc).ToString(), " (",
                        Fp8ScalingName(sc), ")");
      }
      return absl::InvalidArgumentError(absl::StrCat(what, " is ", kernels::DTypeName(t.dtype), " ",
                                                     t.shape.ToString(), "; its scales of ", wt.shape.ToString(),
                                                     " are fp32 ", want));
    }
    m.scaling_[w] = *scaling;
    if (m.scale_tensor_[w] >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": '", tensors[m.scale_tensor_[w]].name, "' already holds its scales"));
    }
    m.scales_of_[i] = w;
    m.scale_tensor_[w] = static_cast<int32_t>(i);
  }
  m.tensors_ = std::move(tensors);
  return m;
}

int32_t ModelSpec::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? -1 : it->second;
}

ScaleGroup ModelSpec::ScaleGroupOf(int32_t w) const {
  const Shape& s = tensors_[w].shape;
  return Fp8GroupOf(scaling_[w], s.ndim >= 2 ? s.d[s.ndim - 2] : 1, s.d[s.ndim - 1]);
}

uint64_t ModelSpec::TotalBytes() const {
  uint64_t total = 0;
  for (const TensorSpec& t : tensors_) total += t.shape.NumElements() * kernels::DTypeSize(t.dtype);
  return total;
}

namespace {

// Non-unit sizes of a box, in order.
int NonUnit(const Box& b, int64_t* sizes) {
  int n = 0;
  for (int i = 0; i < b.ndim; ++i) {
    if (b.size[i] != 1) sizes[n++] = b.size[i];
  }
  return n;
}

}  // namespace

absl::Status ValidateShard(const ModelSpec& model, const ShardSpec& shard) {
  const std::string where = absl::StrCat("shard '", shard.name, "'");
  if (absl::Status s = CheckShape(shard.shape, shard.dtype, where); !s.ok()) return s;
  for (size_t i = 0; i < shard.pieces.size(); ++i) {
    const Piece& p = shard.pieces[i];
    if (p.tensor < 0 || p.tensor >= model.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": piece ", i, " refers to unknown tensor #", p.tensor));
    }
    const TensorSpec& t = model.tensor(p.tensor);
    const std::string pw = absl::StrCat(where, ": piece ", i, " of '", t.name, "'");
    if (!p.canonical.InsideShape(t.shape)) {
      return absl::InvalidArgumentError(absl::StrCat(pw, ": canonical box ", p.canonical.ToString(),
                                                     " is outside the tensor's shape ",
                                                     t.shape.ToString()));
    }
    if (!p.shard.InsideShape(shard.shape)) {
      return absl::InvalidArgumentError(absl::StrCat(pw, ": shard box ", p.shard.ToString(),
                                                     " is outside the shard's shape ",
                                                     shard.shape.ToString()));
    }
    int64_t a[kMaxDims], b[kMaxDims];
    int na = NonUnit(p.canonical, a), nb = NonUnit(p.shard, b);
    if (na != nb || !std::equal(a, a + na, b)) {
      return absl::InvalidArgumentError(absl::StrCat(
          pw, ": canonical box ", p.canonical.ToString(), " and shard box ", p.shard.ToString(),
          " have different sizes (they must agree once size-1 dimensions are dropped)"));
    }
  }
  // Overlaps: sort by first-dimension offset and compare neighbours whose
  // first-dimension ranges intersect.
  std::vector<size_t> order(shard.pieces.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return shard.pieces[x].shard.off[0] < shard.pieces[y].shard.off[0];
  });
  for (size_t i = 0; i < order.size(); ++i) {
    const Box& bi = shard.pieces[order[i]].shard;
    for (size_t j = i + 1; j < order.size(); ++j) {
      const Box& bj = shard.pieces[order[j]].shard;
      if (bj.off[0] >= bi.off[0] + bi.size[0]) break;
      if (bi.Overlaps(bj)) {
        size_t x = std::min(order[i], order[j]), y = std::max(order[i], order[j]);
        return absl::InvalidArgumentError(absl::StrCat(
            where, ": pieces ", x, " ('", model.tensor(shard.pieces[x].tensor).name, "' at ",
            shard.pieces[x].shard.ToString(), ") and ", y, " ('",
            model.tensor(shard.pieces[y].tensor).name, "' at ", shard.pieces[y].shard.ToString(),
            ") overlap"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckDeclaredShape(const ShardSpec& expected, const Shape& shape) {
  if (shape != expected.shape) {
    return absl::InvalidArgumentError(absl::StrCat("buffer '", expected.name, "': shape ",
                                                   shape.ToString(), " does not match the expected ",
                                                   expected.shape.ToString()));
  }
  return absl::OkStatus();
}

absl::Status CheckDeclaredBuffer(const ShardSpec& expected, const Shape& shape, DType dtype) {
  if (absl::Status s = CheckDeclaredShape(expected, shape); !s.ok()) return s;
  if (dtype != expected.dtype) {
    return absl::InvalidArgumentError(absl::StrCat("buffer '", expected.name, "': dtype ",
                                                   kernels::DTypeName(dtype),
                                                   " does not match the expected ",
                                                   kernels::DTypeName(expected.dtype)));
  }
  return absl::OkStatus();
}

int NthNonUnitDim(const Box& b, int k) {
  for (int i = 0; i < b.ndim; ++i) {
    if (b.size[i] != 1 && k-- == 0) return i;
  }
  return -1;
}

void PieceDimMap(const Piece& p, int32_t map[kMaxDims]) {
  int k = 0;
  for (int c = 0; c < p.canonical.ndim; ++c) {
    map[c] = p.canonical.size[c] == 1 ? -1 : NthNonUnitDim(p.shard, k++);
  }
}

Box MapToShard(const Piece& p, const int32_t map[kMaxDims], const Box& sub) {
  Box out = p.shard;
  for (int c = 0; c < p.canonical.ndim; ++c) {
    if (map[c] < 0) continue;
    out.off[map[c]] = p.shard.off[map[c]] + (sub.off[c] - p.canonical.off[c]);
    out.size[map[c]] = sub.size[c];
  }
  return out;
}

absl::StatusOr<DType> ParseDType(const std::string& text) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "fp32" || t == "float32" || t == "f32" || t == "float") return DType::kF32;
  if (t == "bf16" || t == "bfloat16") return DType::kBF16;
  if (t == "fp16" || t == "float16" || t == "f16" || t == "half") return DType::kF16;
  if (t == "fp8_e4m3" || t == "f8_e4m3" || t == "float8_e4m3fn") return DType::kF8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", text, "' (expected fp32, bf16, fp16 or fp8_e4m3)"));
}

}  // namespace wsync::layout
