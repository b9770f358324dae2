#ifndef WSYNC_DAEMON_CORE_SYNC_JOB_H_
#define WSYNC_DAEMON_CORE_SYNC_JOB_H_

// Internal to daemon/core: the phases of a sync job on the target ranks this
// daemon holds, run through one object by both engines: local syncs
// (sync.cc) and the parts of multi-node syncs (dist_sync.cc).
//
//   prepare targets -> LoRA operands -> pause (in-place) -> write each bucket
//   -> verify -> pause (staged) -> commit staged -> settle
//
// The one seam between the engines is where W's bytes come from: AddWrite
// takes a view of them, a source shard on this daemon (local syncs) or a
// region of a received wire buffer (multi-node parts). LoRA modes, staging,
// pristine bases, FP8 quantization (fp32 assembly, then the quantized piece
// and its scales), what was written, which replicas' live memory it
// touched, and the re-read of everything written live here. Planning, moving bytes
// between daemons (and comparing their digests across daemons) and pausing
// (which waits on clients) stay with each engine.

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "daemon/core/core.h"
#include "daemon/core/executor.h"
#include "daemon/core/modes.h"
#include "daemon/core/target_write.h"
#include "daemon/layout/lowering.h"
#include "daemon/layout/planner.h"

namespace wsync::core::internal {

struct RankReg;
struct Replica;

// Session id -> replicas it holds target ranks of.
using SessionReplicas = std::map<std::string, std::set<std::string>>;

// One job's targets on this daemon and what the job did to them. Not
// thread-safe: the job's thread drives it, and Settle runs under the core's
// lock (it changes the replicas).
class SyncJob {
 public:
  // A sync of `spec` in LoRA mode `lora`. `adapters`: every adapter of the
  // model (their bases keep fp32 pristine copies); `active`: the bases whose
  // adapters this sync applies.
  SyncJob(const layout::ModelSpec* spec, LoraMode lora, std::map<int32_t, Adapter> adapters,
          std::set<int32_t> active);

  // Whether W's bytes move (LoRA none or merge): every byte of the targets is
  // written.
  bool full() const { return full_; }

  // Adds the next target (index num_targets()): `rank` of replica `replica`,
  // its kernels running on `device`. A null rank is a target another daemon
  // holds, which every phase skips. Call before any phase.
  void AddTarget(RankReg* rank, Replica* replica, const std::string& replica_id, int device);
  size_t num_targets() const { return targets_.size(); }
  RankReg* rank(uint32_t t) const { return targets_[t].rank; }
  Replica* replica(uint32_t t) const { return targets_[t].replica; }
  const std::string& replica_id(uint32_t t) const { return targets_[t].replica_id; }
  int device(uint32_t t) const { return targets_[t].device; }
  UpdateMode mode(uint32_t t) const;
  // The devices of the local targets.
  std::set<int> Devices() const;
  // Sessions of local targets -> their replicas; of `mode` only, when given.
  SessionReplicas Sessions() const;
  SessionReplicas Sessions(UpdateMode mode) const;

  // Phase "prepare targets": allocates, on each target's device, staging for
  // staged targets and fp32 pristine bases of shards holding adapted tensors
  // when W moves (kept by the ranks for later syncs).
  absl::Status PrepareTargets(ExecContext* ctx);

  // Phase "LoRA operands": zeroed fp32 memory for whole copies of `tensors`
  // (tensor id, elements) on every device of Devices(), for the engine to
  // fill before the first AddWrite that needs them.
  absl::Status PrepareLoraOperands(ExecContext* ctx, const std::vector<std::pair<int32_t, uint64_t>>& tensors);
  // The fp32 copy of `tensor` on `device`; requires PrepareLoraOperands.
  float* LoraOperand(int device, int32_t tensor) const;

  // Phase "pause": records sessions the engine paused; Settle resumes them.
  void Paused(const SessionReplicas& sessions);

