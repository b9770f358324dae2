#include "daemon/core/sync_job.h"

#include "absl/strings/str_cat.h"
#include "daemon/core/core_impl.h"

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

void SyncJob::Wrote(uint32_t t, uint32_t s, const layout::Box& box) { Record(t, s, box); }

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
