// Multi-node syncs. The coordinator (the daemon the model's ranks were
// announced to) plans, sends every member the same PlanPart, gathers their
// digests (Prepare), compares them and commits or aborts everywhere. Each
// member runs its part: sources pack their buckets (regroup + cast) into
// wire buffers, the bytes travel over Gloo as chain broadcasts (one hop per
// daemon, so k replicas cost about one), targets unpack into staging or
// live memory. Three wire buffers per model keep packing, the wire and
// unpacking overlapped.
#include <algorithm>
#include <optional>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/core/core_impl.h"
#include "daemon/core/member_failure.h"
#include "daemon/transport/nccl_communicator.h"
#include "daemon/transport/wire_pipeline.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/layout/lowering.h"
#include "kernels/digest.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::core::internal {
namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }
uint64_t Align(uint64_t x) { return (x + 63) & ~uint64_t{63}; }

// The coordinator's own rendezvous store, for its own part.
class LocalStore final : public transport::KvStore {
 public:
  LocalStore(Core* core, std::string scope) : core_(core), scope_(std::move(scope)) {}
  absl::Status Set(const std::string& key, const std::string& value) override {
    return core_->KvSet(scope_, key, value);
  }
  absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    return core_->KvGet(scope_, key, static_cast<uint64_t>(timeout.count()), nullptr);
  }

 private:
  Core* core_;
  std::string scope_;
};

std::string ShardsSignature(const std::vector<layout::ShardSpec>& shards) {
  std::string s;
  for (const auto& sh : shards) {
    absl::StrAppend(&s, sh.name, sh.shape.ToString(), static_cast<int>(sh.dtype), ":");
    for (const auto& p : sh.pieces) absl::StrAppend(&s, p.tensor, p.canonical.ToString(), p.shard.ToString(), ";");
  }
  return s;
}

std::string HexOf(const std::string& bytes) {
  kernels::DigestSums s = kernels::DigestPartial(bytes.data(), bytes.size(), 0);
  return kernels::DigestFinish(s, bytes.size()).Hex();
}

// A dense shard holding one box: how a wire region is viewed.
layout::ShardSpec RegionSpec(const layout::Box& box, layout::DType dtype) {
  layout::ShardSpec s;
  s.shape.ndim = box.ndim;
  for (int i = 0; i < box.ndim; ++i) s.shape.d[i] = box.size[i];
  s.dtype = dtype;
  return s;
}

layout::Box Origin(const layout::Box& box) {
  layout::Box b = box;
  for (int i = 0; i < b.ndim; ++i) b.off[i] = 0;
  return b;
}

}  // namespace

WireTransport ChooseWireTransport(const PlanPart& part, std::string* why) {
  why->clear();
  // Each member's GPU: the one GPU all its ranks of the part are on, or
  // why it has none.
  std::map<std::string, std::set<std::string>> gpus;  // daemon -> GPU UUIDs ("" = host memory)
  bool any_gpu = false;
  for (const auto* eps : {&part.sources, &part.targets}) {
    for (const PlanEndpoint& e : *eps) {
      gpus[e.daemon_id].insert(e.gpu_uuid);
      any_gpu |= !e.gpu_uuid.empty();
    }
  }
  if (!any_gpu || part.members.size() < 2) return WireTransport::kGloo;
  std::map<std::string, std::string> gpu_of;  // daemon -> its one GPU
  for (const PeerMember& m : part.members) {
    const std::set<std::string>& g = gpus[m.daemon_id];
    if (!m.nccl) {
      *why = absl::StrCat("daemon '", m.daemon_id, "' cannot run NCCL (no CUDA build or no visible GPU)");
    } else if (g.count("")) {
      *why = absl::StrCat("daemon '", m.daemon_id, "' holds ranks in host memory");
    } else if (g.size() != 1) {
      *why = absl::StrCat("daemon '", m.daemon_id, "' holds ranks on ", g.size(),
                          " GPUs (an NCCL part takes one GPU per daemon)");
    } else {
      gpu_of[m.daemon_id] = *g.begin();
      continue;
    }
    return WireTransport::kGloo;
  }
  std::map<std::string, std::string> holder;  // GPU -> the member on it
  for (const auto& [daemon, gpu] : gpu_of) {
    auto [it, fresh] = holder.emplace(gpu, daemon);
    if (!fresh) {
      *why = absl::StrCat("daemons '", it->second, "' and '", daemon, "' share GPU ", gpu,
                          " (NCCL connects distinct GPUs)");
      return WireTransport::kGloo;
    }
  }
  return WireTransport::kNccl;
}

absl::StatusOr<DistPlan> BuildDistPlan(const PlanPart& part, const layout::ModelSpec& spec,
                                       const std::map<int32_t, Adapter>& adapters) {
  DistPlan d;
  std::map<int32_t, int32_t> tensor_ids;  // PlanPart tensor index -> local id
  std::vector<layout::Endpoint> sources, targets;  // planner inputs (targets: representatives)
  const std::string what = absl::StrCat("model '", part.model_id, "' job ", part.job_id);
  for (size_t i = 0; i < part.tensor_names.size(); ++i) {
    const int32_t id = spec.Find(part.tensor_names[i]);
    if (id < 0) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": the plan names tensor '", part.tensor_names[i],
                                                        "', which the model registered here lacks"));
    }
    tensor_ids[static_cast<int32_t>(i)] = id;
  }
  for (size_t i = 0; i < part.members.size(); ++i) d.rank_of[part.members[i].daemon_id] = static_cast<int>(i);
  auto rank_of = [&](const std::string& daemon) -> absl::StatusOr<int> {
    auto it = d.rank_of.find(daemon);
    if (it == d.rank_of.end()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": daemon '", daemon, "' holds ranks but is not a member"));
    }
    return it->second;
  };
  auto local_shards = [&](const PlanEndpoint& e) {
    std::vector<layout::ShardSpec> out = e.shards;
    for (auto& s : out) {
      for (auto& p : s.pieces) p.tensor = tensor_ids[p.tensor];
    }
    return out;
  };
  for (const PlanEndpoint& e : part.sources) {
    sources.push_back({absl::StrCat("source/", CoordsKey(e.rank)), {e.daemon_id, -1}, local_shards(e)});
  }
  for (const auto& group : part.replica_groups) {
    if (group.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": an empty replica group"));
    for (size_t j = 0; j < part.targets.size(); ++j) {
      const PlanEndpoint& e = part.targets[j];
      if (e.replica_id != group[0]) continue;
      targets.push_back({absl::StrCat(e.replica_id, "/", CoordsKey(e.rank)), {e.daemon_id, -1}, local_shards(e)});
      std::vector<uint32_t> recv;
      for (size_t k = 0; k < part.targets.size(); ++k) {
        const PlanEndpoint& o = part.targets[k];
        if (CoordsKey(o.rank) == CoordsKey(e.rank) &&
            std::find(group.begin(), group.end(), o.replica_id) != group.end()) {
          recv.push_back(static_cast<uint32_t>(k));
        }
      }
      if (recv.size() != group.size()) {
        return absl::InvalidArgumentError(absl::StrCat(what, ": replicas ", absl::StrJoin(group, ", "),
                                                       " are grouped but do not all hold ", e.rank.ToString()));
      }
      d.receivers.push_back(std::move(recv));
    }
  }
  auto plan = layout::BuildPlan(spec, sources, targets, {part.bucket_bytes});
  if (!plan.ok()) {
    return absl::Status(plan.status().code(), absl::StrCat("model '", part.model_id, "': ", plan.status().message()));
  }
  d.plan = std::move(*plan);
  d.full = part.lora == LoraMode::kNone || part.lora == LoraMode::kMerge;
  for (const auto& [base, ad] : adapters) d.adapted.insert(base);
  if (part.lora != LoraMode::kNone) {
    for (const std::string& b : part.lora_bases) {
      const int32_t id = spec.Find(b);
      if (id < 0 || !adapters.count(id)) {
        return absl::FailedPreconditionError(
            absl::StrCat(what, ": no LoRA adapter on '", b, "' is registered with the model here"));
      }
      d.active.insert(id);
    }
    if (part.lora_bases.empty()) d.active = d.adapted;
    if (d.active.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": LoRA mode ", LoraModeName(part.lora),
                                                        " but the model here has no adapters"));
    }
  }
  // Member ranks that hold targets.
  std::set<int> target_ranks;
  for (const PlanEndpoint& e : part.targets) {
    auto r = rank_of(e.daemon_id);
    if (!r.ok()) return r.status();
    target_ranks.insert(*r);
  }
  auto chain_from = [&](int src, const std::set<int>& to) {
    std::vector<int> c = {src};
    for (int r : to) {
      if (r != src) c.push_back(r);
    }
    return c;
  };
  std::string hash_input = absl::StrCat(d.plan.HashHex(), "|", LoraModeName(part.lora), "|");
  if (!d.active.empty()) {
    d.gather_target.id = "lora";
    for (int32_t base : d.active) {
      const Adapter& ad = adapters.at(base);
      for (int32_t t : {ad.a, ad.b}) {
        const layout::Shape& sh = spec.tensor(t).shape;
        layout::ShardSpec s{spec.tensor(t).name, sh, layout::DType::kF32, {}};
        s.pieces.push_back({t, layout::Box::Whole(sh), layout::Box::Whole(sh)});
        d.gather_target.shards.push_back(s);
      }
    }
    auto g = layout::BuildPlan(spec, sources, {d.gather_target}, {part.bucket_bytes});
    if (!g.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": LoRA tensors: ", g.status().message()));
    }
    d.gather = std::move(*g);
    d.has_gather = true;
    absl::StrAppend(&hash_input, d.gather.HashHex(), "|");
    for (size_t b = 0; b < d.gather.buckets.size(); ++b) {
      const layout::Bucket& bk = d.gather.buckets[b];
      Wire w;
      w.gather = true;
      w.bucket = static_cast<uint32_t>(b);
      for (uint32_t i = bk.first_op; i < bk.first_op + bk.num_ops; ++i) {
        w.ops.push_back({i, w.bytes, layout::DType::kF32});
        w.bytes = Align(w.bytes + layout::BoxBytes(d.gather.ops[i].dst_box, layout::DType::kF32));
      }
      auto src = rank_of(part.sources[bk.src_endpoint].daemon_id);
      if (!src.ok()) return src.status();
      w.chain = chain_from(*src, target_ranks);
      d.wires.push_back(std::move(w));
    }
  }
  static char dummy[64];
  uint64_t words = 0;
  for (size_t b = 0; b < d.plan.buckets.size(); ++b) {
    const layout::Bucket& bk = d.plan.buckets[b];
    Wire w;
    w.bucket = static_cast<uint32_t>(b);
    w.moves = d.full;
    w.word_base = words;
    std::set<int> to;
    for (uint32_t k : d.receivers[bk.dst_endpoint]) {
      auto r = rank_of(part.targets[k].daemon_id);
      if (!r.ok()) return r.status();
      to.insert(*r);
    }
    for (uint32_t i = bk.first_op; i < bk.first_op + bk.num_ops; ++i) {
      const layout::CopyOp& c = d.plan.ops[i];
      const layout::ShardSpec& dst = targets[c.dst_endpoint].shards[c.dst_shard];
      const bool written = d.full || d.active.count(c.tensor);
      if (written) {
        kernels::BoxCopyOp k = layout::LowerBox(c.dst_box, {&dst, nullptr, dummy});
        uint64_t base;
        words += kernels::BoxPayloadWords(&k, 1, words, &base);
      }
      if (!d.full) continue;
      // fp32 where the targets compute: LoRA merges, and FP8 quantization
      // (the target assembles each piece in fp32, then quantizes it).
      const bool quantized = layout::QuantizedInto(spec, c.tensor, dst.dtype);
      const layout::DType wire = d.adapted.count(c.tensor) || quantized ? layout::DType::kF32 : dst.dtype;
      w.ops.push_back({i, w.bytes, wire});
      w.bytes = Align(w.bytes + layout::BoxBytes(c.dst_box, wire));
    }
    w.words = words - w.word_base;
    auto src = rank_of(part.sources[bk.src_endpoint].daemon_id);
    if (!src.ok()) return src.status();
    w.chain = chain_from(*src, to);
    absl::StrAppend(&hash_input, absl::StrJoin(w.chain, ","), ";");
    d.wires.push_back(std::move(w));
  }
  d.hash = HexOf(hash_input);
  return d;
}

