// Sync jobs on one node: plan, transfer (regroup, cast, LoRA) through the
// kernels (CPU over host memory, CUDA over GPU memory: Executor), verify
// per-bucket digests, two-phase commit, versions.
#include <algorithm>
#include <optional>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/core/core_impl.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/lowering.h"
#include "daemon/layout/planner.h"
#include "kernels/box_copy.h"
#include "kernels/digest.h"
#include "kernels/lora.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::core::internal {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

// The processes of a layout of `world_size` that have not registered.
std::string MissingRanks(const std::map<std::string, std::unique_ptr<RankReg>>& have, int world_size) {
  std::vector<std::string> missing;
  for (int r = 0; r < world_size; ++r) {
    layout::RankCoords c;
    c.rank = r;
    if (have.count(CoordsKey(c))) continue;
    if (missing.size() == 8) {
      missing.push_back("...");
      break;
    }
    missing.push_back(absl::StrCat(r));
  }
  return missing.empty() ? "" : absl::StrCat("process ranks ", absl::StrJoin(missing, ", "));
}

// Canonical bytes no registered source holds (up to 5 parts), or "".
std::string UncoveredSources(const layout::ModelSpec& spec,
                             const std::map<std::string, std::unique_ptr<RankReg>>& sources) {
  std::vector<const layout::ShardSpec*> shards;
  for (const auto& [k, r] : sources) {
    for (const layout::ShardSpec& s : r->shards) shards.push_back(&s);
  }
  return absl::StrJoin(layout::UncoveredParts(spec, shards, 5), "; ");
}

// Where QuantizePiece can read an FP8 piece straight from a source, with no
// fp32 assembly: when its plan ops all come from one 2-d source shard of
// fp32, bf16 or fp16 (`src`, whose ops they are), each shifted by the same
// offset from canonical to source coordinates, rows contiguous. nullopt
// when the piece must be assembled.
std::optional<SyncJob::PieceSource> WholePieceSource(const layout::Piece& piece,
                                                     const std::vector<const layout::CopyOp*>& ops,
                                                     const layout::ShardView& src) {
  const layout::ShardSpec& sh = *src.spec;
  if (ops.empty() || sh.shape.ndim != 2 || piece.canonical.ndim != 2 ||
      (sh.dtype != layout::DType::kF32 && sh.dtype != layout::DType::kBF16 && sh.dtype != layout::DType::kF16)) {
    return std::nullopt;
  }
  const int64_t shift[2] = {ops[0]->src_box.off[0] - ops[0]->canonical.off[0],
                            ops[0]->src_box.off[1] - ops[0]->canonical.off[1]};
  int64_t covered = 0;
  for (const layout::CopyOp* c : ops) {
    if (c->src_box.ndim != 2 || c->canonical.ndim != 2) return std::nullopt;
    for (int d = 0; d < 2; ++d) {
      if (c->src_box.off[d] - c->canonical.off[d] != shift[d] || c->src_box.size[d] != c->canonical.size[d]) {
        return std::nullopt;
      }
    }
    covered += c->canonical.NumElements();
  }
  if (covered != piece.canonical.NumElements()) return std::nullopt;
  const int64_t row = src.strides != nullptr ? src.strides[0] : sh.shape.d[1];
  const int64_t col = src.strides != nullptr ? src.strides[1] : 1;
  if (col != 1) return std::nullopt;
  const int64_t origin = (piece.canonical.off[0] + shift[0]) * row + piece.canonical.off[1] + shift[1];
  return SyncJob::PieceSource{static_cast<const char*>(src.base) + origin * kernels::DTypeSize(sh.dtype), sh.dtype,
                              row};
}

}  // namespace

void CoreImpl::SetProgress(Job* job, const Progress& p) {
  wsync::MutexLock lock(&mu_);
  job->progress = p;
}

absl::Status CoreImpl::CheckJob(Job* job, absl::Time deadline, const char* phase,
                                const std::function<bool()>& client_gone) {
  {
    wsync::MutexLock lock(&mu_);
    if (!job->abort_reason.empty()) {
      return absl::Status(job->abort_code, absl::StrCat("sync of model '", job->model_id, "' version ",
                                                        job->version, " aborted during ", phase, ": ",
                                                        job->abort_reason));
    }
  }
  if (job->cancel.load()) {
    return absl::CancelledError(absl::StrCat("sync of model '", job->model_id, "' version ",
                                             job->version, " cancelled during ", phase));
  }
  if (client_gone && client_gone()) {
    return absl::CancelledError(absl::StrCat("sync of model '", job->model_id, "' version ", job->version,
                                             " cancelled during ", phase, ": the caller went away"));
  }
  if (absl::Now() > deadline) {
    return absl::DeadlineExceededError(absl::StrCat("sync of model '", job->model_id, "' version ",
                                                    job->version, " exceeded its deadline during ",
                                                    phase));
  }
  return absl::OkStatus();
}