  // Phase "write": adds to `tw` the write of plan op `c` into its shard of
  // target `t` (staging or live memory by its mode), from W's bytes in `src`
  // at c.src_box (unused where W does not move), in the job's LoRA mode
  // (target_write.h; `merge_dims` and `word` as AddTargetOp). Nothing when
  // the op is not written in this mode (adapter_only/unmerge of a tensor
  // without an active adapter). Returns the bytes it writes.
  uint64_t AddWrite(uint32_t t, const layout::CopyOp& c, const layout::ShardView& src, bool merge_dims,
                    uint64_t* word, TargetWrite* tw);
  // Whether plan op `c` is written in this job's mode.
  bool Writes(const layout::CopyOp& c) const { return full_ || active_.count(c.tensor) > 0; }
  // Enqueues the zero fills of full syncs, (target, op) each, on their
  // targets' devices, recorded as written.
  absl::Status WriteFills(ExecContext* ctx, const std::vector<std::pair<uint32_t, const layout::FillOp*>>& fills);
  // FP8 targets (docs/fp8.md). Whether plan op `c` lands in a weight that
  // target `t` quantizes (layout::QuantizedInto).
  bool Quantizes(uint32_t t, const layout::CopyOp& c) const;
  // Adds to `tw` the write of plan op `c` into `scratch`: fp32 memory on
  // the target's device that holds the whole piece of c.tensor in
  // c.dst_shard of target `t`, row-major ([piece rows, piece cols]). What
  // it writes there is W (`src`), W + s*B@A in merge mode, or the piece's
  // fp32 pristine base + s*B@A in adapter_only mode; full syncs also copy W
  // into that base where the target keeps one. Returns the elements it
  // writes.
  uint64_t AddScratchWrite(uint32_t t, const layout::CopyOp& c, const layout::ShardView& src, void* scratch,
                           uint64_t* word, TargetWrite* tw);
  // The piece of `tensor` in shard `s` of target `t` (null if none).
  const layout::Piece* PieceOf(uint32_t t, uint32_t s, int32_t tensor) const;
  // Whether `tensor` has an adapter (so that its FP8 pieces go through
  // AddScratchWrite, which merges it and keeps the pristine base).
  bool Adapted(int32_t tensor) const { return adapters_.count(tensor) > 0; }
  // The values QuantizePiece reads: the piece as a matrix of `dtype` (fp32,
  // bf16 or fp16) with unit column stride and row stride `ld` elements,
  // starting at its first element: fp32 scratch that AddScratchWrite
  // filled, or a source shard on this daemon that holds the whole piece.
  struct PieceSource {
    const void* data = nullptr;
    layout::DType dtype = layout::DType::kF32;
    int64_t ld = 0;
  };
  // Quantizes the piece of `tensor` in shard `s` of target `t` (read from
  // `src`, after the work before it on the device) into the
  // buffer where the job writes it, with one scale per group of the
  // weight's scaling (ModelSpec::ScaleGroupOf), and copies the scales into the target's pieces of the scale tensor. What
  // lands is digested into `slot` and its boxes appended to `descs` and
  // `words` from payload word *word on (for AddCheck), and recorded as
  // written. `keep` receives memory the queued work still reads.
  // INVALID_ARGUMENT naming the tensor and element for a non-finite weight;
  // FAILED_PRECONDITION when the target lacks some of the piece's scales.
  absl::StatusOr<uint64_t> QuantizePiece(ExecContext* ctx, uint32_t t, uint32_t s, int32_t tensor,
                                         const PieceSource& src, size_t slot, uint64_t* word,
                                         std::vector<kernels::BoxCopyOp>* descs, std::vector<uint64_t>* words,
                                         std::vector<std::unique_ptr<memory::Buffer>>* keep);
  // Where the job writes shard `s` of target `t`.
  layout::ShardView WriteView(uint32_t t, uint32_t s) const;
  // Whether the job wrote live memory of `replica_id` (in place, or the
  // staged commit began): a failure from then on leaves it mixed.
  bool LiveWritten(const std::string& replica_id) const { return live_written_.count(replica_id) > 0; }
  bool AnyLiveWritten() const { return !live_written_.empty(); }

  // Phase "verify". A check is what one batch of kernel work wrote into
  // target `t` (on its device): the destination boxes with their first
  // payload words, `num_words` words in all, and the digest sums the kernels
  // computed as they wrote them (SetWritten, once they are known).
  struct Check {
    uint32_t target = 0;
    std::vector<kernels::BoxCopyOp> boxes;
    std::vector<uint64_t> words;
    uint64_t num_words = 0;
    kernels::DigestSums written, reread;
  };
  size_t AddCheck(uint32_t t, std::vector<kernels::BoxCopyOp> boxes, std::vector<uint64_t> words, uint64_t num_words);
  void SetWritten(size_t check, const kernels::DigestSums& sums) { checks_[check].written = sums; }
  size_t num_checks() const { return checks_.size(); }
  const Check& check(size_t i) const { return checks_[i]; }
  // Re-reads every check's boxes as they are now (one digest slot each) and
  // returns the checks whose re-read differs from what was written: target
  // memory that changed during the sync.
  absl::StatusOr<std::vector<size_t>> Verify(ExecContext* ctx);

  // Phase "commit": copies everything written to staging into the staged
  // targets' live memory and waits. The engine has paused their sessions.
  absl::Status CommitStaged(ExecContext* ctx);

  // Phase "settle", under the core's lock. Committed (`error` OK): every
  // replica of a local target records `version` with its digest from
  // `digests` (a partial commit onto a poisoned replica is refused and its
  // id appended to `refused`). Failed: replicas whose live memory was
  // written are poisoned, and a full sync leaves their LoRA bases invalid.
  // Returns what to tell the sessions, in order: Resume for every paused
  // replica (poisoned when it failed after its live memory was written),
  // then Committed or Failed for every replica of a local target.
  struct Notice {
    std::string session;
    Event event;
  };
  std::vector<Notice> Settle(const std::string& model_id, uint64_t version, const absl::Status& error,
                             const std::map<std::string, std::string>& digests, bool has_adapters,
                             std::vector<std::string>* refused);

 private:
  struct Target {
    RankReg* rank = nullptr;
    Replica* replica = nullptr;
    std::string replica_id;
    int device = -1;
  };
  struct Written {
    uint32_t target, shard;
    layout::Box box;
  };
  void Record(uint32_t t, uint32_t s, const layout::Box& box);

  const layout::ModelSpec* spec_;
  LoraMode lora_;
  bool full_;
  std::map<int32_t, Adapter> adapters_;
  std::set<int32_t> active_;
  std::vector<Target> targets_;
  std::map<std::pair<int, int32_t>, std::unique_ptr<memory::Buffer>> lora_mem_;  // (device, tensor) -> fp32
  std::vector<Written> written_;
  std::vector<Check> checks_;
  // Described by queued FP8 work (stable addresses): scratch and scale
  // shapes, and the strides of pristine bases seen as one piece.
  std::deque<layout::ShardSpec> scratch_specs_;
  std::deque<std::array<int64_t, 2>> scratch_strides_;
  std::set<std::string> live_written_;
  SessionReplicas paused_;
};

}  // namespace wsync::core::internal

#endif  // WSYNC_DAEMON_CORE_SYNC_JOB_H_