// ---------------------------------------------------------------- participant

namespace {
// Wire buffers per model and daemon (each as large as the biggest bucket).
constexpr size_t kWireBuffers = 3;

// "tensors a, b and 3 more": what wire `w` carries, for error messages.
std::string WireTensors(const DistPlan& d, const Wire& w, const layout::ModelSpec& spec) {
  const layout::Plan& pl = w.gather ? d.gather : d.plan;
  std::vector<std::string> names;
  for (const WireOp& o : w.ops) {
    const std::string& n = spec.tensor(pl.ops[o.op].tensor).name;
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  }
  const size_t shown = std::min<size_t>(names.size(), 2);
  std::string out = absl::StrCat("tensors ", absl::StrJoin(names.begin(), names.begin() + shown, ", "));
  if (names.size() > shown) absl::StrAppend(&out, " and ", names.size() - shown, " more");
  return out;
}
}  // namespace

absl::StatusOr<std::unique_ptr<transport::Communicator>> CoreImpl::NewCommunicator(
    const std::vector<std::string>& members, int rank, const std::string& key) {
  CommRoute route;
  {
    wsync::MutexLock lock(&mu_);
    route = comm_store_[key];
  }
  std::unique_ptr<transport::KvStore> store;
  if (route.coordinator.empty() || route.coordinator == PeerAddress()) {
    store = std::make_unique<LocalStore>(this, key);
  } else {
    store = options_.peers->Store(route.coordinator, key);
  }
  const auto timeout = std::chrono::milliseconds(options_.peer_timeout_ms * 3);
  if (route.nccl_device >= 0 && !StandInNccl()) {
    log_->info("building an NCCL communicator on GPU {}: rank {} of {} ({})", route.nccl_device, rank, members.size(),
               absl::StrJoin(members, ", "));
    return transport::CreateNcclCommunicator(store.get(), key, rank, static_cast<int>(members.size()),
                                             {route.nccl_device, timeout});
  }
  transport::GlooOptions o;
  o.hostname = options_.data_host;
  o.timeout = timeout;
  log_->info("building a gloo communicator{}: rank {} of {} ({})",
             route.nccl_device >= 0 ? " (standing in for NCCL: a test hook)" : "", rank, members.size(),
             absl::StrJoin(members, ", "));
  return transport::CreateGlooCommunicator(store.get(), key, rank, static_cast<int>(members.size()), o);
}