absl::Status CoreImpl::PauseTargets(Job* job, const SessionReplicas& sessions, const std::string& model_id,
                                    uint64_t version, absl::Time deadline) {
  if (sessions.empty()) return absl::OkStatus();
  wsync::MutexLock lock(&mu_);
  job->pause_sessions.clear();
  for (const auto& [sid, reps] : sessions) job->pause_sessions.insert(sid);
  job->pause_version = version;
  job->acks.clear();
  for (const auto& [sid, reps] : sessions) {
    auto it = sessions_.find(sid);
    if (it == sessions_.end() || it->second->sink == nullptr) continue;
    for (const std::string& rep : reps) {  // only the replicas this client holds ranks of
      Event e;
      e.kind = Event::Kind::kPause;
      e.model_id = model_id;
      e.replica_id = rep;
      e.version = version;
      e.timeout_ms = options_.pause_timeout_ms;
      it->second->sink->Push(e);
    }
  }
  const absl::Time until = std::min(deadline, absl::Now() + absl::Milliseconds(options_.pause_timeout_ms));
  auto done = [job]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!job->abort_reason.empty() || job->cancel.load()) return true;
    for (const std::string& s : job->pause_sessions) {
      if (!job->acks.count(s)) return false;
    }
    return true;
  };
  mu_.AwaitWithDeadline(absl::Condition(&done), until);
  if (!job->abort_reason.empty() || job->cancel.load()) return absl::OkStatus();  // CheckJob reports it
  std::vector<std::string> late;
  for (const std::string& s : job->pause_sessions) {
    if (!job->acks.count(s)) {
      auto it = sessions_.find(s);
      late.push_back(it == sessions_.end() ? std::string("a client that detached") : it->second->Label());
    }
  }
  if (!late.empty()) {
    return absl::DeadlineExceededError(absl::StrCat(
        "model '", model_id, "' version ", version, ": ", absl::StrJoin(late, ", "),
        " did not acknowledge the pause within ", options_.pause_timeout_ms, " ms"));
  }
  return absl::OkStatus();
}

void CoreImpl::NotifyRefused(const SyncArgs& args, const Model& model, const absl::Status& s) {
  if (model.running != nullptr) return;  // the running sync reports its own outcome
  std::set<std::string> sessions;
  for (const auto& [id, rep] : model.replicas) {
    if (!args.replicas.empty() && std::find(args.replicas.begin(), args.replicas.end(), id) == args.replicas.end()) {
      continue;
    }
    for (const auto& [key, r] : rep.ranks) {
      if (r->daemon.empty()) sessions.insert(r->session_id);
    }
  }
  Event e;
  e.kind = Event::Kind::kFailed;
  e.model_id = args.model_id;
  e.version = args.version;
  e.code = static_cast<int>(s.code());
  e.message = std::string(s.message());
  NotifyLocked(sessions, e);
}

