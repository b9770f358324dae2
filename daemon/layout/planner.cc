#include "daemon/layout/planner.h"

#include <algorithm>
#include <cstdio>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "kernels/digest.h"

namespace wsync::layout {
namespace {

struct SourceRef {
  uint32_t endpoint, shard, piece;
};

int Locality(const Location& a, const Location& b) {
  if (a.node != b.node) return 2;
  if (a.device == b.device) return 0;
  return 1;
}

// Splits an op whose bytes exceed `max_bytes` along its outermost non-unit
// destination dimension (and further in if one slab is still too big).
void SplitOp(const CopyOp& op, uint64_t elem_bytes, uint64_t max_bytes, std::vector<CopyOp>* out) {
  uint64_t bytes = op.dst_box.NumElements() * elem_bytes;
  if (bytes <= max_bytes) {
    out->push_back(op);
    return;
  }
  const int dd = NthNonUnitDim(op.dst_box, 0);
  const int64_t n = op.dst_box.size[dd];
  const uint64_t slab = bytes / n;
  const int64_t per = std::max<int64_t>(1, static_cast<int64_t>(max_bytes / std::max<uint64_t>(slab, 1)));
  for (int64_t start = 0; start < n; start += per) {
    Box window = op.dst_box;
    window.off[dd] += start;
    window.size[dd] = std::min(per, n - start);
    CopyOp part;
    ClipCopy(op, window, &part);
    SplitOp(part, elem_bytes, max_bytes, out);
  }
}

void HashU64(kernels::DigestSums* sums, uint64_t* word, uint64_t v) {
  kernels::DigestTerm(v, (*word)++, sums);
}

void HashBox(kernels::DigestSums* s, uint64_t* w, const Box& b) {
  HashU64(s, w, static_cast<uint64_t>(b.ndim));
  for (int i = 0; i < b.ndim; ++i) {
    HashU64(s, w, static_cast<uint64_t>(b.off[i]));
    HashU64(s, w, static_cast<uint64_t>(b.size[i]));
  }
}

void HashString(kernels::DigestSums* s, uint64_t* w, const std::string& str) {
  kernels::DigestSums part = kernels::DigestPartial(str.data(), str.size(), 0);
  HashU64(s, w, part.s1 ^ str.size());
  HashU64(s, w, part.s2);
}

}  // namespace

bool ClipCopy(const CopyOp& op, const Box& window, CopyOp* out) {
  Box in = op.dst_box.Intersect(window);
  if (in.ndim == 0) return false;
  *out = op;
  out->dst_box = in;
  // Non-unit dimensions pair up in order across the three boxes.
  for (int k = 0;; ++k) {
    const int d = NthNonUnitDim(op.dst_box, k);
    if (d < 0) break;
    const int s = NthNonUnitDim(op.src_box, k);
    const int c = NthNonUnitDim(op.canonical, k);
    const int64_t shift = in.off[d] - op.dst_box.off[d];
    out->src_box.off[s] += shift;
    out->src_box.size[s] = in.size[d];
    out->canonical.off[c] += shift;
    out->canonical.size[c] = in.size[d];
  }
  return true;
}

uint64_t BoxBytes(const Box& box, DType dtype) {
  return static_cast<uint64_t>(box.NumElements()) * kernels::DTypeSize(dtype);
}

std::string Plan::HashHex() const {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(hash));
  return buf;
}