absl::StatusOr<std::string> CoreImpl::AcceptPlan(const PlanPart& plan) {
  if (plan.job_id.empty()) return absl::InvalidArgumentError("a plan part needs a job id");
  auto p = std::make_unique<Part>();
  p->plan = plan;
  Model* model = nullptr;
  uint64_t generation = 0;
  std::vector<std::pair<RankReg*, Replica*>> dst_local;  // per plan target: this daemon's rank
  {
    wsync::MutexLock lock(&mu_);
    if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
    ReapParts();
    if (parts_.count(plan.job_id) || outcomes_.Contains(plan.job_id)) {
      return absl::AlreadyExistsError(absl::StrCat("job ", plan.job_id, " was already distributed here"));
    }
    auto mit = models_.find(plan.model_id);
    if (mit == models_.end()) {
      return absl::NotFoundError(absl::StrCat("model '", plan.model_id, "' is not registered on daemon '",
                                              options_.daemon_id, "'"));
    }
    model = mit->second.get();
    generation = model->generation;
    if (model->part != nullptr || (model->running != nullptr && model->running->id != plan.job_id)) {
      return absl::FailedPreconditionError(absl::StrCat("model '", plan.model_id, "' already runs a sync on daemon '",
                                                        options_.daemon_id, "'"));
    }
    const std::string& me = options_.daemon_id;
    auto check = [&](const PlanEndpoint& e, RankReg* r) -> absl::Status {
      const std::string who = absl::StrCat("model '", plan.model_id, "' ", RoleName(e.role), " ",
                                           e.rank.ToString(), e.replica_id.empty() ? "" : " of replica '" + e.replica_id + "'",
                                           " on daemon '", me, "'");
      if (r == nullptr || !r->daemon.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(who, " is not registered here (any more)"));
      }
      if (r->device >= 0 && !cuda_exec_.ok()) return Annotate(cuda_exec_.status(), who);
      if (r->shards.size() != e.shards.size()) {
        return absl::FailedPreconditionError(absl::StrCat(who, " changed since it was announced"));
      }
      for (size_t i = 0; i < e.shards.size(); ++i) {
        const auto& a = r->shards[i];
        const auto& b = e.shards[i];
        if (a.name != b.name || a.shape != b.shape || a.dtype != b.dtype || a.pieces.size() != b.pieces.size()) {
          return absl::FailedPreconditionError(absl::StrCat(who, " buffer '", a.name, "' changed since it was announced"));
        }
      }
      return absl::OkStatus();
    };
    p->src_local.assign(plan.sources.size(), nullptr);
    dst_local.assign(plan.targets.size(), {nullptr, nullptr});
    for (size_t i = 0; i < plan.sources.size(); ++i) {
      if (plan.sources[i].daemon_id != me) continue;
      auto it = model->sources.find(CoordsKey(plan.sources[i].rank));
      RankReg* r = it == model->sources.end() ? nullptr : it->second.get();
      WSYNC_RETURN_IF_ERROR(check(plan.sources[i], r));
      p->src_local[i] = r;
    }
    for (size_t j = 0; j < plan.targets.size(); ++j) {
      if (plan.targets[j].daemon_id != me) continue;
      auto rit = model->replicas.find(plan.targets[j].replica_id);
      RankReg* r = nullptr;
      if (rit != model->replicas.end()) {
        auto it = rit->second.ranks.find(CoordsKey(plan.targets[j].rank));
        if (it != rit->second.ranks.end()) r = it->second.get();
      }
      WSYNC_RETURN_IF_ERROR(check(plan.targets[j], r));
      dst_local[j] = {r, &rit->second};
    }
  }
  // The model is not frozen yet, but its spec and adapters never change.
  auto dist = BuildDistPlan(plan, model->spec, model->adapters);
  if (!dist.ok()) return dist.status();
  if (dist->hash != plan.plan_hash) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model '", plan.model_id, "' job ", plan.job_id, ": plan hash mismatch on daemon '", options_.daemon_id,
        "': the coordinator planned ", plan.plan_hash, ", this daemon computes ", dist->hash,
        " (different wsync versions, or the model differs)"));
  }
  p->dist = std::make_unique<DistPlan>(std::move(*dist));
  p->sj = std::make_unique<SyncJob>(&model->spec, plan.lora, model->adapters, p->dist->active);
  for (size_t j = 0; j < plan.targets.size(); ++j) {
    auto [r, rep] = dst_local[j];
    p->sj->AddTarget(r, rep, plan.targets[j].replica_id, r == nullptr ? -1 : DeviceOf(r));
  }
  p->deadline = absl::FromUnixMillis(static_cast<int64_t>(plan.deadline_unix_ms));
  const std::string hash = p->dist->hash;
  wsync::MutexLock lock(&mu_);
  if (model->part != nullptr || model->generation != generation) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model '", plan.model_id, "' on daemon '", options_.daemon_id,
        "': a rank registered or left while the plan of job ", plan.job_id, " was checked; retry the sync"));
  }
  auto job = std::make_unique<Job>();
  job->id = plan.job_id;
  job->model_id = plan.model_id;
  job->version = plan.version;
  job->start = absl::Now();
  for (RankReg* r : p->src_local) if (r) job->sessions.insert(r->session_id);
  for (const auto& [sid, reps] : p->sj->Sessions()) job->sessions.insert(sid);
  if (plan.coordinator_id != options_.daemon_id) job->daemons.insert(plan.coordinator_id);
  job->progress.phase = "TRANSFERRING";
  p->job = job.get();
  p->model = model;
  jobs_[absl::StrCat("part:", plan.job_id)] = std::move(job);
  model->part = p.get();
  Part* raw = p.get();
  parts_[plan.job_id] = std::move(p);
  raw->thread = std::thread([this, raw] { RunPart(raw); });
  log_->info("job {} of model '{}' version {}: part accepted from coordinator '{}' (plan {})", plan.job_id,
             plan.model_id, plan.version, plan.coordinator_id, hash);
  return hash;
}

bool CoreImpl::StandIn() const {
  return options_.test_hooks && (options_.test_hooks->stand_in_gpu || options_.test_hooks->stand_in_nccl);
}

bool CoreImpl::StandInNccl() const { return options_.test_hooks && options_.test_hooks->stand_in_nccl; }

int CoreImpl::DeviceOf(const RankReg* r) const {
  if (r->device >= 0) return r->device;
  return StandIn() ? 0 : -1;
}

std::string CoreImpl::GpuOf(const RankReg& r) const {
  if (!r.gpu_uuid.empty() || !r.daemon.empty()) return r.gpu_uuid;
  return StandInNccl() ? absl::StrCat("GPU-stand-in-", options_.daemon_id) : "";
}

absl::StatusOr<std::unique_ptr<MixedContext>> CoreImpl::NewMixedContext() {
  return MixedContext::Create(host_exec_.get(), cuda_exec_.ok() ? cuda_exec_->get() : nullptr,
                              cuda_exec_.ok() ? absl::OkStatus() : cuda_exec_.status(), StandIn());
}