absl::Status CoreImpl::SelectSync(const SyncArgs& args, Model* model, std::vector<Replica*>* todo_out,
                                  std::set<int32_t>* active_out, std::optional<SyncOutcome>* done) {
  const uint64_t v = args.version;
  std::set<int32_t>& active = *active_out;
  std::vector<Replica*>& todo = *todo_out;
  if (model->running != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "a sync of model '", args.model_id, "' (version ", model->running->version,
        ", job ", model->running->id, ") is already running; syncs of one model are not queued: "
        "retry when it ends, or cancel it"));
  }
  if (model->sources.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", args.model_id, "' has no source ranks registered"));
  }
  if (!model->source_recipe.empty()) {
    // Data-parallel and expert-data-parallel copies are alternatives: the
    // source is complete once every canonical byte has a holder.
    std::string uncovered = UncoveredSources(model->spec, model->sources);
    if (!uncovered.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", args.model_id, "': the registered source processes (", model->source_recipe, " ",
          SizesString(model->source_sizes), ", ", model->sources.size(),
          " registered) do not hold all of the model yet; no holder for ", uncovered));
    }
  }
  std::vector<Replica*> selected;
  if (args.replicas.empty()) {
    for (auto& [id, r] : model->replicas) selected.push_back(&r);
  } else {
    for (const std::string& id : args.replicas) {
      auto it = model->replicas.find(id);
      if (it == model->replicas.end()) {
        return absl::NotFoundError(absl::StrCat("model '", args.model_id, "' has no replica '", id, "'"));
      }
      selected.push_back(&it->second);
    }
  }
  if (selected.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", args.model_id, "' has no target replicas registered"));
  }
  for (Replica* r : selected) {
    if (r->version > v) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", args.model_id, "' replica '", r->id, "' is at version ", r->version,
          "; version ", v, " is older (versions are monotonic)"));
    }
    if (r->version == v && !r->poisoned()) continue;  // retry of a committed version
    if (r->counted) {
      const std::string& recipe = model->replica_recipe[r->id];
      std::string missing = MissingRanks(r->ranks, model->replica_sizes[r->id].world_size);
      if (!missing.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "model '", args.model_id, "' replica '", r->id, "': ranks not registered yet (",
            recipe.empty() ? "explicit pieces" : recipe, " ", SizesString(model->replica_sizes[r->id]),
            "): ", missing));
      }
    }
    todo.push_back(r);
  }
  if (todo.empty()) {
    SyncOutcome out;
    out.model_id = args.model_id;
    out.version = v;
    out.already_committed = true;
    for (Replica* r : selected) out.replicas.push_back(r->id);
    out.digest = model->has_last && model->last.version == v ? model->last.digest : selected[0]->digest;
    *done = std::move(out);
    return absl::OkStatus();
  }
  // LoRA.
  const std::map<int32_t, Adapter>& adapters = model->adapters;
  if (args.lora != LoraMode::kNone) {
    if (adapters.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("model '", args.model_id, "' has no LoRA adapters; LoRA mode ",
                                                        LoraModeName(args.lora), " needs some"));
    }
    for (const std::string& b : args.lora_bases) {
      int32_t id = model->spec.Find(b);
      if (id < 0 || !adapters.count(id)) {
        return absl::InvalidArgumentError(absl::StrCat("model '", args.model_id, "' has no LoRA adapter on '", b, "'"));
      }
      active.insert(id);
    }
    if (active.empty()) {
      for (const auto& [id, a] : adapters) active.insert(id);
    }
  }
  const bool full = args.lora == LoraMode::kNone || args.lora == LoraMode::kMerge;
  for (Replica* r : todo) {
    if (!full && r->poisoned()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", args.model_id, "' replica '", r->id, "' is poisoned by a failed in-place sync; "
          "only a full sync (LoRA mode none or merge) can repair it"));
    }
    if (args.lora == LoraMode::kAdapterOnly && !r->base_valid()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", args.model_id, "' replica '", r->id, "' holds no pristine base: adapter_only needs "
          "a full sync (LoRA mode none or merge) since the replica registered"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SyncOutcome> CoreImpl::Sync(const SyncArgs& args,
                                           const std::function<void(const Progress&)>& progress,
                                           const std::function<bool()>& client_gone) {
  absl::StatusOr<SyncOutcome> out = RunSync(args, progress, client_gone);
  if (options_.metrics != nullptr) RecordSync(args.model_id, out);
  return out;
}

void CoreImpl::RecordSync(const std::string& model_id, const absl::StatusOr<SyncOutcome>& out) {
  Metrics& m = *options_.metrics;
  std::string model = "(unregistered)";  // a client's unknown name must not become a label
  {
    wsync::MutexLock lock(&mu_);
    if (models_.count(model_id)) model = model_id;
  }
  m.Add("wsync_syncs_total",
        {{"model", model}, {"outcome", out.ok() ? "ok" : absl::AsciiStrToLower(absl::StatusCodeToString(out.status().code()))}},
        1);
  if (!out.ok() || out->already_committed) return;
  const PhaseTimes& t = out->times;
  m.Observe("wsync_sync_duration_seconds", {{"model", model}}, t.total_ms / 1e3);
  for (const auto& [phase, ms] : {std::pair<const char*, double>{"plan", t.plan_ms}, {"transfer", t.transfer_ms},
                                  {"verify", t.verify_ms}, {"commit", t.commit_ms}}) {
    m.Observe("wsync_sync_phase_duration_seconds", {{"phase", phase}}, ms / 1e3);
  }
  m.Add("wsync_sync_bytes_total", {{"model", model}, {"path", out->path}}, static_cast<double>(out->bytes));
  if (out->bytes > 0 && t.transfer_ms > 0) {
    m.Observe("wsync_sync_transfer_bytes_per_second", {}, static_cast<double>(out->bytes) / (t.transfer_ms / 1e3));
  }
}

absl::StatusOr<SyncOutcome> CoreImpl::RunSync(const SyncArgs& args,
                                              const std::function<void(const Progress&)>& progress,
                                              const std::function<bool()>& client_gone) {
  WSYNC_RETURN_IF_ERROR(CheckModelId(args.model_id));
  bool distributed = false;
  {
    wsync::MutexLock lock(&mu_);
    auto mit = models_.find(args.model_id);
    if (mit != models_.end()) {
      WSYNC_RETURN_IF_ERROR(Authorize(args.caller, args.model_id, mit->second.get(), "sync"));
      distributed = IsDistributed(*mit->second);
    }
  }
  if (distributed) return SyncDistributed(args, progress, client_gone);
  const absl::Time t0 = absl::Now();
  const uint64_t v = args.version;
  if (v == 0) {
    return absl::InvalidArgumentError(absl::StrCat("model '", args.model_id, "': sync version must be >= 1"));
  }
  const absl::Time deadline =
      t0 + absl::Milliseconds(args.deadline_ms ? args.deadline_ms : options_.default_deadline_ms);
  const uint64_t bucket_bytes = args.max_bucket_bytes ? args.max_bucket_bytes : options_.default_bucket_bytes;

  // ---- Snapshot the registry and claim the model.
  Model* model = nullptr;
  Job* job = nullptr;
  // Endpoint ids (for messages); the shards themselves stay in the registry,
  // which is frozen while the job runs, and are copied into planner
  // endpoints only when a plan must be built.
  std::vector<std::string> src_ids, dst_ids;
  std::vector<RankReg*> src_ranks;
  std::vector<std::string> replica_ids;
  std::set<std::string> target_sessions;
  std::set<int32_t> active;  // adapted base tensors for this sync
  std::map<int32_t, Adapter> adapters;
  // The targets, and the phases the local and multi-node engines share.
  std::unique_ptr<SyncJob> sj;
  // The model's cached plan when still valid. While the job runs, the model
  // accepts no registration, so the cache entry outlives its use here.
  const layout::Plan* plan = nullptr;
  std::string plan_key;
  {
    wsync::MutexLock lock(&mu_);
    if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
    auto mit = models_.find(args.model_id);
    if (mit == models_.end()) {
      return absl::NotFoundError(absl::StrCat("model '", args.model_id, "' is not registered"));
    }
    model = mit->second.get();
    WSYNC_RETURN_IF_ERROR(Authorize(args.caller, args.model_id, model, "sync"));
    std::vector<Replica*> todo;
    std::optional<SyncOutcome> done;
    if (absl::Status s = SelectSync(args, model, &todo, &active, &done); !s.ok()) {
      NotifyRefused(args, *model, s);
      return s;
    }
    if (done.has_value()) return *std::move(done);
    adapters = model->adapters;
    // Endpoints.
    for (auto& [key, r] : model->sources) {
      src_ids.push_back(absl::StrCat("source/", key));
      src_ranks.push_back(r.get());
    }
    sj = std::make_unique<SyncJob>(&model->spec, args.lora, adapters, active);
    for (Replica* rep : todo) {
      replica_ids.push_back(rep->id);
      for (auto& [key, r] : rep->ranks) {
        dst_ids.push_back(absl::StrCat(rep->id, "/", key));
        sj->AddTarget(r.get(), rep, rep->id, r->device);
        target_sessions.insert(r->session_id);
      }
    }
    plan_key = absl::StrCat(model->generation, "|", bucket_bytes, "|", absl::StrJoin(replica_ids, ","));
    if (model->plan != nullptr && model->plan_key == plan_key) plan = model->plan.get();
    auto j = std::make_unique<Job>();
    j->id = absl::StrCat("j-", next_id_++);
    j->model_id = args.model_id;
    j->version = v;
    j->start = t0;
    for (RankReg* r : src_ranks) j->sessions.insert(r->session_id);
    for (const auto& s : target_sessions) j->sessions.insert(s);
    j->progress.phase = "PLANNING";
    job = j.get();
    model->running = job;
    jobs_[job->id] = std::move(j);
  }
  log_->info("sync {} of model '{}' version {} started: {} source ranks -> {} target ranks ({}), LoRA {}",
             job->id, args.model_id, v, src_ids.size(), dst_ids.size(), absl::StrJoin(replica_ids, ", "),
             LoraModeName(args.lora));

  absl::Status status;
  SyncOutcome out;
  std::map<std::string, std::string> digests;  // replica -> digest of what it committed
  // Settle: replica states, then the sessions hear the outcome.
  auto finish = absl::MakeCleanup([&] {
    std::vector<SyncJob::Notice> notices;
    {
      wsync::MutexLock lock(&mu_);
      notices = SettleJob(model, sj.get(), v, status, digests);
      if (status.ok()) {
        model->has_last = true;
        model->last = out;
        model->last_error.clear();
      } else {
        model->last_error = std::string(status.message());
      }
      model->running = nullptr;
      jobs_.erase(job->id);
    }
    for (const SyncJob::Notice& n : notices) Notify({n.session}, n.event);
    if (!status.ok()) log_->warn("sync of model '{}' version {} failed: {}", args.model_id, v, status.ToString());
  });
  // The job's steps run in `steps`, and `status` is set from their result
  // here, so no return statement moves it away before `finish` reads it.
  auto steps = [&]() -> absl::StatusOr<SyncOutcome> {

  auto src_shard = [&](uint32_t e, uint32_t s) -> const layout::ShardSpec& { return src_ranks[e]->shards[s]; };
  auto dst_shard = [&](uint32_t e, uint32_t s) -> const layout::ShardSpec& { return sj->rank(e)->shards[s]; };
  auto source_endpoints = [&] {
    std::vector<layout::Endpoint> eps;
    for (size_t i = 0; i < src_ranks.size(); ++i) eps.push_back({src_ids[i], {}, src_ranks[i]->shards});
    return eps;
  };

  // ---- Where the kernels run: every buffer of the sync on the host, or
  // every one on GPUs of this node.
  std::set<int> devices;
  std::string host_rank, gpu_rank;
  for (size_t i = 0; i < src_ranks.size(); ++i) {
    devices.insert(src_ranks[i]->device);
    (src_ranks[i]->device < 0 ? host_rank : gpu_rank) = src_ids[i];
  }
  for (uint32_t i = 0; i < sj->num_targets(); ++i) {
    devices.insert(sj->device(i));
    (sj->device(i) < 0 ? host_rank : gpu_rank) = dst_ids[i];
  }
  const bool on_gpu = *devices.rbegin() >= 0;
  if (on_gpu && *devices.begin() < 0) {
    status = absl::FailedPreconditionError(absl::StrCat(
        "model '", args.model_id, "': ", host_rank, " is in host shared memory but ", gpu_rank,
        " is on a GPU; a sync on one node needs every buffer in the same kind of memory"));
    return status;
  }
  // `sj` (LoRA operands) and the ranks (staging, bases) outlive the context
  // and the work it queued.
  std::unique_ptr<ExecContext> ctx;
  {
    Executor* ex = host_exec_.get();
    if (on_gpu) {
      if (!cuda_exec_.ok()) {
        status = absl::Status(cuda_exec_.status().code(),
                              absl::StrCat("model '", args.model_id, "': ", cuda_exec_.status().message()));
        return status;
      }
      ex = cuda_exec_->get();
    }
    auto c = ex->NewContext();
    if (!c.ok()) return status = c.status();
    ctx = std::move(*c);
  }
  auto fail = [&](const absl::Status& s) {
    status = Annotate(s, absl::StrCat("model '", args.model_id, "' version ", v));
    return status;
  };
  // Runs ops grouped by the device of their destination endpoint.

  // A weight with FP8 scales goes into an fp8 buffer by quantization.
  auto quantizes = [&](const layout::CopyOp& c) {
    return sj->Quantizes(c.dst_endpoint, c) && src_shard(c.src_endpoint, c.src_shard).dtype != layout::DType::kF8E4M3;
  };
  // ---- Plan (or reuse the cached one).
  if (plan == nullptr) {
    std::vector<layout::Endpoint> dst_eps;
    for (uint32_t i = 0; i < sj->num_targets(); ++i) dst_eps.push_back({dst_ids[i], {}, sj->rank(i)->shards});
    auto built = layout::BuildPlan(model->spec, source_endpoints(), dst_eps, {bucket_bytes});
    if (!built.ok()) {
      status = absl::Status(built.status().code(),
                            absl::StrCat("model '", args.model_id, "': ", built.status().message()));
      return status;
    }
    // Conversions the kernels cannot do (fp8 is copied, never converted) are
    // refused before anything is written, naming the tensor and both buffers.
    for (const layout::CopyOp& c : built->ops) {
      const layout::ShardSpec& s = src_shard(c.src_endpoint, c.src_shard);
      const layout::ShardSpec& d = dst_shard(c.dst_endpoint, c.dst_shard);
      const bool quantized = quantizes(c);
      if (!quantized && s.dtype != d.dtype &&
          (s.dtype == layout::DType::kF8E4M3 || d.dtype == layout::DType::kF8E4M3)) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "model '", args.model_id, "': tensor '", model->spec.tensor(c.tensor).name, "' goes from ",
            kernels::DTypeName(s.dtype), " buffer '", s.name, "' (", src_ids[c.src_endpoint], ") to ",
            kernels::DTypeName(d.dtype), " buffer '", d.name, "' (", dst_ids[c.dst_endpoint],
            "); fp8_e4m3 buffers are copied only to fp8_e4m3 buffers"));
        return status;
      }
    }
    wsync::MutexLock lock(&mu_);
    model->plan = std::make_unique<layout::Plan>(std::move(*built));
    model->plan_key = plan_key;
    plan = model->plan.get();
  }
  if (!active.empty()) {
    for (const layout::CopyOp& c : plan->ops) {
      const layout::ShardSpec& s = src_shard(c.src_endpoint, c.src_shard);
      const layout::ShardSpec& d = dst_shard(c.dst_endpoint, c.dst_shard);
      const bool quantized = quantizes(c);
      if (active.count(c.tensor) && quantized && args.lora == LoraMode::kUnmerge) {
        status = absl::FailedPreconditionError(absl::StrCat(
            "model '", args.model_id, "': tensor '", model->spec.tensor(c.tensor).name, "' is quantized to FP8 in '",
            d.name, "' (", dst_ids[c.dst_endpoint], "); LoRA unmerge cannot start from FP8 weights (use "
            "adapter_only, which rebuilds from the fp32 pristine base)"));
        return status;
      }
      if (active.count(c.tensor) && !quantized &&
          (s.dtype == layout::DType::kF8E4M3 || d.dtype == layout::DType::kF8E4M3)) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "model '", args.model_id, "': LoRA ", LoraModeName(args.lora), " on tensor '",
            model->spec.tensor(c.tensor).name, "' needs fp32, bf16 or fp16 buffers, but '", s.name, "' is ",
            kernels::DTypeName(s.dtype), " and '", d.name, "' is ", kernels::DTypeName(d.dtype)));
        return status;
      }
    }
  }
  const std::set<int> dst_devices = sj->Devices();
  if (on_gpu) {
    // Kernels run on the target's device and read sources over P2P: the
    // buckets' pairs, and every pair when LoRA operands are gathered.
    std::set<std::pair<int, int>> pairs;
    for (const layout::Bucket& bk : plan->buckets) {
      pairs.insert({sj->device(bk.dst_endpoint), src_ranks[bk.src_endpoint]->device});
    }
    if (!active.empty()) {
      for (int d : dst_devices) {
        for (RankReg* r : src_ranks) pairs.insert({d, r->device});
      }
    }
    for (const auto& [d, from] : pairs) {
      if (absl::Status s = ctx->EnablePeer(d, from); !s.ok()) return fail(s);
    }
    for (RankReg* r : src_ranks) {
      for (void* ev : r->events) {
        for (int d : dst_devices) {
          if (absl::Status s = ctx->WaitEvent(d, ev); !s.ok()) return fail(s);
        }
      }
    }
  }
  const absl::Time t_plan = absl::Now();

  // ---- LoRA operands: gather every active A and B whole, in fp32, on every
  // device that holds targets.
  if (!active.empty()) {
    layout::Endpoint gather{"lora", {}, {}};
    std::vector<std::pair<int32_t, uint64_t>> operands;  // tensor, elements
    for (int32_t base : active) {
      for (int32_t t : {adapters[base].a, adapters[base].b}) {
        const layout::Shape& sh = model->spec.tensor(t).shape;
        layout::ShardSpec s{model->spec.tensor(t).name, sh, layout::DType::kF32, {}};
        s.pieces.push_back({t, layout::Box::Whole(sh), layout::Box::Whole(sh)});
        gather.shards.push_back(s);
        operands.push_back({t, sh.NumElements()});
      }
    }
    auto gplan = layout::BuildPlan(model->spec, source_endpoints(), {gather}, {bucket_bytes});
    if (!gplan.ok()) {
      status = absl::FailedPreconditionError(absl::StrCat("model '", args.model_id, "': LoRA tensors: ",
                                                          gplan.status().message()));
      return status;
    }
    if (absl::Status s = sj->PrepareLoraOperands(ctx.get(), operands); !s.ok()) return fail(s);
    for (int d : dst_devices) {
      std::vector<kernels::BoxCopyOp> ops;
      for (const layout::CopyOp& c : gplan->ops) {
        ops.push_back(layout::LowerCopy(c, src_ranks[c.src_endpoint]->Live(c.src_shard),
                                        {&gather.shards[c.dst_shard], nullptr,
                                         sj->LoraOperand(d, operands[c.dst_shard].first)}));
      }
      if (absl::Status s = ctx->Copy(d, ops.data(), ops.size()); !s.ok()) return fail(s);
    }
  }

  // ---- Memory the job writes.
  if (absl::Status s = sj->PrepareTargets(ctx.get()); !s.ok()) return fail(s);

  // ---- Pause in-place targets before their live memory is written.
  if (absl::Status s = CheckJob(job, deadline, "planning", client_gone); !s.ok()) return status = s;
  if (absl::Status s = CheckMemory(job->sessions); !s.ok()) return fail(s);
  if (const SessionReplicas inplace = sj->Sessions(UpdateMode::kInPlace); !inplace.empty()) {
    SetProgress(job, {"PAUSING", 0, 0, 0, 0, 0});
    absl::Status s = PauseTargets(job, inplace, args.model_id, v, deadline);
    sj->Paused(inplace);
    if (!s.ok()) return s;
  }

  // ---- Transfer, bucket by bucket.
  Progress prog{"TRANSFERRING", 0, 0, 0, 0, 0};
  std::vector<bool> bucket_used(plan->buckets.size(), false);
  for (size_t b = 0; b < plan->buckets.size(); ++b) {
    for (uint32_t i = plan->buckets[b].first_op; i < plan->buckets[b].first_op + plan->buckets[b].num_ops; ++i) {
      const layout::CopyOp& c = plan->ops[i];
      if (sj->Writes(c)) {
        bucket_used[b] = true;
        prog.bytes_total += layout::BoxBytes(c.dst_box, dst_shard(c.dst_endpoint, c.dst_shard).dtype);
      }
    }
    prog.buckets_total += bucket_used[b];
  }
  SetProgress(job, prog);
  if (progress) progress(prog);

  // The verify's checks: bucket b's (check_of_bucket[b], -1 when unused),
  // then one per FP8 target endpoint.
  std::vector<int64_t> check_of_bucket(plan->buckets.size(), -1);
  uint64_t word = 0;
  const absl::Time t_xfer0 = absl::Now();
  // Padding of full syncs first (zero fills, not digested).
  if (sj->full()) {
    std::vector<std::pair<uint32_t, const layout::FillOp*>> fills;
    for (const layout::FillOp& f : plan->fills) fills.push_back({f.dst_endpoint, &f});
    if (absl::Status s = sj->WriteFills(ctx.get(), fills); !s.ok()) return fail(s);
  }
  // FP8 targets: a piece of a weight with block scales in an fp8 buffer is
  // assembled in fp32 from its ops and quantized with its scales after the
  // buckets (docs/fp8.md). (endpoint, shard, tensor) -> its ops.
  std::map<std::tuple<uint32_t, uint32_t, int32_t>, std::vector<uint32_t>> quant_ops;
  for (uint32_t e = 0; e < sj->num_targets(); ++e) {
    const RankReg* r = sj->rank(e);
    for (uint32_t s = 0; s < r->shards.size(); ++s) {
      for (const layout::Piece& pc : r->shards[s].pieces) {
        if (layout::QuantizedInto(model->spec, pc.tensor, r->shards[s].dtype)) quant_ops[{e, s, pc.tensor}];
      }
    }
  }
  for (uint32_t i = 0; i < plan->ops.size(); ++i) {
    const layout::CopyOp& c = plan->ops[i];
    auto q = quant_ops.find({c.dst_endpoint, c.dst_shard, c.tensor});
    if (q != quant_ops.end()) q->second.push_back(i);
  }
  // Pieces this mode does not write (adapter_only without an active adapter).
  for (auto it = quant_ops.begin(); it != quant_ops.end();) {
    it = it->second.empty() || sj->Writes(plan->ops[it->second[0]]) ? std::next(it) : quant_ops.erase(it);
  }
  for (size_t b = 0; b < plan->buckets.size(); ++b) {
    if (!bucket_used[b]) continue;
    if (absl::Status s = CheckJob(job, deadline, "transfer", client_gone); !s.ok()) return status = s;
    const layout::Bucket& bk = plan->buckets[b];
    const int dev = sj->device(bk.dst_endpoint);
    TargetWrite tw;
    uint64_t bytes = 0;
    const uint64_t first_word = word;
    for (uint32_t i = bk.first_op; i < bk.first_op + bk.num_ops; ++i) {
      const layout::CopyOp& c = plan->ops[i];
      if (!quant_ops.empty() && quant_ops.count({c.dst_endpoint, c.dst_shard, c.tensor})) continue;  // quantized below
      bytes += sj->AddWrite(c.dst_endpoint, c, src_ranks[c.src_endpoint]->Live(c.src_shard), /*merge_dims=*/true,
                            &word, &tw);
    }
    // Digest slot b: what bucket b sent.
    absl::Status ks = RunTargetWrite(ctx.get(), dev, tw, b);
    if (!ks.ok()) return fail(Annotate(ks, absl::StrCat("bucket ", b)));
    check_of_bucket[b] =
        static_cast<int64_t>(sj->AddCheck(bk.dst_endpoint, std::move(tw.boxes), std::move(tw.box_words), word - first_word));
    if (options_.test_hooks && options_.test_hooks->bucket_delay_ms) {
      absl::SleepFor(absl::Milliseconds(options_.test_hooks->bucket_delay_ms));
    }
    prog.bytes_done += bytes;
    prog.buckets_done++;
    prog.rate_bytes_per_s = prog.bytes_done / std::max(1e-9, absl::ToDoubleSeconds(absl::Now() - t_xfer0));
    SetProgress(job, prog);
    if (progress) progress(prog);
  }
  const size_t nb = plan->buckets.size();
  // Quantized pieces: digest slot nb + k holds what target endpoint
  // quant_eps[k] got; the slot after them takes the fp32 assembly's digests,
  // which nothing reads.
  std::vector<uint32_t> quant_eps;
  for (const auto& [key, ops] : quant_ops) {
    if (quant_eps.empty() || quant_eps.back() != std::get<0>(key)) quant_eps.push_back(std::get<0>(key));
  }
  const size_t nq = quant_eps.size();
  std::vector<std::unique_ptr<memory::Buffer>> quant_buffers;
  std::vector<size_t> check_of_quant(nq);
  for (size_t k = 0; k < nq; ++k) {
    const uint32_t e = quant_eps[k];
    const uint64_t first_word = word;
    std::vector<kernels::BoxCopyOp> descs;  // what lands in the target, for the verify
    std::vector<uint64_t> desc_words;
    for (const auto& [key, ops] : quant_ops) {
      if (std::get<0>(key) != e) continue;
      const auto [t, shard, tensor] = key;
      RankReg* r = sj->rank(e);
      const int dev = sj->device(e);
      const layout::Piece* piece = sj->PieceOf(e, shard, tensor);
      // A piece one source holds whole, without LoRA: quantized from there,
      // the source read once and the FP8 bytes written once.
      std::vector<const layout::CopyOp*> piece_ops;
      bool one_source = !sj->Adapted(tensor);
      for (uint32_t i : ops) {
        const layout::CopyOp& c = plan->ops[i];
        piece_ops.push_back(&c);
        one_source &= c.src_endpoint == plan->ops[ops[0]].src_endpoint && c.src_shard == plan->ops[ops[0]].src_shard;
      }
      const std::optional<SyncJob::PieceSource> whole =
          one_source ? WholePieceSource(*piece, piece_ops,
                                        src_ranks[piece_ops[0]->src_endpoint]->Live(piece_ops[0]->src_shard))
                     : std::nullopt;
      ++out.fp8_pieces;
      if (whole.has_value()) {
        auto q = sj->QuantizePiece(ctx.get(), e, shard, tensor, *whole, nb + k, &word, &descs, &desc_words,
                                   &quant_buffers);
        if (!q.ok()) return fail(q.status());
        prog.bytes_done += *q;
        continue;
      }
      // Otherwise the piece in fp32, from whichever sources hold it (the
      // rank keeps its scratch between pieces and syncs: QuantizePiece's
      // work waits for the writes before it).
      const uint64_t need = static_cast<uint64_t>(piece->canonical.NumElements()) * 4;
      if (!r->fp8_scratch || r->fp8_scratch->size() < need) {
        r->fp8_scratch.reset();
        auto b = ctx->Allocate(dev, need, absl::StrCat("FP8 scratch of ", r->Label()));
        if (!b.ok()) return fail(b.status());
        r->fp8_scratch = std::move(*b);
      }
      TargetWrite tw;
      uint64_t scratch_word = 0;
      for (uint32_t i : ops) {
        const layout::CopyOp& c = plan->ops[i];
        sj->AddScratchWrite(e, c, src_ranks[c.src_endpoint]->Live(c.src_shard), r->fp8_scratch->data(),
                            &scratch_word, &tw);
      }
      if (absl::Status ws = RunTargetWrite(ctx.get(), dev, tw, nb + nq); !ws.ok()) return fail(ws);
      ++out.fp8_assembled;
      const SyncJob::PieceSource scratch{r->fp8_scratch->data(), layout::DType::kF32, piece->canonical.size[1]};
      auto q = sj->QuantizePiece(ctx.get(), e, shard, tensor, scratch, nb + k, &word, &descs, &desc_words,
                                 &quant_buffers);
      if (!q.ok()) return fail(q.status());
      prog.bytes_done += *q;
    }
    check_of_quant[k] = sj->AddCheck(e, std::move(descs), std::move(desc_words), word - first_word);
  }
  auto sent = ctx->Finish(nb + nq + 1);
  if (!sent.ok()) return fail(sent.status());
  for (size_t b = 0; b < nb; ++b) {
    if (check_of_bucket[b] >= 0) sj->SetWritten(check_of_bucket[b], (*sent)[b]);
  }
  for (size_t k = 0; k < nq; ++k) sj->SetWritten(check_of_quant[k], (*sent)[nb + k]);
  const absl::Time t_xfer = absl::Now();

  // ---- Verify: re-read every bucket's destination and compare digests.
  prog.phase = "VERIFYING";
  SetProgress(job, prog);
  if (progress) progress(prog);
  auto changed = sj->Verify(ctx.get());
  if (!changed.ok()) return fail(changed.status());
  if (!changed->empty()) {
    const size_t i = changed->front();
    const SyncJob::Check& c = sj->check(i);
    auto q = std::find(check_of_quant.begin(), check_of_quant.end(), i);
    if (q != check_of_quant.end()) {
      return status = absl::DataLossError(absl::StrCat("model '", args.model_id, "' version ", v,
                                                       ": the FP8 weights and scales written to ", dst_ids[c.target],
                                                       " changed before the verify (target memory changed during "
                                                       "the sync?)"));
    }
    const size_t b = std::find(check_of_bucket.begin(), check_of_bucket.end(), static_cast<int64_t>(i)) -
                     check_of_bucket.begin();
    const layout::Bucket& bk = plan->buckets[b];
    return status = absl::DataLossError(absl::StrCat(
        "model '", args.model_id, "' version ", v, ": bucket ", b, " (", src_ids[bk.src_endpoint], " -> ",
        dst_ids[bk.dst_endpoint], ", ", bk.bytes, " bytes) digest mismatch: sent ",
        kernels::DigestFinish(c.written, c.num_words * 8).Hex(), ", received ",
        kernels::DigestFinish(c.reread, c.num_words * 8).Hex(), " (target memory changed during the sync?)"));
  }
  std::map<std::string, kernels::DigestSums> rep_sums;
  std::map<std::string, uint64_t> rep_words;
  kernels::DigestSums all;
  for (size_t i = 0; i < sj->num_checks(); ++i) {
    const SyncJob::Check& c = sj->check(i);
    const std::string& rid = sj->replica_id(c.target);
    rep_sums[rid].s1 += c.reread.s1;
    rep_sums[rid].s2 += c.reread.s2;
    rep_words[rid] += c.num_words;
    all.s1 += c.reread.s1;
    all.s2 += c.reread.s2;
  }
  if (absl::Status s = CheckJob(job, deadline, "verify", client_gone); !s.ok()) return status = s;
  // A page that vanished during the transfer was served from a private
  // zero page: the digests agree with each other, but not with the memory.
  if (absl::Status s = CheckMemory(job->sessions); !s.ok()) return fail(s);
  const absl::Time t_verify = absl::Now();

  // ---- Commit.
  prog.phase = "COMMITTING";
  SetProgress(job, prog);
  if (progress) progress(prog);
  if (const SessionReplicas staged = sj->Sessions(UpdateMode::kStaged); !staged.empty()) {
    absl::Status s = PauseTargets(job, staged, args.model_id, v, deadline);
    sj->Paused(staged);
    if (!s.ok()) return s;
    if (s = CheckJob(job, deadline, "commit", client_gone); !s.ok()) return s;
    if (s = sj->CommitStaged(ctx.get()); !s.ok()) return fail(s);
    if (s = CheckMemory(job->sessions); !s.ok()) return fail(s);
  }
  const absl::Time t_commit = absl::Now();

  uint64_t total_words = 0;
  for (const auto& [rid, w] : rep_words) total_words += w;
  out.model_id = args.model_id;
  out.version = v;
  out.digest = kernels::DigestFinish(all, total_words * 8).Hex();
  out.bytes = prog.bytes_done;
  out.buckets = prog.buckets_done;
  out.path = on_gpu ? "gpu" : "host";
  out.plan_hash = plan->HashHex();
  out.replicas = replica_ids;
  out.times = {Ms(t_plan - t0), Ms(t_xfer - t_plan), Ms(t_verify - t_xfer), Ms(t_commit - t_verify),
               Ms(absl::Now() - t0)};
  for (const std::string& rid : replica_ids) {
    digests[rid] = kernels::DigestFinish(rep_sums[rid], rep_words[rid] * 8).Hex();
  }
  log_->info("sync {} of model '{}' committed version {}: {:.1f} MiB in {} buckets, {:.1f} ms "
             "(plan {:.1f}, transfer {:.1f}, verify {:.1f}, commit {:.1f}), digest {}",
             job->id, args.model_id, v, out.bytes / 1048576.0, out.buckets, out.times.total_ms,
             out.times.plan_ms, out.times.transfer_ms, out.times.verify_ms, out.times.commit_ms, out.digest);
  if (out.fp8_pieces > 0) {
    log_->info("sync {}: {} FP8 pieces quantized, {} read straight from one source, {} assembled in fp32 first",
               job->id, out.fp8_pieces, out.fp8_pieces - out.fp8_assembled, out.fp8_assembled);
  }
  return out;
  };
  absl::StatusOr<SyncOutcome> result = steps();
  status = result.status();
  return result;
}

