#ifndef WSYNC_DAEMON_CORE_TARGET_WRITE_H_
#define WSYNC_DAEMON_CORE_TARGET_WRITE_H_

// How a sync writes a target: the one place that turns plan ops into kernel
// work in every LoRA mode, whether W's bytes come from a source shard on
// this daemon (local syncs) or from a received wire buffer (multi-node
// parts).
//
// For each plan op, by mode and by whether the tensor has an adapter that
// is active in this sync:
//   none, or merge without an active adapter: copy W, digested as written;
//   merge with one: the target gets W + s*B@A, digested after the merge;
//   adapter_only: the target gets base + s*B@A (its fp32 pristine base);
//   unmerge: the target gets live - s*B@A (its own live weights).
// In none and merge, W is also copied into the shard's fp32 pristine base
// when the target keeps one (not digested).

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "daemon/core/executor.h"
#include "daemon/core/modes.h"
#include "daemon/layout/lowering.h"
#include "daemon/layout/planner.h"

namespace wsync::core {

// A LoRA adapter of a base tensor, as registered.
struct Adapter {
  int32_t a = -1, b = -1;  // tensor ids
  int64_t rank = 0;
  double scaling = 1.0;
  LoraConvention convention = LoraConvention::kPeft;
};

// The factors of `ad` over whole fp32 copies A and B of its tensors.
layout::LoraFactors LoraFactorsOf(const layout::ModelSpec& spec, const Adapter& ad, const float* A, const float* B);

// Kernel work writing plan ops into one target rank, in order of the calls
// that added it. `boxes` are the written boxes as they are digested (the
// copy ops themselves, and the destination boxes of LoRA ops), with their
// first payload words: a later re-read digests the same words.
struct TargetWrite {
  std::vector<kernels::BoxCopyOp> base_copies;
  std::vector<kernels::BoxCopyOp> copies;
  std::vector<uint64_t> copy_words;
  std::vector<kernels::LoraMergeOp> loras;
  std::vector<kernels::BoxCopyOp> lora_boxes;
  std::vector<uint64_t> lora_words;
  std::vector<kernels::BoxCopyOp> boxes;
  std::vector<uint64_t> box_words;
};

// What the write of one plan op reads and writes.
struct TargetOp {
  // W's bytes at the op's src_box: a source shard, or a wire region. Its
  // base is null where no bytes move (adapter_only, unmerge).
  layout::ShardView src;
  layout::ShardView dst;             // the target's write view (staging or live)
  layout::ShardView live;            // the target's live shard (unmerge reads it)
  const layout::ShardView* base = nullptr;  // the shard's fp32 pristine base, if kept
  const Adapter* adapter = nullptr;  // the tensor's adapter if active in this sync
  const float* lora_a = nullptr;     // the adapter's fp32 A and B where the kernels run
  const float* lora_b = nullptr;
};

// Adds the work of plan op `c` in `mode` to `out`. `merge_dims` merges
// dimensions contiguous on both sides into long rows (local syncs, where
// the digest is only compared with a re-read of the same ops); without it
// every box keeps its own dimensions, so that its digest equals that of the
// same bytes anywhere else (multi-node parts, compared with wire digests).
// The op's payload words start at *word, which advances past them.
// Requires: `in.src.base` where W moves and no active adapter would replace
// it; `in.adapter`, `lora_a` and `lora_b` for LoRA work; `in.base` in
// adapter_only.
void AddTargetOp(const layout::ModelSpec& spec, LoraMode mode, const layout::CopyOp& c, const TargetOp& in,
                 bool merge_dims, uint64_t* word, TargetWrite* out);

// Enqueues `w` on `device` of `ctx`: base copies, the copies digested as
// written, the LoRA merges, then the digest of their boxes; every digest
// adds into `slot`.
absl::Status RunTargetWrite(ExecContext* ctx, int device, const TargetWrite& w, size_t slot);

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_TARGET_WRITE_H_