absl::Status CoreImpl::TransferPart(Part* p) {
  const PlanPart& plan = p->plan;
  const DistPlan& d = *p->dist;
  SyncJob& sj = *p->sj;
  Job* job = p->job;
  Model* model = p->model;
  const std::string& me = options_.daemon_id;
  const int my_rank = d.rank_of.at(me);
  // Where the wire buffers live (transport::ChooseWireTransport decided for
  // every member): over NCCL, on this daemon's one GPU; over Gloo, in host
  // memory, pinned when shards in GPU memory take the host-staged path
  // (kernels on each shard's GPU pack and unpack them).
  // FP8 pieces being assembled in fp32 as their ops arrive, (target,
  // shard, tensor) -> scratch and elements still to come; quantized and
  // released once complete. (Declared before the context, whose end waits
  // for queued work that reads them.)
  struct Fp8Piece {
    std::unique_ptr<memory::Buffer> scratch;
    uint64_t remaining = 0;
  };
  std::map<std::tuple<uint32_t, uint32_t, int32_t>, Fp8Piece> fp8;
  std::vector<std::unique_ptr<memory::Buffer>> fp8_keep;
  auto ctx_or = NewMixedContext();
  if (!ctx_or.ok()) return ctx_or.status();
  std::unique_ptr<MixedContext> ctx = std::move(*ctx_or);
  bool gpu_work = false;
  std::set<int> devices = sj.Devices();
  for (RankReg* r : p->src_local) {
    if (r != nullptr) devices.insert(DeviceOf(r));
  }
  for (int dev : devices) gpu_work |= dev >= 0;
  const bool nccl = plan.transport == WireTransport::kNccl;
  if (nccl && (devices.size() != 1 || *devices.begin() < 0)) {
    return absl::FailedPreconditionError(absl::StrCat("model '", plan.model_id, "' job ", plan.job_id, " on daemon '",
                                                      me, "': the coordinator chose NCCL, but this daemon's ranks are "
                                                      "not all on one GPU (changed since they were announced?)"));
  }
  const int wire_device = nccl ? *devices.begin() : -1;
  const std::string wire_kind = nccl ? absl::StrCat("gpu", wire_device) : gpu_work ? "pinned" : "host";
  // FP8 targets quantize what arrives (SyncJob::QuantizePiece), or their
  // fp32 pristine base + s*B@A in adapter_only; unmerge would have to start
  // from FP8 weights.
  if (plan.lora == LoraMode::kUnmerge) {
    for (uint32_t j = 0; j < sj.num_targets(); ++j) {
      RankReg* r = sj.rank(j);
      if (r == nullptr) continue;
      for (const layout::ShardSpec& sh : r->shards) {
        for (const layout::Piece& pc : sh.pieces) {
          if (!layout::QuantizedInto(model->spec, pc.tensor, sh.dtype) || !d.active.count(pc.tensor)) continue;
          return absl::FailedPreconditionError(absl::StrCat(
              "model '", plan.model_id, "': tensor '", model->spec.tensor(pc.tensor).name, "' is quantized to FP8 in '",
              sh.name, "' of ", r->Label(), " on daemon '", me, "'; LoRA unmerge cannot start from FP8 weights (use "
              "adapter_only, which rebuilds from the fp32 pristine base)"));
        }
      }
    }
  }
  WSYNC_RETURN_IF_ERROR(sj.PrepareTargets(ctx.get()));
  // In-place targets pause before their live memory is written.
  const std::set<int> target_devices = sj.Devices();
  const bool holds_targets = !target_devices.empty();
  if (const SessionReplicas inplace = sj.Sessions(UpdateMode::kInPlace); !inplace.empty()) {
    absl::Status s = PauseTargets(job, inplace, plan.model_id, plan.version, p->deadline);
    sj.Paused(inplace);
    if (!s.ok()) return s;
  }
  WSYNC_RETURN_IF_ERROR(CheckJob(job, p->deadline, "transfer", nullptr));

  // The communicator, when bytes cross daemons.
  std::vector<const Wire*> mine;
  bool crosses = false;
  size_t max_bytes = 64;
  for (const Wire& w : d.wires) {
    if (std::find(w.chain.begin(), w.chain.end(), my_rank) == w.chain.end()) continue;
    mine.push_back(&w);
    crosses |= w.moves && w.chain.size() > 1;
    if (w.moves) max_bytes = std::max<size_t>(max_bytes, w.bytes);
  }
  std::unique_ptr<transport::Communicator> comm;
  std::vector<std::string> ids;
  for (const PeerMember& m : plan.members) ids.push_back(absl::StrCat(m.daemon_id, "@", m.incarnation));
  const std::string comm_kind = plan.comm_key;
  bool drained = false;  // every posted transfer completed
  auto give_back = absl::MakeCleanup([&] {
    {
      wsync::MutexLock lock(&mu_);
      p->comm = nullptr;
    }
    // Receives still posted could land in a later sync: never reuse it.
    if (comm && !drained) comm->Abort("the transfer ended early");
    if (comm) comms_.Put(transport::CommunicatorCache::Key(comm_kind, 0, ids), std::move(comm));
  });
  if (crosses) {
    // Tells NewCommunicator (the cache's factory) where to rendezvous.
    const std::string key = transport::CommunicatorCache::Key(comm_kind, 0, ids);
    {
      wsync::MutexLock lock(&mu_);
      comm_store_[key] = {plan.coordinator_address, nccl ? wire_device : -1};
    }
    auto c = comms_.Take(comm_kind, 0, ids, absl::StrCat(me, "@", options_.incarnation));
    {
      wsync::MutexLock lock(&mu_);
      comm_store_.erase(key);
    }
    if (!c.ok()) return c.status();
    comm = std::move(*c);
    wsync::MutexLock lock(&mu_);
    p->comm = comm.get();
    if (!job->abort_reason.empty()) comm->Abort(job->abort_reason);
  }

  // LoRA operands, on every device of this daemon that holds targets.
  if (d.has_gather) {
    std::vector<std::pair<int32_t, uint64_t>> operands;
    for (const layout::ShardSpec& s : d.gather_target.shards) operands.push_back({s.pieces[0].tensor, s.shape.NumElements()});
    WSYNC_RETURN_IF_ERROR(sj.PrepareLoraOperands(ctx.get(), operands));
  }
  // Wire buffers stay with the model between syncs: fresh ones would cost
  // page faults on every sync.
  std::vector<std::unique_ptr<memory::Buffer>>& bufs = model->wire;
  if (bufs.size() != kWireBuffers || bufs[0]->size() < max_bytes || model->wire_kind != wire_kind) {
    bufs.clear();
    for (size_t i = 0; i < kWireBuffers; ++i) {
      auto b = nccl ? ctx->Allocate(wire_device, std::max<size_t>(max_bytes, 1), "wire bucket")
                    : ctx->AllocateShared(std::max<size_t>(max_bytes, 1), "wire bucket", gpu_work);
      if (!b.ok()) return b.status();
      bufs.push_back(std::move(*b));
    }
    model->wire_kind = wire_kind;
  }
  // Sources in GPU memory: their producers' ready events come first.
  for (RankReg* r : p->src_local) {
    if (r == nullptr || r->device < 0) continue;
    for (void* ev : r->events) WSYNC_RETURN_IF_ERROR(ctx->WaitEvent(r->device, ev));
  }
  const bool merge = plan.lora == LoraMode::kMerge;

  // Wire digests. The digest of a wire is the payload digest (kernels/
  // box_copy.h) of its regions, words numbered from w.word_base: the same
  // sums as the written digest of a target whose boxes hold the same
  // dtypes. Region i of `w` in `buf`, as a box to digest or write:
  auto regions = [&](const Wire& w, char* buf, std::vector<layout::ShardSpec>* specs) {
    const layout::Plan& pl = w.gather ? d.gather : d.plan;
    specs->clear();
    specs->reserve(w.ops.size());
    std::vector<kernels::BoxCopyOp> out;
    for (const WireOp& o : w.ops) {
      const layout::CopyOp& c = pl.ops[o.op];
      specs->push_back(RegionSpec(c.dst_box, o.dtype));
      out.push_back(layout::LowerBox(Origin(c.dst_box), {&specs->back(), nullptr, buf + o.offset}));
    }
    return out;
  };
  auto word_bases = [](const Wire& w, const std::vector<kernels::BoxCopyOp>& ops) {
    std::vector<uint64_t> words(ops.size());
    kernels::BoxPayloadWords(ops.data(), ops.size(), w.word_base, words.data());
    return words;
  };
  // Digest of wire `w` as received in `buf` (one pass over it).
  auto wire_digest = [&](const Wire& w, const char* buf) -> absl::StatusOr<kernels::DigestSums> {
    std::vector<layout::ShardSpec> specs;
    auto ops = regions(w, const_cast<char*>(buf), &specs);
    auto words = word_bases(w, ops);
    WSYNC_RETURN_IF_ERROR(ctx->Digest(wire_device, ops.data(), ops.size(), words.data(), 0));
    auto sums = ctx->Finish(1);
    if (!sums.ok()) return sums.status();
    return (*sums)[0];
  };
  // Packs wire `w` (this daemon is its source) into `buf`; returns its
  // digest, computed as it is written.
  auto pack = [&](const Wire& w, char* buf) -> absl::StatusOr<kernels::DigestSums> {
    const layout::Plan& pl = w.gather ? d.gather : d.plan;
    std::vector<layout::ShardSpec> specs;
    std::vector<kernels::BoxCopyOp> ops = regions(w, buf, &specs);
    for (size_t i = 0; i < w.ops.size(); ++i) {
      const layout::CopyOp& c = pl.ops[w.ops[i].op];
      RankReg* sr = p->src_local[c.src_endpoint];
      layout::CopyOp c2 = c;
      c2.dst_box = Origin(c.dst_box);
      ops[i] = layout::LowerCopy(c2, sr->Live(c.src_shard),
                                 {&specs[i], nullptr, buf + w.ops[i].offset}, /*merge=*/false);
    }
    auto words = word_bases(w, ops);
    // Each op runs on its source's device (a wire has one source rank).
    std::map<int, std::pair<std::vector<kernels::BoxCopyOp>, std::vector<uint64_t>>> by_device;
    for (size_t i = 0; i < ops.size(); ++i) {
      auto& [o, wb] = by_device[DeviceOf(p->src_local[pl.ops[w.ops[i].op].src_endpoint])];
      o.push_back(ops[i]);
      wb.push_back(words[i]);
    }
    for (auto& [dev, ow] : by_device) {
      WSYNC_RETURN_IF_ERROR(ctx->CopyDigest(dev, ow.first.data(), ow.first.size(), ow.second.data(), 0));
    }
    auto sums = ctx->Finish(1);
    if (!sums.ok()) return sums.status();
    return (*sums)[0];
  };
  // Writes wire `w` (received into `buf`) into this daemon's targets.
  std::vector<size_t> check_wire;  // per SyncJob check: its wire bucket
  // Payload words of quantized FP8 pieces follow every wire's.
  uint64_t fp8_word = 0;
  for (const Wire& w : d.wires) fp8_word = std::max(fp8_word, w.word_base + w.words);
  auto unpack = [&](size_t wi, const Wire& w, const char* buf) -> absl::Status {
    if (!holds_targets) return absl::OkStatus();
    // What arrived: the written digest where a target's boxes hold exactly
    // the wire's bytes, else one pass over the wire (computed once).
    std::optional<kernels::DigestSums> wire_sums;
    auto got_of = [&]() -> absl::StatusOr<kernels::DigestSums> {
      if (!w.moves) return kernels::DigestSums{};
      if (!wire_sums.has_value()) {
        auto g = wire_digest(w, buf);
        if (!g.ok()) return g.status();
        wire_sums = *g;
      }
      return *wire_sums;
    };
    if (w.gather) {
      std::vector<layout::ShardSpec> specs;
      specs.reserve(w.ops.size());
      for (const WireOp& o : w.ops) specs.push_back(RegionSpec(d.gather.ops[o.op].dst_box, layout::DType::kF32));
      for (int dev : target_devices) {
        std::vector<kernels::BoxCopyOp> ops;
        for (size_t i = 0; i < w.ops.size(); ++i) {
          const layout::CopyOp& c = d.gather.ops[w.ops[i].op];
          layout::CopyOp c2 = c;
          c2.src_box = Origin(c.dst_box);
          const layout::ShardSpec& gs = d.gather_target.shards[c.dst_shard];
          ops.push_back(layout::LowerCopy(c2, {&specs[i], nullptr, const_cast<char*>(buf) + w.ops[i].offset},
                                          {&gs, nullptr, sj.LoraOperand(dev, gs.pieces[0].tensor)}));
        }
        WSYNC_RETURN_IF_ERROR(ctx->Copy(dev, ops.data(), ops.size()));
      }
      auto got = got_of();
      if (!got.ok()) return got.status();
      wsync::MutexLock lock(&mu_);
      p->result.sums.push_back({wi, "*", got->s1, got->s2, 0, 0, 0});
      return absl::OkStatus();
    }
    const layout::Bucket& bk = d.plan.buckets[w.bucket];
    for (uint32_t j : d.receivers[bk.dst_endpoint]) {
      RankReg* tr = sj.rank(j);
      if (tr == nullptr) continue;
      const int dev = sj.device(j);
      std::vector<layout::ShardSpec> specs;
      specs.reserve(bk.num_ops);
      TargetWrite tw, scratch_tw;
      uint64_t word = w.word_base, scratch_word = 0;
      std::vector<std::tuple<uint32_t, uint32_t, int32_t>> complete;  // FP8 pieces this wire completes
      bool same_bytes = d.full && w.moves;  // every box holds the wire's bytes as they are
      for (uint32_t i = bk.first_op; i < bk.first_op + bk.num_ops; ++i) {
        const layout::CopyOp& c = d.plan.ops[i];
        if (!sj.Writes(c)) continue;
        // W's bytes: the op's region of the wire buffer (full syncs carry
        // every op, in order).
        layout::CopyOp c2 = c;
        layout::ShardView src;
        if (d.full) {
          const WireOp& o = w.ops[i - bk.first_op];
          specs.push_back(RegionSpec(c.dst_box, o.dtype));
          c2.src_box = Origin(c.dst_box);
          src = {&specs.back(), nullptr, const_cast<char*>(buf) + o.offset};
          same_bytes &= o.dtype == tr->shards[c.dst_shard].dtype && !(merge && d.active.count(c.tensor));
        }
        if (!sj.Quantizes(j, c)) {
          sj.AddWrite(j, c2, src, /*merge_dims=*/false, &word, &tw);
          continue;
        }
        const std::tuple<uint32_t, uint32_t, int32_t> key{j, c.dst_shard, c.tensor};
        Fp8Piece& q = fp8[key];
        if (!q.scratch) {
          const layout::Piece* piece = sj.PieceOf(j, c.dst_shard, c.tensor);
          if (piece == nullptr) return absl::InternalError("an FP8 op without its piece");
          q.remaining = static_cast<uint64_t>(piece->canonical.NumElements());
          auto b = ctx->Allocate(dev, q.remaining * 4, absl::StrCat("FP8 scratch of ", tr->Label()));
          if (!b.ok()) return b.status();
          q.scratch = std::move(*b);
        }
        q.remaining -= sj.AddScratchWrite(j, c2, src, q.scratch->data(), &scratch_word, &scratch_tw);
        if (q.remaining == 0) complete.push_back(key);
      }
      absl::Status s = RunTargetWrite(ctx.get(), dev, tw, 0);
      if (!s.ok()) return s;
      // Slot 1: the fp32 assembly (nothing reads it); slot 2: what the
      // quantization of complete pieces wrote into the target.
      WSYNC_RETURN_IF_ERROR(RunTargetWrite(ctx.get(), dev, scratch_tw, 1));
      std::vector<kernels::BoxCopyOp> fp8_boxes;
      std::vector<uint64_t> fp8_words;
      const uint64_t fp8_first = fp8_word;
      for (const auto& key : complete) {
        const layout::Piece* piece = sj.PieceOf(j, std::get<1>(key), std::get<2>(key));
        const SyncJob::PieceSource scratch{fp8[key].scratch->data(), layout::DType::kF32, piece->canonical.size[1]};
        auto q = sj.QuantizePiece(ctx.get(), j, std::get<1>(key), std::get<2>(key), scratch, 2, &fp8_word, &fp8_boxes,
                                  &fp8_words, &fp8_keep);
        if (!q.ok()) {
          return Annotate(q.status(), absl::StrCat("model '", plan.model_id, "' version ", plan.version));
        }
      }
      auto sums = ctx->Finish(3);
      if (!sums.ok()) return sums.status();
      for (const auto& key : complete) fp8.erase(key);
      fp8_keep.clear();
      // Re-read before the part reports ready (SyncJob::Verify).
      const size_t check = sj.AddCheck(j, std::move(tw.boxes), std::move(tw.box_words), word - w.word_base);
      sj.SetWritten(check, (*sums)[0]);
      check_wire.push_back(wi);
      if (!fp8_boxes.empty()) {
        const size_t q = sj.AddCheck(j, std::move(fp8_boxes), std::move(fp8_words), fp8_word - fp8_first);
        sj.SetWritten(q, (*sums)[2]);
        check_wire.push_back(wi);
      }
      kernels::DigestSums got = (*sums)[0];
      if (!same_bytes) {
        auto g = got_of();
        if (!g.ok()) return g.status();
        got = *g;
      }
      wsync::MutexLock lock(&mu_);
      p->result.sums.push_back({wi, plan.targets[j].replica_id, got.s1, got.s2, (*sums)[0].s1 + (*sums)[2].s1,
                                (*sums)[0].s2 + (*sums)[2].s2, word - w.word_base + fp8_word - fp8_first});
    }
    return absl::OkStatus();
  };

  // The transfer: transport::RunWirePipeline through the kWireBuffers wire
  // buffers (packing, the wire and unpacking overlap).
  // Transport errors speak of communicator ranks; name the daemons.
  auto on_wire = [&](size_t wi, const Wire& w, const absl::Status& s) {
    std::vector<std::string> to;
    for (size_t i = 1; i < w.chain.size(); ++i) to.push_back(plan.members[w.chain[i]].daemon_id);
    return absl::Status(s.code(), absl::StrCat("wire bucket ", wi, " (", w.bytes, " bytes) from daemon '",
                                               plan.members[w.chain[0]].daemon_id, "' to '",
                                               absl::StrJoin(to, "', '"), "' (communicator ranks in that order: ",
                                               absl::StrJoin(w.chain, ", "), "): ", s.message()));
  };
  std::vector<transport::WireBucket> wire_buckets;
  wire_buckets.reserve(d.wires.size());
  for (const Wire& w : d.wires) {
    // Wires that move nothing (local LoRA math) are handled below.
    wire_buckets.push_back({w.bytes, w.moves ? w.chain : std::vector<int>{}});
  }
  std::vector<char*> wire_bufs;
  for (auto& b : bufs) wire_bufs.push_back(static_cast<char*>(b->data()));
  transport::WirePipelineHooks hooks;
  hooks.before = [&](size_t wi) -> absl::Status {
    WSYNC_RETURN_IF_ERROR(CheckJob(job, p->deadline, "transfer", nullptr));
    if (options_.test_hooks && options_.test_hooks->bucket_delay_ms) {
      absl::SleepFor(absl::Milliseconds(options_.test_hooks->bucket_delay_ms));
    }
    if (d.wires[wi].chain[0] != my_rank) {
      wsync::MutexLock lock(&mu_);
      p->result.bytes_received += d.wires[wi].bytes;
    }
    return absl::OkStatus();
  };
  hooks.fill = [&](size_t wi, char* buf) -> absl::Status {
    const Wire& w = d.wires[wi];
    auto sent = pack(w, buf);
    if (!sent.ok()) return sent.status();
    wsync::MutexLock lock(&mu_);
    p->result.sums.push_back({wi, "", sent->s1, sent->s2, 0, 0, 0});
    if (w.chain.size() > 1) p->result.bytes_sent += w.bytes;
    return absl::OkStatus();
  };
  hooks.drain = [&](size_t wi, char* buf) -> absl::Status {
    const Wire& w = d.wires[wi];
    // (Wire buffers on a real GPU are not host-addressable.)
    if (options_.test_hooks && options_.test_hooks->corrupt_wire == static_cast<int64_t>(wi) &&
        w.chain[0] != my_rank && w.bytes > 0 && (!nccl || StandIn())) {
      buf[0] ^= 0x5a;
      log_->warn("fault injection: corrupted wire bucket {} as received", wi);
    }
    return unpack(wi, w, buf);
  };
  hooks.on_wire_error = [&](size_t wi, const absl::Status& s) { return on_wire(wi, d.wires[wi], s); };
  WSYNC_RETURN_IF_ERROR(
      transport::RunWirePipeline(comm.get(), my_rank, wire_buckets, wire_bufs, options_.chunk_bytes, hooks));
  drained = true;
  // Local LoRA math (adapter_only, unmerge) once the operands are here.
  for (size_t wi = 0; wi < d.wires.size(); ++wi) {
    const Wire& w = d.wires[wi];
    if (w.moves || w.gather) continue;
    if (std::find(w.chain.begin(), w.chain.end(), my_rank) == w.chain.end()) continue;
    WSYNC_RETURN_IF_ERROR(unpack(wi, w, nullptr));
  }
  if (!fp8.empty()) {
    const auto& [key, q] = *fp8.begin();
    return absl::InternalError(absl::StrCat("model '", plan.model_id, "' version ", plan.version, ": ", q.remaining,
                                            " elements of the FP8 piece of '",
                                            model->spec.tensor(std::get<2>(key)).name, "' in ",
                                            sj.rank(std::get<0>(key))->Label(), " never arrived"));
  }
  // Zero padding (full syncs).
  if (d.full) {
    std::vector<std::pair<uint32_t, const layout::FillOp*>> fills;
    for (const layout::FillOp& f : d.plan.fills) {
      for (uint32_t j : d.receivers[f.dst_endpoint]) {
        if (sj.rank(j) != nullptr) fills.push_back({j, &f});
      }
    }
    WSYNC_RETURN_IF_ERROR(sj.WriteFills(ctx.get(), fills));
  }
  if (auto done = ctx->Finish(0); !done.ok()) return done.status();
  // Verify: everything written, re-read as it is now, against what the
  // kernels wrote (the coordinator then compares what was written with what
  // was sent).
  auto changed = sj.Verify(ctx.get());
  if (!changed.ok()) return changed.status();
  if (!changed->empty()) {
    const SyncJob::Check& c = sj.check(changed->front());
    return absl::DataLossError(absl::StrCat(
        "model '", plan.model_id, "' version ", plan.version, ": what wire bucket ", check_wire[changed->front()],
        " wrote into ", sj.rank(c.target)->Label(), " on daemon '", me, "' changed before the verify (written ",
        kernels::DigestFinish(c.written, c.num_words * 8).Hex(), ", re-read ",
        kernels::DigestFinish(c.reread, c.num_words * 8).Hex(), "; target memory changed during the sync?)"));
  }
  return CheckJob(job, p->deadline, "transfer", nullptr);
}