absl::StatusOr<VersionInfo> CoreImpl::WaitVersion(const std::string& model_id,
                                                  const std::string& replica_id, uint64_t min_version,
                                                  uint64_t timeout_ms,
                                                  const std::function<bool()>& client_gone) {
  WSYNC_RETURN_IF_ERROR(CheckModelId(model_id));
  if (replica_id.size() > 128) {
    return absl::InvalidArgumentError(absl::StrCat("replica id ", Quoted(replica_id), " is longer than 128 bytes"));
  }
  const absl::Time until = absl::Now() + absl::Milliseconds(timeout_ms);
  wsync::MutexLock lock(&mu_);
  auto replica = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> const Replica* {
    auto mit = models_.find(model_id);
    if (mit == models_.end()) return nullptr;
    auto rit = mit->second->replicas.find(replica_id);
    return rit == mit->second->replicas.end() ? nullptr : &rit->second;
  };
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Replica* r = replica();
    return r == nullptr || !serving_ || (r->version >= min_version && !r->poisoned());
  };
  while (true) {
    if (!models_.count(model_id)) {
      return absl::NotFoundError(absl::StrCat("model '", model_id, "' is not registered"));
    }
    const Replica* r = replica();
    if (r == nullptr) {
      return absl::NotFoundError(absl::StrCat("model '", model_id, "' has no replica '", replica_id, "'"));
    }
    if (r->version >= min_version && !r->poisoned()) return VersionInfo{r->version, r->digest};
    if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
    if (client_gone && client_gone()) return absl::CancelledError("the caller went away");
    if (absl::Now() >= until) {
      return absl::DeadlineExceededError(absl::StrCat(
          "model '", model_id, "' replica '", replica_id, "' did not reach version ", min_version,
          " within ", timeout_ms, " ms (it is at version ", r->version, r->poisoned() ? ", poisoned" : "", ")"));
    }
    // Conditions are re-evaluated on every unlock; wake at least every 100 ms
    // to notice a departed caller.
    mu_.AwaitWithDeadline(absl::Condition(&ready), std::min(until, absl::Now() + absl::Milliseconds(100)));
  }
}

absl::StatusOr<std::string> CoreImpl::CancelSync(const Caller& caller, const std::string& model_id,
                                                 uint64_t version) {
  WSYNC_RETURN_IF_ERROR(CheckModelId(model_id));
  wsync::MutexLock lock(&mu_);
  auto mit = models_.find(model_id);
  if (mit != models_.end()) {
    WSYNC_RETURN_IF_ERROR(Authorize(caller, model_id, mit->second.get(), "cancel a sync of"));
  }
  if (mit == models_.end() || mit->second->running == nullptr) {
    return absl::NotFoundError(absl::StrCat("no sync of model '", model_id, "' is running"));
  }
  Job* job = mit->second->running;
  if (version != 0 && job->version != version) {
    return absl::NotFoundError(absl::StrCat("the running sync of model '", model_id, "' is version ",
                                            job->version, ", not ", version));
  }
  job->cancel.store(true);
  log_->info("sync {} of model '{}' version {}: cancel requested", job->id, model_id, job->version);
  return job->id;
}

}  // namespace wsync::core::internal
