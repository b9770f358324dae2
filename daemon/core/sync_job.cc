#include "daemon/core/sync_job.h"

#include <array>

#include "absl/strings/str_cat.h"
#include "daemon/common/status.h"
#include "daemon/core/core_impl.h"
#include "daemon/layout/fp8_checkpoint.h"

namespace wsync::core::internal {

SyncJob::SyncJob(const layout::ModelSpec* spec, LoraMode lora, std::map<int32_t, Adapter> adapters,
                 std::set<int32_t> active)
    : spec_(spec),
      lora_(lora),
      full_(lora == LoraMode::kNone || lora == LoraMode::kMerge),
      adapters_(std::move(adapters)),
      active_(std::move(active)) {}

void SyncJob::AddTarget(RankReg* rank, Replica* replica, const std::string& replica_id, int device) {
  targets_.push_back({rank, replica, replica_id, device});
}

UpdateMode SyncJob::mode(uint32_t t) const { return targets_[t].replica->mode; }

std::set<int> SyncJob::Devices() const {
  std::set<int> out;
  for (const Target& t : targets_) {
    if (t.rank != nullptr) out.insert(t.device);
  }
  return out;
}

SessionReplicas SyncJob::Sessions() const {
  SessionReplicas out;
  for (const Target& t : targets_) {
    if (t.rank != nullptr) out[t.rank->session_id].insert(t.replica_id);
  }
  return out;
}

SessionReplicas SyncJob::Sessions(UpdateMode mode) const {
  SessionReplicas out;
  for (const Target& t : targets_) {
    if (t.rank != nullptr && t.replica->mode == mode) out[t.rank->session_id].insert(t.replica_id);
  }
  return out;
}

absl::Status SyncJob::PrepareTargets(ExecContext* ctx) {
  auto tracked = [this](int32_t tensor) { return adapters_.count(tensor) > 0; };
  for (const Target& t : targets_) {
    if (t.rank == nullptr) continue;
    absl::Status s = t.rank->PrepareTargetMemory(ctx, t.device, t.replica->mode, tracked, full_);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status SyncJob::PrepareLoraOperands(ExecContext* ctx,
                                          const std::vector<std::pair<int32_t, uint64_t>>& tensors) {
  for (int device : Devices()) {
    for (const auto& [tensor, elements] : tensors) {
      auto b = ctx->Allocate(device, elements * 4, absl::StrCat("LoRA operand '", spec_->tensor(tensor).name, "'"));
      if (!b.ok()) return b.status();
      lora_mem_[{device, tensor}] = std::move(*b);
    }
  }
  return absl::OkStatus();
}

float* SyncJob::LoraOperand(int device, int32_t tensor) const {
  return static_cast<float*>(lora_mem_.at({device, tensor})->data());
}

void SyncJob::Paused(const SessionReplicas& sessions) {
  for (const auto& [sid, reps] : sessions) paused_[sid].insert(reps.begin(), reps.end());
}

layout::ShardView SyncJob::WriteView(uint32_t t, uint32_t s) const {
  return targets_[t].rank->Write(s, targets_[t].replica->mode);
}

void SyncJob::Record(uint32_t t, uint32_t s, const layout::Box& box) {
  written_.push_back({t, s, box});
  if (targets_[t].replica->mode == UpdateMode::kInPlace) live_written_.insert(targets_[t].replica_id);
}

uint64_t SyncJob::AddWrite(uint32_t t, const layout::CopyOp& c, const layout::ShardView& src, bool merge_dims,
                           uint64_t* word, TargetWrite* tw) {
  if (!Writes(c)) return 0;
  const Target& tg = targets_[t];
  TargetOp in;
  in.src = src;
  in.dst = WriteView(t, c.dst_shard);
  in.live = tg.rank->Live(c.dst_shard);
  layout::ShardView base;
  if (tg.rank->base[c.dst_shard] && (lora_ == LoraMode::kAdapterOnly || (full_ && adapters_.count(c.tensor)))) {
    base = tg.rank->Base(c.dst_shard);
    in.base = &base;
  }
  if (lora_ != LoraMode::kNone && active_.count(c.tensor)) {
    const Adapter& ad = adapters_.at(c.tensor);
    in.adapter = &ad;
    in.lora_a = LoraOperand(tg.device, ad.a);
    in.lora_b = LoraOperand(tg.device, ad.b);
  }
  AddTargetOp(*spec_, lora_, c, in, merge_dims, word, tw);
  Record(t, c.dst_shard, c.dst_box);
  return layout::BoxBytes(c.dst_box, in.dst.spec->dtype);
}

absl::Status SyncJob::WriteFills(ExecContext* ctx,
                                 const std::vector<std::pair<uint32_t, const layout::FillOp*>>& fills) {
  std::map<int, std::vector<kernels::BoxCopyOp>> by_device;
  for (const auto& [t, f] : fills) {
    by_device[targets_[t].device].push_back(layout::LowerFill(*f, WriteView(t, f->dst_shard)));
    Record(t, f->dst_shard, f->dst_box);
  }
  for (const auto& [device, ops] : by_device) {
    absl::Status s = ctx->Copy(device, ops.data(), ops.size());
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

bool SyncJob::Quantizes(uint32_t t, const layout::CopyOp& c) const {
  return layout::QuantizedInto(*spec_, c.tensor, targets_[t].rank->shards[c.dst_shard].dtype);
}

const layout::Piece* SyncJob::PieceOf(uint32_t t, uint32_t s, int32_t tensor) const {
  for (const layout::Piece& pc : targets_[t].rank->shards[s].pieces) {
    if (pc.tensor == tensor) return &pc;
  }
  return nullptr;
}

uint64_t SyncJob::AddScratchWrite(uint32_t t, const layout::CopyOp& c, const layout::ShardView& src, void* scratch,
                                  uint64_t* word, TargetWrite* tw) {
  const layout::Piece* piece = PieceOf(t, c.dst_shard, c.tensor);
  const layout::Box& b = piece->canonical;
  // The op's elements where they sit in the piece.
  layout::ShardSpec* spec = &scratch_specs_.emplace_back(
      layout::ShardSpec{"FP8 scratch", layout::Shape::Of({b.size[0], b.size[1]}), layout::DType::kF32, {}});
  layout::CopyOp c2 = c;
  c2.dst_box.ndim = 2;
  for (int d = 0; d < 2; ++d) {
    c2.dst_box.off[d] = c.canonical.off[d] - b.off[d];
    c2.dst_box.size[d] = c.canonical.size[d];
  }
  TargetOp in;
  in.src = src;
  in.dst = in.live = {spec, nullptr, scratch};
  // The piece's fp32 pristine base: written from W in full syncs, read by
  // adapter_only (base + s*B@A, then quantized).
  layout::ShardView base;
  const RankReg* r = targets_[t].rank;
  if (r->base[c.dst_shard] && (lora_ == LoraMode::kAdapterOnly || (full_ && adapters_.count(c.tensor)))) {
    // The piece where it sits in the base, a dense fp32 copy of the shard.
    const layout::ShardSpec& sh = r->shards[c.dst_shard];
    const int nd = sh.shape.ndim;
    int64_t stride[layout::kMaxDims];
    layout::Strides({&sh, nullptr, nullptr}, stride);
    const std::array<int64_t, 2>& st = scratch_strides_.emplace_back(std::array<int64_t, 2>{stride[nd - 2], 1});
    base = {spec, st.data(), static_cast<float*>(r->base[c.dst_shard]->data()) + layout::Offset(piece->shard, stride)};
    in.base = &base;
  }
  if ((lora_ == LoraMode::kMerge || lora_ == LoraMode::kAdapterOnly) && active_.count(c.tensor)) {
    const Adapter& ad = adapters_.at(c.tensor);
    in.adapter = &ad;
    in.lora_a = LoraOperand(targets_[t].device, ad.a);
    in.lora_b = LoraOperand(targets_[t].device, ad.b);
  }
  AddTargetOp(*spec_, lora_, c2, in, /*merge_dims=*/true, word, tw);
  return static_cast<uint64_t>(c.canonical.NumElements());
}

absl::StatusOr<uint64_t> SyncJob::QuantizePiece(ExecContext* ctx, uint32_t t, uint32_t s, int32_t tensor,
                                                const PieceSource& src, size_t slot, uint64_t* word,
                                                std::vector<kernels::BoxCopyOp>* descs, std::vector<uint64_t>* words,
                                                std::vector<std::unique_ptr<memory::Buffer>>* keep) {
  const Target& tg = targets_[t];
  RankReg* r = tg.rank;
  const layout::ShardSpec& sh = r->shards[s];
  const layout::Piece* piece = PieceOf(t, s, tensor);
  const std::string what =
      absl::StrCat("'", spec_->tensor(tensor).name, "' in FP8 buffer '", sh.name, "' of ", r->Label());
  if (piece == nullptr) return absl::InternalError(absl::StrCat(what, ": no piece"));
  const layout::Box& b = piece->canonical;
  const int dev = tg.device;
  const int64_t rows = b.size[0], cols = b.size[1];
  // The piece is one matrix of the buffer: all of a 2-d buffer's box, or
  // one leading index of a 3-d stack (fused experts; CheckFp8Pieces).
  const layout::ShardView dst = WriteView(t, s);
  const int nd = sh.shape.ndim;
  if (nd < 2) return absl::InternalError(absl::StrCat(what, ": a ", nd, "-d FP8 buffer"));
  int64_t stride[layout::kMaxDims] = {};
  layout::Strides(dst, stride);
  if (stride[nd - 1] != 1) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": its column stride is ", stride[nd - 1],
                                                      " elements; FP8 rows must be contiguous (stride 1)"));
  }
  const int64_t origin = layout::Offset(piece->shard, stride);
  // The piece covers whole scale groups (CheckFp8Pieces).
  const layout::ScaleGroup g = spec_->ScaleGroupOf(tensor);
  const layout::Shape ss = layout::Shape::Of({(rows + g.rows - 1) / g.rows, (cols + g.cols - 1) / g.cols});
  auto scales = ctx->Allocate(dev, ss.NumElements() * 4, absl::StrCat("FP8 scales for ", what));
  if (!scales.ok()) return scales.status();
  kernels::Fp8QuantOp op;
  op.src = src.data;
  op.src_dtype = src.dtype;
  op.rows = rows;
  op.cols = cols;
  op.src_ld = src.ld;
  op.dst = static_cast<uint8_t*>(dst.base) + origin;
  op.dst_ld = stride[nd - 2];
  op.scale_inv = static_cast<float*>((*scales)->data());
  op.scale_ld = ss.d[1];
  op.block_rows = g.rows;
  op.block_cols = g.cols;
  if (absl::Status st = ctx->QuantizeFp8(dev, &op, 1); !st.ok()) return Annotate(st, what);
  kernels::BoxCopyOp box = layout::LowerBox(piece->shard, dst);
  uint64_t w0 = 0;
  *word += kernels::BoxPayloadWords(&box, 1, *word, &w0);
  WSYNC_RETURN_IF_ERROR(ctx->Digest(dev, &box, 1, &w0, slot));
  descs->push_back(box);
  words->push_back(w0);
  Record(t, s, piece->shard);
  uint64_t bytes = static_cast<uint64_t>(rows * cols);

  // The scales of the piece's groups into the rank's scale pieces.
  const int32_t st = spec_->ScaleTensorOf(tensor);
  layout::Box blocks;
  blocks.ndim = 2;
  for (int d = 0; d < 2; ++d) {
    blocks.off[d] = b.off[d] / (d == 0 ? g.rows : g.cols);
    blocks.size[d] = ss.d[d];
  }
  layout::ShardSpec* scale_spec =
      &scratch_specs_.emplace_back(layout::ShardSpec{"FP8 scales", ss, layout::DType::kF32, {}});
  int64_t covered = 0;
  for (uint32_t s2 = 0; s2 < r->shards.size(); ++s2) {
    for (const layout::Piece& pc : r->shards[s2].pieces) {
      if (pc.tensor != st) continue;
      const layout::Box in = blocks.Intersect(pc.canonical);
      if (in.ndim == 0) continue;
      layout::CopyOp c;
      c.tensor = st;
      c.canonical = c.src_box = in;
      c.dst_box = pc.shard;  // its leading (expert) index, if any, as it is
      const int sd = pc.shard.ndim - 2;
      for (int d = 0; d < 2; ++d) {
        c.src_box.off[d] = in.off[d] - blocks.off[d];
        c.dst_box.off[sd + d] = pc.shard.off[sd + d] + (in.off[d] - pc.canonical.off[d]);
        c.dst_box.size[sd + d] = in.size[d];
      }
      kernels::BoxCopyOp k = layout::LowerCopy(c, {scale_spec, nullptr, (*scales)->data()}, WriteView(t, s2));
      uint64_t kw = 0;
      *word += kernels::BoxPayloadWords(&k, 1, *word, &kw);
      WSYNC_RETURN_IF_ERROR(ctx->CopyDigest(dev, &k, 1, &kw, slot));
      descs->push_back(k);
      words->push_back(kw);
      Record(t, s2, c.dst_box);
      bytes += in.NumElements() * 4;
      covered += in.NumElements();
    }
  }
  if (covered != ss.NumElements()) {
    return absl::FailedPreconditionError(absl::StrCat(
        what, " holds rows ", b.ToString(), " but not all of their scales: register the pieces ",
        blocks.ToString(), " of '", spec_->tensor(st).name, "' with it"));
  }
  keep->push_back(std::move(*scales));  // queued work still reads them
  return bytes;
}

size_t SyncJob::AddCheck(uint32_t t, std::vector<kernels::BoxCopyOp> boxes, std::vector<uint64_t> words,
                         uint64_t num_words) {
  Check c;
  c.target = t;
  c.boxes = std::move(boxes);
  c.words = std::move(words);
  c.num_words = num_words;
  checks_.push_back(std::move(c));
  return checks_.size() - 1;
}

absl::StatusOr<std::vector<size_t>> SyncJob::Verify(ExecContext* ctx) {
  for (size_t i = 0; i < checks_.size(); ++i) {
    const Check& c = checks_[i];
    if (c.boxes.empty()) continue;
    absl::Status s = ctx->Digest(targets_[c.target].device, c.boxes.data(), c.boxes.size(), c.words.data(), i);
    if (!s.ok()) return s;
  }
  auto sums = ctx->Finish(checks_.size());
  if (!sums.ok()) return sums.status();
  std::vector<size_t> changed;
  for (size_t i = 0; i < checks_.size(); ++i) {
    checks_[i].reread = (*sums)[i];
    if (checks_[i].reread.s1 != checks_[i].written.s1 || checks_[i].reread.s2 != checks_[i].written.s2) {
      changed.push_back(i);
    }
  }
  return changed;
}

absl::Status SyncJob::CommitStaged(ExecContext* ctx) {
  std::map<int, std::vector<kernels::BoxCopyOp>> by_device;
  for (const Written& w : written_) {
    const Target& t = targets_[w.target];
    if (t.replica->mode != UpdateMode::kStaged) continue;
    by_device[t.device].push_back(t.rank->CommitCopy(w.shard, w.box));
    live_written_.insert(t.replica_id);
  }
  for (const auto& [device, ops] : by_device) {
    absl::Status s = ctx->Copy(device, ops.data(), ops.size());
    if (!s.ok()) return s;
  }
  return ctx->Finish(0).status();
}

std::vector<SyncJob::Notice> SyncJob::Settle(const std::string& model_id, uint64_t version, const absl::Status& error,
                                             const std::map<std::string, std::string>& digests, bool has_adapters,
                                             std::vector<std::string>* refused) {
  const bool committed = error.ok();
  std::map<std::string, Replica*> replicas;
  for (const Target& t : targets_) {
    if (t.rank != nullptr) replicas[t.replica_id] = t.replica;
  }
  for (const auto& [rid, rep] : replicas) {
    if (committed) {
      auto d = digests.find(rid);
      if (!rep->Commit(version, d == digests.end() ? "" : d->second, full_, has_adapters)) refused->push_back(rid);
    } else {
      if (live_written_.count(rid)) rep->Poison();
      if (full_) rep->FullSyncFailed();
    }
  }
  std::vector<Notice> out;
  for (const auto& [sid, reps] : paused_) {
    for (const std::string& rid : reps) {
      Event e;
      e.kind = Event::Kind::kResume;
      e.model_id = model_id;
      e.version = version;
      e.replica_id = rid;
      e.poisoned = !committed && live_written_.count(rid) > 0;
      out.push_back({sid, e});
    }
  }
  for (const auto& [sid, reps] : Sessions()) {
    for (const std::string& rid : reps) {
      Event e;
      e.model_id = model_id;
      e.version = version;
      e.replica_id = rid;
      if (committed) {
        e.kind = Event::Kind::kCommitted;
        e.digest = replicas.at(rid)->digest;
      } else {
        e.kind = Event::Kind::kFailed;
        e.code = static_cast<int>(error.code());
        e.message = std::string(error.message());
      }
      out.push_back({sid, e});
    }
  }
  return out;
}

}  // namespace wsync::core::internal