void CoreImpl::RunPart(Part* p) {
  const absl::Time t0 = absl::Now();
  // Host memory is checked before anything is written and after the
  // transfer (a page that vanished meanwhile was served from a zero page).
  absl::Status s = CheckMemory(p->job->sessions);
  if (s.ok()) s = TransferPart(p);
  if (s.ok()) s = CheckMemory(p->job->sessions);
  {
    wsync::MutexLock lock(&mu_);
    EnterPhase(p, s.ok() ? Part::Phase::kPrepared : Part::Phase::kFailed);
    p->error = s;
    p->result.ready = s.ok();
    p->result.error = s;
    if (!s.ok() && p->state.Decide(Part::Decision::kAbort)) p->abort_reason = std::string(s.message());
    log_->info("job {} of model '{}': transfer {} in {:.1f} ms ({} bytes sent, {} received){}", p->plan.job_id,
               p->plan.model_id, s.ok() ? "done" : "failed", Ms(absl::Now() - t0), p->result.bytes_sent,
               p->result.bytes_received, s.ok() ? "" : absl::StrCat(": ", s.ToString()));
    auto decided = [p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return p->state.decided(); };
    mu_.AwaitWithDeadline(absl::Condition(&decided), p->deadline + absl::Seconds(5));
    if (p->state.Decide(Part::Decision::kAbort)) {
      p->abort_reason = "neither commit nor abort came from the coordinator before the deadline";
    }
  }
  FinishPart(p);
}