absl::StatusOr<Plan> BuildPlan(const ModelSpec& model, const std::vector<Endpoint>& sources,
                               const std::vector<Endpoint>& targets, const PlanOptions& options) {
  if (options.max_bucket_bytes < 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_bucket_bytes must be >= 64, got ", options.max_bucket_bytes));
  }
  {
    absl::flat_hash_set<std::string> ids;
    for (const auto* list : {&sources, &targets}) {
      for (const Endpoint& e : *list) {
        if (!ids.insert(e.id).second) {
          return absl::InvalidArgumentError(absl::StrCat("duplicate endpoint id '", e.id, "'"));
        }
      }
    }
  }
  // Source pieces per canonical tensor.
  std::vector<std::vector<SourceRef>> by_tensor(model.size());
  for (uint32_t e = 0; e < sources.size(); ++e) {
    for (uint32_t s = 0; s < sources[e].shards.size(); ++s) {
      const auto& pieces = sources[e].shards[s].pieces;
      for (uint32_t p = 0; p < pieces.size(); ++p) by_tensor[pieces[p].tensor].push_back({e, s, p});
    }
  }

  std::vector<uint64_t> load(sources.size(), 0);
  std::vector<CopyOp> raw;
  std::vector<std::string> uncovered;
  size_t uncovered_count = 0;
  std::vector<Box> remaining, next;
  std::vector<std::pair<uint64_t, const SourceRef*>> candidates;
  Plan plan;

  for (uint32_t te = 0; te < targets.size(); ++te) {
    const Endpoint& target = targets[te];
    for (uint32_t ts = 0; ts < target.shards.size(); ++ts) {
      const ShardSpec& tshard = target.shards[ts];
      const uint64_t elem = kernels::DTypeSize(tshard.dtype);
      // Padding: the shard minus its pieces.
      std::vector<Box> pad = {Box::Whole(tshard.shape)};
      for (const Piece& tp : tshard.pieces) {
        next.clear();
        for (const Box& b : pad) {
          Box in = b.Intersect(tp.shard);
          if (in.ndim == 0) {
            next.push_back(b);
          } else {
            SubtractBox(b, in, &next);
          }
        }
        pad.swap(next);
      }
      for (const Box& b : pad) plan.fills.push_back({te, ts, b});

      for (const Piece& tp : tshard.pieces) {
        if (model.ScalesOf(tp.tensor) >= 0) continue;  // computed by the sync, from no source
        int32_t tmap[kMaxDims];
        PieceDimMap(tp, tmap);
        candidates.clear();
        for (const SourceRef& ref : by_tensor[tp.tensor]) {
          const Piece& sp = sources[ref.endpoint].shards[ref.shard].pieces[ref.piece];
          if (!sp.canonical.Overlaps(tp.canonical)) continue;
          uint64_t key = (static_cast<uint64_t>(Locality(sources[ref.endpoint].location,
                                                         target.location))
                          << 62) |
                         std::min<uint64_t>(load[ref.endpoint], (1ull << 62) - 1);
          candidates.push_back({key, &ref});
        }
        std::stable_sort(candidates.begin(), candidates.end(),
                         [](const auto& a, const auto& b) { return a.first < b.first; });
        remaining.assign(1, tp.canonical);
        for (const auto& [key, ref] : candidates) {
          if (remaining.empty()) break;
          const Piece& sp = sources[ref->endpoint].shards[ref->shard].pieces[ref->piece];
          int32_t smap[kMaxDims];
          PieceDimMap(sp, smap);
          next.clear();
          for (const Box& rem : remaining) {
            Box in = rem.Intersect(sp.canonical);
            if (in.ndim == 0) {
              next.push_back(rem);
              continue;
            }
            CopyOp op;
            op.src_endpoint = ref->endpoint;
            op.src_shard = ref->shard;
            op.dst_endpoint = te;
            op.dst_shard = ts;
            op.tensor = tp.tensor;
            op.canonical = in;
            op.src_box = MapToShard(sp, smap, in);
            op.dst_box = MapToShard(tp, tmap, in);
            load[ref->endpoint] += in.NumElements() * elem;
            raw.push_back(op);
            SubtractBox(rem, in, &next);
          }
          remaining.swap(next);
        }
        for (const Box& rem : remaining) {
          if (++uncovered_count <= 5) {
            uncovered.push_back(absl::StrCat("target '", target.id, "' shard '", tshard.name,
                                             "': '", model.tensor(tp.tensor).name, "' ",
                                             rem.ToString()));
          }
        }
      }
    }
  }
  if (uncovered_count > 0) {
    std::string msg = absl::StrCat(uncovered_count, " target region(s) have no source: ");
    for (size_t i = 0; i < uncovered.size(); ++i) absl::StrAppend(&msg, i ? "; " : "", uncovered[i]);
    if (uncovered_count > uncovered.size()) absl::StrAppend(&msg, "; ...");
    absl::StrAppend(&msg, " (is every source rank registered?)");
    return absl::FailedPreconditionError(msg);
  }

  // Schedule: group by (source endpoint, target endpoint), keeping the
  // generation order inside a group; split oversized ops; pack buckets.
  std::stable_sort(raw.begin(), raw.end(), [](const CopyOp& a, const CopyOp& b) {
    if (a.src_endpoint != b.src_endpoint) return a.src_endpoint < b.src_endpoint;
    return a.dst_endpoint < b.dst_endpoint;
  });
  plan.ops.reserve(raw.size());
  for (const CopyOp& op : raw) {
    const uint64_t elem = kernels::DTypeSize(targets[op.dst_endpoint].shards[op.dst_shard].dtype);
    SplitOp(op, elem, options.max_bucket_bytes, &plan.ops);
  }
  for (uint32_t i = 0; i < plan.ops.size(); ++i) {
    const CopyOp& op = plan.ops[i];
    const uint64_t bytes =
        BoxBytes(op.dst_box, targets[op.dst_endpoint].shards[op.dst_shard].dtype);
    Bucket* cur = plan.buckets.empty() ? nullptr : &plan.buckets.back();
    if (cur == nullptr || cur->src_endpoint != op.src_endpoint ||
        cur->dst_endpoint != op.dst_endpoint || cur->bytes + bytes > options.max_bucket_bytes) {
      plan.buckets.push_back({op.src_endpoint, op.dst_endpoint, i, 0, 0});
      cur = &plan.buckets.back();
    }
    cur->num_ops++;
    cur->bytes += bytes;
    plan.total_bytes += bytes;
  }

  // Stable hash over endpoint ids, shard names/dtypes, buckets, ops, fills.
  kernels::DigestSums sums;
  uint64_t word = 0;
  for (const auto* list : {&sources, &targets}) {
    HashU64(&sums, &word, list->size());
    for (const Endpoint& e : *list) {
      HashString(&sums, &word, e.id);
      for (const ShardSpec& s : e.shards) {
        HashString(&sums, &word, s.name);
        HashU64(&sums, &word, static_cast<uint64_t>(s.dtype));
      }
    }
  }
  for (const Bucket& b : plan.buckets) {
    HashU64(&sums, &word, (uint64_t{b.src_endpoint} << 32) | b.dst_endpoint);
    HashU64(&sums, &word, b.num_ops);
    HashU64(&sums, &word, b.bytes);
  }
  for (const CopyOp& op : plan.ops) {
    HashU64(&sums, &word, (uint64_t{op.src_endpoint} << 32) | op.src_shard);
    HashU64(&sums, &word, (uint64_t{op.dst_endpoint} << 32) | op.dst_shard);
    HashBox(&sums, &word, op.src_box);
    HashBox(&sums, &word, op.dst_box);
  }
  for (const FillOp& f : plan.fills) {
    HashU64(&sums, &word, (uint64_t{f.dst_endpoint} << 32) | f.dst_shard);
    HashBox(&sums, &word, f.dst_box);
  }
  kernels::Digest128 d = kernels::DigestFinish(sums, word * 8);
  plan.hash = d.lo ^ d.hi;
  return plan;
}

}  // namespace wsync::layout