void CoreImpl::FinishPart(Part* p) {
  const PlanPart& plan = p->plan;
  absl::Status status;
  bool commit;
  {
    wsync::MutexLock lock(&mu_);
    commit = p->state.decision() == Part::Decision::kCommit && p->state.phase() == Part::Phase::kPrepared;
  }
  SyncJob& sj = *p->sj;
  if (commit) {
    if (const SessionReplicas staged = sj.Sessions(UpdateMode::kStaged); !staged.empty()) {
      status = PauseTargets(p->job, staged, plan.model_id, plan.version, p->deadline + absl::Seconds(5));
      sj.Paused(staged);
      if (status.ok()) {
        auto ctx = NewMixedContext();
        status = ctx.ok() ? sj.CommitStaged(ctx->get()) : ctx.status();
      }
      if (status.ok()) status = CheckMemory(p->job->sessions);
    }
  }
  std::set<std::string> replicas;
  for (const auto& [sid, reps] : sj.Sessions()) replicas.insert(reps.begin(), reps.end());
  std::vector<SyncJob::Notice> notices;
  {
    wsync::MutexLock lock(&mu_);
    if (!commit || !status.ok()) {
      if (status.ok()) status = absl::AbortedError(p->abort_reason.empty() ? "aborted" : p->abort_reason);
      p->error = status;
      p->model->last_error = std::string(status.message());
    }
    notices = SettleJob(p->model, &sj, plan.version, status, p->digests);
    EnterPhase(p, status.ok() ? Part::Phase::kCommitted : Part::Phase::kAborted);
  }
  for (const SyncJob::Notice& n : notices) Notify({n.session}, n.event);
  wsync::MutexLock lock(&mu_);
  if (p->state.phase() == Part::Phase::kCommitted) {
    log_->info("job {} of model '{}': committed version {} on {}", plan.job_id, plan.model_id, plan.version,
               absl::StrJoin(replicas, ", "));
  } else {
    log_->warn("job {} of model '{}' version {}: aborted here ({}); replicas keep their version{}", plan.job_id,
               plan.model_id, plan.version, std::string(status.message()), sj.AnyLiveWritten() ? " (in_place ones written so far are poisoned)" : "");
  }
  outcomes_.Put(plan.job_id, {p->state.phase() == Part::Phase::kCommitted, p->error});
  p->model->part = nullptr;
  jobs_.erase(absl::StrCat("part:", plan.job_id));
  p->job = nullptr;
  p->done = true;
}

std::vector<SyncJob::Notice> CoreImpl::SettleJob(Model* model, SyncJob* sj, uint64_t version, const absl::Status& error,
                                                 const std::map<std::string, std::string>& digests) {
  std::vector<std::string> refused;
  std::vector<SyncJob::Notice> notices = sj->Settle(model->id, version, error, digests, !model->adapters.empty(), &refused);
  for (const std::string& rid : refused) LogRefusedCommit(*model, rid, version);
  return notices;
}

void CoreImpl::CommitReplica(Model* model, Replica* rep, uint64_t version, std::string digest, bool full) {
  if (!rep->Commit(version, std::move(digest), full, !model->adapters.empty())) LogRefusedCommit(*model, rep->id, version);
}

void CoreImpl::LogRefusedCommit(const Model& model, const std::string& replica_id, uint64_t version) {
  log_->error("model '{}' replica '{}': version {} cannot be committed onto a poisoned replica by a partial "
              "(adapter-only) sync; a wsyncd bug, please report it",
              model.id, replica_id, version);
}

void CoreImpl::EnterPhase(Part* p, Part::Phase next) {
  if (p->state.Enter(next)) return;
  log_->error("job {} of model '{}': the part cannot go from {} to {} (decision {}); a wsyncd bug, please report it",
              p->plan.job_id, p->plan.model_id, PartState::Name(p->state.phase()), PartState::Name(next),
              p->state.decision() == Part::Decision::kCommit ? "commit"
              : p->state.decided()                            ? "abort"
                                                              : "pending");
}

void CoreImpl::ReapParts() {
  for (auto it = parts_.begin(); it != parts_.end();) {
    if (it->second->done && it->second->waiters == 0) {
      if (it->second->thread.joinable()) it->second->thread.join();
      it = parts_.erase(it);
    } else {
      ++it;
    }
  }
}

absl::StatusOr<PrepareResult> CoreImpl::PreparePart(const std::string& job_id, uint64_t timeout_ms) {
  wsync::MutexLock lock(&mu_);
  auto it = parts_.find(job_id);
  if (it == parts_.end()) {
    const PartOutcome* o = outcomes_.Find(job_id);
    if (o == nullptr) return absl::NotFoundError(absl::StrCat("job ", job_id, " is unknown on daemon '", options_.daemon_id, "'"));
    PrepareResult r;
    if (o->committed) {
      r.error = absl::FailedPreconditionError(absl::StrCat("job ", job_id, " already committed"));
    } else if (!o->error.ok()) {
      r.error = absl::Status(o->error.code(), absl::StrCat("daemon '", options_.daemon_id, "': ", o->error.message()));
    } else {
      r.error = absl::AbortedError(absl::StrCat("job ", job_id, " was aborted on daemon '", options_.daemon_id, "'"));
    }
    return r;
  }
  Part* p = it->second.get();
  auto ended = [p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return p->state.phase() != Part::Phase::kRunning; };
  ++p->waiters;
  mu_.AwaitWithTimeout(absl::Condition(&ended), absl::Milliseconds(timeout_ms));
  --p->waiters;
  PrepareResult r;
  if (p->state.phase() == Part::Phase::kRunning) return r;  // not ready yet, no error: ask again
  r = p->result;
  if (!p->error.ok()) {
    r.ready = false;
    r.error = absl::Status(p->error.code(), absl::StrCat("daemon '", options_.daemon_id, "': ", p->error.message()));
  }
  return r;
}

absl::Status CoreImpl::CommitPart(const std::string& job_id, uint64_t version,
                                  const std::map<std::string, std::string>& digests) {
  wsync::MutexLock lock(&mu_);
  auto it = parts_.find(job_id);
  if (it == parts_.end()) {
    const PartOutcome* o = outcomes_.Find(job_id);
    if (o != nullptr && o->committed) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " cannot commit on daemon '", options_.daemon_id, "': ",
        o == nullptr ? "unknown job" : o->error.ok() ? "it was aborted" : "it was aborted: " + std::string(o->error.message())));
  }
  Part* p = it->second.get();
  if (p->plan.version != version) {
    return absl::InvalidArgumentError(absl::StrCat("job ", job_id, " is version ", p->plan.version, ", not ", version));
  }
  if (p->state.Decide(Part::Decision::kCommit)) p->digests = digests;
  auto done = [p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return p->done; };
  ++p->waiters;
  mu_.Await(absl::Condition(&done));
  --p->waiters;
  if (p->state.phase() == Part::Phase::kCommitted) return absl::OkStatus();
  return absl::Status(p->error.code(), absl::StrCat("daemon '", options_.daemon_id, "' could not commit job ", job_id,
                                                    ": ", p->error.message()));
}

absl::Status CoreImpl::AbortPart(const std::string& job_id, const std::string& reason) {
  wsync::MutexLock lock(&mu_);
  auto it = parts_.find(job_id);
  if (it == parts_.end()) return absl::OkStatus();
  Part* p = it->second.get();
  if (p->state.Decide(Part::Decision::kAbort)) p->abort_reason = reason;
  if (p->job != nullptr && p->job->abort_reason.empty()) {
    p->job->abort_reason = reason;
    p->job->abort_code = absl::StatusCode::kAborted;
  }
  if (p->comm != nullptr) p->comm->Abort(reason);
  auto done = [p]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return p->done; };
  ++p->waiters;
  mu_.AwaitWithTimeout(absl::Condition(&done), absl::Seconds(30));
  --p->waiters;
  return absl::OkStatus();
}

// ---------------------------------------------------------------- coordinator

absl::StatusOr<SyncOutcome> CoreImpl::SyncDistributed(const SyncArgs& args,
                                                      const std::function<void(const Progress&)>& progress,
                                                      const std::function<bool()>& client_gone) {
  const absl::Time t0 = absl::Now();
  const uint64_t v = args.version;
  if (v == 0) return absl::InvalidArgumentError(absl::StrCat("model '", args.model_id, "': sync version must be >= 1"));
  const absl::Time deadline =
      t0 + absl::Milliseconds(args.deadline_ms ? args.deadline_ms : options_.default_deadline_ms);
  PlanPart part;
  Model* model = nullptr;
  Job* job = nullptr;
  std::vector<std::string> replica_ids;
  std::map<std::string, std::string> address;  // member -> peer address
  std::string no_nccl;  // why the wires take Gloo though ranks are on GPUs
  {
    wsync::MutexLock lock(&mu_);
    if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
    auto mit = models_.find(args.model_id);
    if (mit == models_.end()) return absl::NotFoundError(absl::StrCat("model '", args.model_id, "' is not registered"));
    model = mit->second.get();
    WSYNC_RETURN_IF_ERROR(Authorize(args.caller, args.model_id, model, "sync"));
    if (!model->coordinator.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "model '", args.model_id, "' is coordinated by the daemon at ", model->coordinator,
          "; call Sync there"));
    }
    if (model->part != nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("model '", args.model_id, "' runs a sync part; retry"));
    }
    std::vector<Replica*> todo;
    std::set<int32_t> active;
    std::optional<SyncOutcome> done;
    WSYNC_RETURN_IF_ERROR(SelectSync(args, model, &todo, &active, &done));
    if (done.has_value()) return *std::move(done);
    const std::string& me = options_.daemon_id;
    std::set<std::string> daemons;
    auto endpoint = [&](const RankReg& r, UpdateMode mode) {
      PlanEndpoint e;
      e.daemon_id = r.daemon.empty() ? me : r.daemon;
      e.role = r.role;
      e.replica_id = r.replica_id;
      e.rank = r.coords;
      e.mode = mode;
      e.shards = r.shards;
      e.gpu_uuid = GpuOf(r);
      daemons.insert(e.daemon_id);
      return e;
    };
    for (const auto& [k, r] : model->sources) part.sources.push_back(endpoint(*r, UpdateMode::kStaged));
    std::map<std::string, std::vector<std::string>> groups;  // signature -> replicas
    std::vector<std::string> order;
    for (Replica* rep : todo) {
      replica_ids.push_back(rep->id);
      std::string sig = model->replica_recipe[rep->id];
      for (const auto& [k, r] : rep->ranks) {
        part.targets.push_back(endpoint(*r, rep->mode));
        absl::StrAppend(&sig, "|", k, "=", ShardsSignature(r->shards));
      }
      if (!groups.count(sig)) order.push_back(sig);
      groups[sig].push_back(rep->id);
    }
    for (const std::string& sig : order) part.replica_groups.push_back(groups[sig]);
    for (const std::string& id : daemons) {
      if (id == me) {
        part.members.push_back(self());
        continue;
      }
      auto it = members_.find(id);
      if (it == members_.end()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "model '", args.model_id, "': daemon '", id, "' holds ranks of this sync but is not a live member "
            "(it stopped heartbeating); its ranks re-register when it rejoins"));
      }
      part.members.push_back(it->second);
      address[id] = it->second.address;
    }
    std::vector<std::string> ids;
    for (const PeerMember& m : part.members) ids.push_back(absl::StrCat(m.daemon_id, "@", m.incarnation));
    part.job_id = absl::StrCat("j-", next_id_++, "@", me);
    part.model_id = args.model_id;
    part.coordinator_id = me;
    part.coordinator_address = PeerAddress();
    part.version = v;
    part.lora = args.lora;
    part.lora_bases = args.lora_bases;
    part.bucket_bytes = args.max_bucket_bytes ? args.max_bucket_bytes : options_.default_bucket_bytes;
    part.deadline_unix_ms = static_cast<uint64_t>(absl::ToUnixMillis(deadline));
    part.transport = ChooseWireTransport(part, &no_nccl);
    part.comm_key = absl::StrCat(part.transport == WireTransport::kNccl ? "nccl/" : "gloo/", me, "@",
                                 options_.incarnation, "/", comm_generation_);
    for (int32_t i = 0; i < model->spec.size(); ++i) part.tensor_names.push_back(model->spec.tensor(i).name);
    auto j = std::make_unique<Job>();
    j->id = part.job_id;
    j->model_id = args.model_id;
    j->version = v;
    j->start = t0;
    for (const auto& [id, addr] : address) j->daemons.insert(id);
    j->progress.phase = "PLANNING";
    job = j.get();
    model->running = job;
    jobs_[job->id] = std::move(j);
  }
  auto dist = BuildDistPlan(part, model->spec, model->adapters);
  absl::Status status;
  SyncOutcome out;
  std::vector<std::string> distributed;  // members that accepted the plan
  auto call_abort = [&](const std::string& reason) {
    std::vector<std::thread> ts;
    for (const std::string& id : distributed) {
      ts.emplace_back([&, id] {
        absl::Status s = id == options_.daemon_id ? AbortPart(part.job_id, reason)
                                                  : options_.peers->Abort(address[id], part.job_id, reason);
        if (!s.ok()) log_->warn("abort of job {} on '{}' failed: {}", part.job_id, id, s.ToString());
      });
    }
    for (auto& t : ts) t.join();
  };
  auto finish = absl::MakeCleanup([&] {
    if (!status.ok()) call_abort(std::string(status.message()));
    wsync::MutexLock lock(&mu_);
    if (!status.ok()) {
      model->last_error = std::string(status.message());
      if (args.lora == LoraMode::kNone || args.lora == LoraMode::kMerge) {
        for (const std::string& rid : replica_ids) {
          auto it = model->replicas.find(rid);
          if (it != model->replicas.end()) it->second.FullSyncFailed();
        }
      }
      comm_generation_++;  // members rebuild their communicators
      log_->warn("sync {} of model '{}' version {} failed: {}", part.job_id, args.model_id, v, status.ToString());
    }
    model->running = nullptr;
    // Members dropped while the job ran kept their ranks until now.
    for (const std::string& id : job->daemons) {
      if (!members_.count(id)) DropDaemon(id, absl::StrCat("daemon '", id, "' left the membership during ", part.job_id));
    }
    jobs_.erase(part.job_id);
  });
  // The job's steps run in `steps`, and `status` is set from their result
  // here, so no return statement moves it away before `finish` reads it.
  auto steps = [&]() -> absl::StatusOr<SyncOutcome> {
  auto fail = [&](absl::Status s) {
    status = Annotate(s, absl::StrCat("model '", args.model_id, "' version ", v));
    return status;
  };
  if (!dist.ok()) return fail(dist.status());
  part.plan_hash = dist->hash;
  log_->info("sync {} of model '{}' version {} started across {} daemons: {} -> {} ({} wire buckets, {:.1f} MiB, LoRA {}, "
             "wires over {}{})",
             part.job_id, args.model_id, v, part.members.size(), part.sources.size(),
             absl::StrJoin(replica_ids, ", "), dist->wires.size(), dist->plan.total_bytes / 1048576.0,
             LoraModeName(args.lora), part.transport == WireTransport::kNccl ? "NCCL" : "Gloo",
             no_nccl.empty() ? "" : absl::StrCat(", not NCCL: ", no_nccl));
  // Distribute.
  for (const PeerMember& m : part.members) {
    auto hash = m.daemon_id == options_.daemon_id ? AcceptPlan(part)
                                                  : options_.peers->DistributePlan(address[m.daemon_id], part);
    if (!hash.ok()) return fail(hash.status());
    distributed.push_back(m.daemon_id);
    if (*hash != part.plan_hash) {
      return fail(absl::FailedPreconditionError(absl::StrCat("daemon '", m.daemon_id, "' computed plan hash ", *hash,
                                                             ", the coordinator ", part.plan_hash)));
    }
  }
  const absl::Time t_plan = absl::Now();
  Progress prog{"TRANSFERRING", 0, dist->plan.total_bytes, 0, dist->wires.size(), 0};
  SetProgress(job, prog);
  if (progress) progress(prog);
  // Prepare: every member reports when its transfer ends. One failure
  // brings others (a dead daemon's peers see their connections close), so
  // the coordinator collects what fails for a short while and reports the
  // root cause: MemberFailure ranks them.
  wsync::Mutex pm;
  std::map<std::string, PrepareResult> results;
  std::vector<MemberFailure> failures;
  std::atomic<bool> stop{false};
  std::atomic<size_t> polling{part.members.size()};
  std::vector<std::thread> ts;
  for (const PeerMember& m : part.members) {
    ts.emplace_back([&, id = m.daemon_id] {
      auto done = absl::MakeCleanup([&] { polling.fetch_sub(1); });
      while (!stop.load()) {
        auto r = id == options_.daemon_id ? PreparePart(part.job_id, 500)
                                          : options_.peers->Prepare(address[id], part.job_id, 500);
        wsync::MutexLock lock(&pm);
        if (!r.ok()) {
          failures.push_back(MemberFailure::NoAnswer(id, r.status()));
          return;
        }
        if (r->ready) {
          results[id] = *r;
          return;
        }
        if (!r->error.ok()) {
          failures.push_back(MemberFailure::Reported(id, r->error));
          return;
        }
      }
    });
  }
  absl::Status first_error;
  while (true) {
    {
      wsync::MutexLock lock(&pm);
      if (!failures.empty() || results.size() == part.members.size()) break;
    }
    if (absl::Status s = CheckJob(job, deadline, "transfer", client_gone); !s.ok()) {
      first_error = s;
      break;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  if (first_error.ok()) {
    bool failed;
    {
      wsync::MutexLock lock(&pm);
      failed = !failures.empty();
    }
    if (failed) {
      // Each poll returns within its 500 ms; a member that stays silent
      // longer is left to the failure already known.
      stop.store(true);
      const absl::Time grace = absl::Now() + absl::Milliseconds(1500);
      while (polling.load() > 0 && absl::Now() < grace) absl::SleepFor(absl::Milliseconds(10));
      wsync::MutexLock lock(&pm);
      first_error = MemberFailure::RootCause(failures);
      if (failures.size() > 1) {
        for (const MemberFailure& f : failures) {
          log_->info("sync {}: daemon '{}' failed: {}", part.job_id, f.daemon_id, f.status.ToString());
        }
      }
    }
  }
  if (!first_error.ok()) {
    stop.store(true);
    // A member that fails mid-transfer aborts the sync; other codes stand.
    status = absl::Status(first_error.code() == absl::StatusCode::kUnavailable ? absl::StatusCode::kAborted
                                                                                  : first_error.code(),
                          absl::StrCat("model '", args.model_id, "' version ", v, ": ", first_error.message()));
  }
  if (!status.ok()) {
    call_abort(std::string(status.message()));
    distributed.clear();
    for (auto& t : ts) t.join();
    return status;
  }
  for (auto& t : ts) t.join();
  const absl::Time t_xfer = absl::Now();
  // Verify: every replica received the bytes its source sent.
  prog.phase = "VERIFYING";
  SetProgress(job, prog);
  if (progress) progress(prog);
  std::map<uint64_t, BucketSums> sent;
  std::map<std::pair<uint64_t, std::string>, BucketSums> got;
  uint64_t moved = 0;
  for (const auto& [id, r] : results) {
    for (const BucketSums& s : r.sums) {
      if (s.replica_id.empty()) {
        sent[s.bucket] = s;
      } else {
        got[{s.bucket, absl::StrCat(s.replica_id, s.replica_id == "*" ? "@" + id : "")}] = s;
      }
    }
    moved += r.bytes_sent;
  }
  std::map<std::string, kernels::DigestSums> rep_sums;
  std::map<std::string, uint64_t> rep_words;
  kernels::DigestSums all;
  uint64_t all_words = 0;
  for (const auto& [key, s] : got) {
    const Wire& w = dist->wires[key.first];
    if (w.moves) {
      auto it = sent.find(key.first);
      if (it == sent.end() || it->second.s1 != s.s1 || it->second.s2 != s.s2) {
        return fail(absl::DataLossError(absl::StrCat(
            "wire bucket ", key.first, " (", w.bytes, " bytes of ", WireTensors(*dist, w, model->spec),
            ", from daemon '", part.members[w.chain[0]].daemon_id, "') arrived corrupted at ", key.second,
            " (nothing was committed; retry the sync): sent ",
            it == sent.end() ? "nothing" : kernels::DigestFinish({it->second.s1, it->second.s2}, w.bytes).Hex(),
            ", received ", kernels::DigestFinish({s.s1, s.s2}, w.bytes).Hex())));
      }
    }
    if (w.gather) continue;
    rep_sums[key.second].s1 += s.w1;
    rep_sums[key.second].s2 += s.w2;
    rep_words[key.second] += s.written_words;
    all.s1 += s.w1;
    all.s2 += s.w2;
    all_words += s.written_words;
  }
  std::map<std::string, std::string> digests;
  for (const std::string& rid : replica_ids) {
    digests[rid] = kernels::DigestFinish(rep_sums[rid], rep_words[rid] * 8).Hex();
  }
  if (absl::Status s = CheckJob(job, deadline, "verify", client_gone); !s.ok()) return fail(s);
  const absl::Time t_verify = absl::Now();
  // Commit everywhere.
  prog.phase = "COMMITTING";
  SetProgress(job, prog);
  if (progress) progress(prog);
  std::vector<std::string> commit_errors;
  {
    std::vector<std::thread> cs;
    wsync::Mutex em;
    for (const PeerMember& m : part.members) {
      cs.emplace_back([&, id = m.daemon_id] {
        absl::Status s = id == options_.daemon_id ? CommitPart(part.job_id, v, digests)
                                                  : options_.peers->Commit(address[id], part.job_id, v, digests);
        if (!s.ok()) {
          wsync::MutexLock lock(&em);
          commit_errors.push_back(absl::StrCat(id, ": ", s.message()));
        }
      });
    }
    for (auto& t : cs) t.join();
  }
  distributed.clear();  // nothing left to abort
  if (!commit_errors.empty()) {
    // Participants promised at Prepare; one that fails now died or lost
    // its memory in between. Report it; the others have committed.
    return fail(absl::AbortedError(absl::StrCat("commit failed on ", absl::StrJoin(commit_errors, "; "),
                                                " (the other daemons committed)")));
  }
  const absl::Time t_commit = absl::Now();
  out.model_id = args.model_id;
  out.version = v;
  out.digest = kernels::DigestFinish(all, all_words * 8).Hex();
  out.bytes = moved;
  out.buckets = dist->wires.size();
  out.path = part.transport == WireTransport::kNccl ? "nccl" : "gloo";
  out.plan_hash = part.plan_hash;
  out.replicas = replica_ids;
  out.times = {Ms(t_plan - t0), Ms(t_xfer - t_plan), Ms(t_verify - t_xfer), Ms(t_commit - t_verify),
               Ms(absl::Now() - t0)};
  {
    wsync::MutexLock lock(&mu_);
    for (const std::string& rid : replica_ids) {
      auto it = model->replicas.find(rid);
      if (it == model->replicas.end()) continue;
      CommitReplica(model, &it->second, v, digests[rid], dist->full);
    }
    model->has_last = true;
    model->last = out;
    model->last_error.clear();
  }
  log_->info("sync {} of model '{}' committed version {} on {} daemons: {:.1f} MiB sent, {} wire buckets, {:.1f} ms "
             "(plan {:.1f}, transfer {:.1f}, verify {:.1f}, commit {:.1f}), digest {}",
             part.job_id, args.model_id, v, part.members.size(), moved / 1048576.0, out.buckets, out.times.total_ms,
             out.times.plan_ms, out.times.transfer_ms, out.times.verify_ms, out.times.commit_ms, out.digest);
  return out;
  };
  absl::StatusOr<SyncOutcome> result = steps();
  status = result.status();
  return result;
}

}  // namespace wsync::core::internal
