#include "daemon/core/core.h"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/common/build_info.h"
#include "daemon/common/logging.h"
#include "daemon/core/core_impl.h"
#include "daemon/layout/fp8_checkpoint.h"
#include "daemon/transport/nccl_communicator.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::core {

const char* RoleName(Role r) { return r == Role::kSource ? "source" : "target"; }
const char* UpdateModeName(UpdateMode m) { return m == UpdateMode::kStaged ? "staged" : "in_place"; }
const char* LoraModeName(LoraMode m) {
  switch (m) {
    case LoraMode::kNone: return "none";
    case LoraMode::kMerge: return "merge";
    case LoraMode::kAdapterOnly: return "adapter_only";
    case LoraMode::kUnmerge: return "unmerge";
  }
  return "?";
}

Caller Caller::Local(int64_t uid, int64_t gid, int64_t pid, bool admin) {
  Caller c;
  c.kind = Kind::kLocal;
  c.uid = uid;
  c.gid = gid;
  c.pid = pid;
  c.admin = admin;
  c.may_write = true;
  return c;
}

Caller Caller::Certificate(std::string subject) {
  Caller c;
  c.kind = Kind::kCertificate;
  c.subject = std::move(subject);
  c.may_write = true;
  return c;
}

Caller Caller::Anonymous(bool may_write) {
  Caller c;
  c.may_write = may_write;
  return c;
}

std::string Caller::Key() const {
  switch (kind) {
    case Kind::kLocal: return absl::StrCat("uid:", uid);
    case Kind::kCertificate: return absl::StrCat("cert:", subject);
    case Kind::kAnonymous: break;
  }
  return "anonymous";
}

std::string Caller::ToString() const {
  switch (kind) {
    case Kind::kLocal: return absl::StrCat("uid ", uid);
    case Kind::kCertificate: return absl::StrCat("certificate '", subject, "'");
    case Kind::kAnonymous: break;
  }
  return "an anonymous caller";
}

std::unique_ptr<Core> Core::Create(const CoreOptions& options) {
  return std::make_unique<internal::CoreImpl>(options);
}

namespace internal {
namespace {

// 128 random bits from the kernel's CSPRNG, as 32 hex digits.
std::string RandomId() {
  unsigned char b[16];
  size_t got = 0;
  while (got < sizeof(b)) {
    ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : b) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}


bool ValidId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) return false;
  }
  return true;
}


// The rank with what a caller may leave out filled in (layout::CompleteRank).
absl::StatusOr<layout::RankCoords> Completed(layout::RankCoords r) {
  WSYNC_RETURN_IF_ERROR(layout::CompleteRank(&r));
  return r;
}

layout::RankCoords SizesOf(const layout::RankCoords& r) {
  layout::RankCoords s = r;
  s.rank = s.tp = s.cp = s.dp = s.pp = s.etp = s.ep = s.edp = 0;
  return s;
}

// Bytes a buffer with a valid `shape` (layout::CheckShape), `strides` and
// `dtype` spans (max offset + 1 element); INVALID_ARGUMENT naming `what` when
// that overflows or exceeds layout::kMaxShapeBytes.
absl::StatusOr<uint64_t> SpanBytes(const layout::Shape& shape, const std::vector<int64_t>& strides,
                                   layout::DType dtype, const std::string& what) {
  const uint64_t esize = kernels::DTypeSize(dtype);
  if (strides.empty()) return static_cast<uint64_t>(shape.NumElements()) * esize;
  uint64_t span = 1;
  for (int i = 0; i < shape.ndim; ++i) {
    uint64_t term = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(shape.d[i] - 1), static_cast<uint64_t>(strides[i]), &term) ||
        __builtin_add_overflow(span, term, &span) || __builtin_mul_overflow(span, esize, &term) ||
        term > layout::kMaxShapeBytes) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": shape ", shape.ToString(), " with strides [",
                                                     absl::StrJoin(strides, ", "), "] spans more than ",
                                                     layout::kMaxShapeBytes, " bytes"));
    }
  }
  return span * esize;
}

}  // namespace

// A client-given string as errors quote it: whole when short, else its
// first 48 bytes and its length, so that no error grows with the request.
std::string Quoted(const std::string& s) {
  if (s.size() <= 64) return absl::StrCat("'", s, "'");
  return absl::StrCat("'", s.substr(0, 48), "...' (", s.size(), " bytes)");
}

absl::Status CheckModelId(const std::string& id) {
  if (ValidId(id)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("model id ", Quoted(id), " must match [A-Za-z0-9._-]{1,128}"));
}

std::string CoordsKey(const layout::RankCoords& r) { return absl::StrCat("rank", r.rank); }

std::string SizesString(const layout::RankCoords& r) {
  return absl::StrCat("world_size=", r.world_size, " (tp=", r.tp_size, ",cp=", r.cp_size, ",dp=", r.dp_size,
                      ",pp=", r.pp_size, "; etp=", r.etp_size, ",ep=", r.ep_size, ",edp=", r.edp_size, ")");
}

std::string DenseCoords(const layout::RankCoords& r) {
  return absl::StrCat("tp=", r.tp, ",cp=", r.cp, ",dp=", r.dp, ",pp=", r.pp);
}

std::string ExpertCoords(const layout::RankCoords& r) {
  return absl::StrCat("etp=", r.etp, ",ep=", r.ep, ",edp=", r.edp, ",pp=", r.pp);
}

std::string Session::Label() const {
  return absl::StrCat("client '", client.name, "' (pid ", client.pid, ", ", client.caller.ToString(), ")");
}

absl::Status RankReg::PrepareTargetMemory(ExecContext* ctx, int device, UpdateMode mode,
                                          const std::function<bool(int32_t)>& tracked, bool moves) {
  base_specs.resize(shards.size());
  for (size_t s = 0; s < shards.size(); ++s) {
    const layout::ShardSpec& sh = shards[s];
    if (mode == UpdateMode::kStaged && !staging[s]) {
      auto b = ctx->Allocate(device, sh.shape.NumElements() * kernels::DTypeSize(sh.dtype),
                             absl::StrCat("staging of ", Label(), " buffer '", sh.name, "'"));
      if (!b.ok()) return b.status();
      staging[s] = std::move(*b);
    }
    bool holds_tracked = false;
    for (const layout::Piece& p : sh.pieces) holds_tracked |= tracked(p.tensor);
    if (holds_tracked && moves && !base[s]) {
      auto b = ctx->Allocate(device, sh.shape.NumElements() * 4,
                             absl::StrCat("LoRA base of ", Label(), " buffer '", sh.name, "'"));
      if (!b.ok()) return b.status();
      base[s] = std::move(*b);
      base_specs[s] = sh;
      base_specs[s].dtype = layout::DType::kF32;
      base_specs[s].pieces.clear();
    }
  }
  return absl::OkStatus();
}

layout::ShardView RankReg::Live(uint32_t s) const {
  return {&shards[s], strides[s].empty() ? nullptr : strides[s].data(), live[s]};
}

layout::ShardView RankReg::Write(uint32_t s, UpdateMode mode) const {
  if (mode == UpdateMode::kStaged) return {&shards[s], nullptr, staging[s]->data()};
  return Live(s);
}

layout::ShardView RankReg::Base(uint32_t s) const { return {&base_specs[s], nullptr, base[s]->data()}; }

kernels::BoxCopyOp RankReg::CommitCopy(uint32_t s, const layout::Box& box) const {
  layout::CopyOp c;
  c.src_box = c.dst_box = c.canonical = box;
  return layout::LowerCopy(c, {&shards[s], nullptr, staging[s]->data()}, Live(s));
}

std::string RankReg::Label() const {
  if (role == Role::kSource) return absl::StrCat("source ", coords.ToString());
  return absl::StrCat("replica '", replica_id, "' ", coords.ToString());
}

RankReg::~RankReg() {
  for (const std::string& h : cuda_handles) cuda->Release(h);
}

CoreImpl::CoreImpl(const CoreOptions& options)
    : options_(options),
      started_(absl::Now()),
      host_exec_(Executor::Host(options.copy_threads)),
      cuda_exec_(Executor::Cuda()),
      nccl_((cuda_exec_.ok() && transport::NcclAvailable()) ||
            (options.test_hooks.has_value() && options.test_hooks->stand_in_nccl)),
      log_(Logger("core")),
      comms_([this](const std::vector<std::string>& members, int rank, const std::string& key) {
        return NewCommunicator(members, rank, key);
      }) {}

CoreImpl::~CoreImpl() {
  BeginShutdown();
  std::vector<std::unique_ptr<Part>> parts;
  {
    wsync::MutexLock lock(&mu_);
    cluster_stop_ = true;
    for (auto& [id, p] : parts_) {
      if (p->state.Decide(Part::Decision::kAbort)) p->abort_reason = "wsyncd is shutting down";
    }
  }
  if (cluster_thread_.joinable()) cluster_thread_.join();
  if (watchdog_thread_.joinable()) watchdog_thread_.join();
  {
    wsync::MutexLock lock(&mu_);
    for (auto& [id, p] : parts_) parts.push_back(std::move(p));
    parts_.clear();
  }
  for (auto& p : parts) {
    if (p->thread.joinable()) p->thread.join();
  }
}

void CoreImpl::AddEndpoint(const EndpointInfo& endpoint) {
  wsync::MutexLock lock(&mu_);
  endpoints_.push_back(endpoint);
}

absl::StatusOr<std::string> CoreImpl::OpenSession(const ClientInfo& client, EventSink* sink) {
  wsync::MutexLock lock(&mu_);
  if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
  auto s = std::make_unique<Session>();
  s->id = RandomId();
  s->client = client;
  s->sink = sink;
  // Host memory is checked against the owner's uid: only local callers have one.
  const int64_t uid = client.caller.kind == Caller::Kind::kLocal ? client.caller.uid : -1;
  s->lease = memory::HostLease::Create(uid, absl::StrCat("client '", client.name, "'"));
  s->cuda = memory::CudaLease::Create(absl::StrCat("client '", client.name, "'"));
  s->attached = absl::Now();
  log_->info("{} attached", s->Label());
  std::string id = s->id;
  sessions_[id] = std::move(s);
  return id;
}

void CoreImpl::DropSessionRanks(const std::string& session_id) {
  for (auto mit = models_.begin(); mit != models_.end();) {
    Model& m = *mit->second;
    size_t before = m.sources.size();
    auto withdraw = [&](const RankReg& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (!m.coordinator.empty()) withdrawals_.push_back({m.coordinator, m.id, r.role, r.replica_id, r.coords});
    };
    for (auto it = m.sources.begin(); it != m.sources.end();) {
      if (it->second->session_id == session_id) {
        withdraw(*it->second);
        it = m.sources.erase(it);
      } else {
        ++it;
      }
    }
    bool changed = before != m.sources.size();
    for (auto rit = m.replicas.begin(); rit != m.replicas.end();) {
      Replica& rep = rit->second;
      for (auto it = rep.ranks.begin(); it != rep.ranks.end();) {
        if (it->second->session_id == session_id) {
          withdraw(*it->second);
          it = rep.ranks.erase(it);
          changed = true;
        } else {
          ++it;
        }
      }
      rit = rep.ranks.empty() ? m.replicas.erase(rit) : std::next(rit);
    }
    if (changed) m.generation++;
    if (m.sources.empty() && m.replicas.empty() && m.owner_session == session_id) {
      log_->info("model '{}' released (its last registrations ended with session {})", m.id,
                 session_id);
      mit = models_.erase(mit);
    } else {
      ++mit;
    }
  }
}

void CoreImpl::CloseSession(const std::string& session_id, const std::string& reason) {
  std::unique_ptr<Session> gone;
  {
    wsync::MutexLock lock(&mu_);
    auto it = sessions_.find(session_id);
    if (it == sessions_.end()) return;
    Session* s = it->second.get();
    s->closing = true;
    const std::string why = absl::StrCat(s->Label(), " ", reason);
    for (auto& [id, job] : jobs_) {
      if (job->sessions.count(session_id) && job->abort_reason.empty()) {
        job->abort_reason = why;
        job->abort_code = absl::StatusCode::kAborted;
      }
    }
    // Memory stays mapped until every job that reads or writes it has stopped.
    auto no_job_touches = [this, &session_id]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (const auto& [id, job] : jobs_) {
        if (job->sessions.count(session_id)) return false;
      }
      return true;
    };
    mu_.Await(absl::Condition(&no_job_touches));
    DropSessionRanks(session_id);
    log_->info("{} detached ({}); {} shm mapping(s) and {} CUDA IPC handle(s) released", s->Label(), reason,
               s->lease->num_mappings(), s->cuda->num_handles());
    gone = std::move(it->second);
    sessions_.erase(it);
  }
  // `gone` unmaps here, without the lock.
}

absl::Status CoreImpl::AckPause(const std::string& session_id, const std::string& model_id,
                                const std::string& replica_id, uint64_t version) {
  wsync::MutexLock lock(&mu_);
  auto m = models_.find(model_id);
  if (m == models_.end() || (m->second->running == nullptr && m->second->part == nullptr)) {
    return absl::NotFoundError(absl::StrCat("no sync of model '", model_id, "' is waiting for a pause"));
  }
  // A participant's part pauses its own targets; a local sync pauses them
  // from the running job.
  Job* job = m->second->part != nullptr && m->second->part->job != nullptr ? m->second->part->job
                                                                           : m->second->running;
  if (job == nullptr) {
    return absl::NotFoundError(absl::StrCat("no sync of model '", model_id, "' is waiting for a pause"));
  }
  if (job->pause_version != version || !job->pause_sessions.count(session_id)) {
    return absl::FailedPreconditionError(absl::StrCat("pause ack for model '", model_id, "' replica '",
                                                      replica_id, "' version ", version,
                                                      " does not match the pause in progress"));
  }
  job->acks.insert(session_id);
  return absl::OkStatus();
}

absl::Status CoreImpl::Authorize(const Caller& caller, const std::string& model_id, const Model* model,
                                 const char* action) const {
  if (!caller.may_write) {
    return absl::PermissionDeniedError(absl::StrCat(
        caller.ToString(), " may not ", action, " model '", model_id,
        "': anonymous callers (TCP without a client certificate) may only read status; use the Unix socket, "
        "an mTLS client certificate, or start wsyncd with --allow-anonymous-writes"));
  }
  if (model == nullptr || caller.admin || (model->owner && model->owner->Key() == caller.Key())) {
    return absl::OkStatus();
  }
  return absl::PermissionDeniedError(absl::StrCat(
      caller.ToString(), " may not ", action, " model '", model_id, "': it belongs to ",
      model->owner ? model->owner->ToString() : std::string("the daemons that announced it"),
      " (only its owner and administrators, the daemon's uid and members of --admin-group, may)"));
}

absl::StatusOr<Session*> CoreImpl::CallerSession(const Caller& caller, const std::string& session_id) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second->closing) {
    return absl::NotFoundError(absl::StrCat("session ", Quoted(session_id),
                                            " is not attached (call Attach first and pass its session id)"));
  }
  if (it->second->client.caller.Key() != caller.Key()) {
    return absl::PermissionDeniedError(
        absl::StrCat(caller.ToString(), " may not use a session opened by another identity; pass the session id "
                     "your own Attach returned"));
  }
  return it->second.get();
}

// FP8 quantization at registration (docs/fp8.md): scale tensors are
// computed by syncs, so sources never hold them and targets hold them in
// fp32; a weight with scales in an fp8 buffer covers whole scale groups
// (128 x 128 blocks: vLLM needs block-aligned shards; whole rows; the whole
// tensor), as a 2-d box of a 2-d buffer or of one matrix of a 3-d stack
// (fused experts).
absl::Status CheckFp8Pieces(const layout::ModelSpec& spec, Role role, const layout::ShardSpec& shard,
                            const std::string& bw) {
  for (const layout::Piece& p : shard.pieces) {
    const std::string& name = spec.tensor(p.tensor).name;
    if (spec.ScalesOf(p.tensor) >= 0) {
      if (role == Role::kSource) {
        return absl::InvalidArgumentError(absl::StrCat(bw, ": '", name, "' holds FP8 scales, which syncs compute; "
                                                       "sources do not register them"));
      }
      if (shard.dtype != layout::DType::kF32) {
        return absl::InvalidArgumentError(
            absl::StrCat(bw, ": the FP8 scales '", name, "' are fp32, not ", kernels::DTypeName(shard.dtype)));
      }
      continue;
    }
    if (role != Role::kTarget || !layout::QuantizedInto(spec, p.tensor, shard.dtype)) continue;
    const layout::Shape& full = spec.tensor(p.tensor).shape;
    const layout::Box& b = p.canonical;
    const layout::ScaleGroup g = spec.ScaleGroupOf(p.tensor);
    const int64_t group[2] = {g.rows, g.cols};
    const int nd = shard.shape.ndim;
    bool aligned = (nd == 2 || nd == 3) && p.shard.ndim == nd && b.ndim == 2;
    for (int d = 0; aligned && d + 2 < nd; ++d) aligned = p.shard.size[d] == 1;
    for (int d = 0; aligned && d < 2; ++d) {
      aligned = p.shard.size[nd - 2 + d] == b.size[d] && b.off[d] % group[d] == 0 &&
                (b.size[d] % group[d] == 0 || b.off[d] + b.size[d] == full.d[d]);
    }
    if (!aligned) {
      const layout::Fp8Scaling sc = spec.ScalingOf(p.tensor);
      const std::string groups = sc == layout::Fp8Scaling::kBlock     ? "whole 128 x 128 blocks"
                                 : sc == layout::Fp8Scaling::kChannel ? "whole rows (one scale per output channel)"
                                                                      : "the whole tensor (one scale per tensor)";
      return absl::InvalidArgumentError(absl::StrCat(
          bw, ": FP8 piece ", b.ToString(), " of '", name, "' ", full.ToString(), " does not cover ", groups,
          ": a tensor-parallel cut that splits a scale group cannot get its scale, which covers the whole group",
          sc == layout::Fp8Scaling::kBlock
              ? " (vLLM needs block-aligned FP8 shards)"
              : "; register the model with block scales (fp8_scaling BLOCK), which a block-aligned cut keeps whole"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelRegistered> CoreImpl::RegisterModel(const RegisterModelArgs& a) {
  WSYNC_RETURN_IF_ERROR(CheckModelId(a.model_id));
  if (!a.announced) {
    WSYNC_RETURN_IF_ERROR(Authorize(a.caller, a.model_id, nullptr, "register"));
  }
  const int64_t max_tensors = options_.limits.max_tensors_per_model;
  if (static_cast<int64_t>(a.tensors.size() + 2 * a.adapters.size()) > max_tensors) {
    return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': ", a.tensors.size(), " tensors and ",
                                                   a.adapters.size(), " LoRA adapters exceed the limit of ",
                                                   max_tensors, " tensors per model (--max-tensors-per-model)"));
  }
  std::vector<layout::TensorSpec> tensors = a.tensors;
  layout::ModelConfig config = a.config;
  if (a.has_config) {
    if (absl::Status s = layout::NormalizeConfig(&config); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': ", s.message()));
    }
    if (tensors.empty()) {
      // Generation stops at the limit, leaving room for the adapters' A and B.
      auto t = layout::CanonicalTensors(config, layout::DType::kBF16,
                                        max_tensors - 2 * static_cast<int64_t>(a.adapters.size()));
      if (!t.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': ", t.status().message(),
                                                       " (--max-tensors-per-model)"));
      }
      tensors = *t;
    }
  } else if (tensors.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("model '", a.model_id, "': give its canonical tensors or a config"));
  }
  // Adapters: A and B are canonical tensors too; add them when not listed.
  auto find = [&](const std::string& n) -> const layout::TensorSpec* {
    for (const auto& t : tensors) {
      if (t.name == n) return &t;
    }
    return nullptr;
  };
  for (const LoraAdapterArg& ad : a.adapters) {
    const layout::TensorSpec* base = find(ad.base_tensor);
    if (base == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': LoRA adapter on '",
                                                     ad.base_tensor, "', which is not a tensor of the model"));
    }
    if (!std::isfinite(ad.scaling)) {
      return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': LoRA adapter on '",
                                                     ad.base_tensor, "': scaling ", ad.scaling, " is not finite"));
    }
    if (base->shape.ndim != 2 || ad.rank < 1) {
      return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': LoRA adapter on '",
                                                     ad.base_tensor, "' needs a 2-d base and rank >= 1"));
    }
    // Copies: adding A or B to `tensors` below may move the base.
    const layout::Shape base_shape = base->shape;
    const layout::DType base_dtype = base->dtype;
    const int64_t out = base_shape.d[0], in = base_shape.d[1];
    const bool peft = ad.convention == LoraConvention::kPeft;
    layout::Shape want_a = peft ? layout::Shape::Of({ad.rank, in}) : layout::Shape::Of({in, ad.rank});
    layout::Shape want_b = peft ? layout::Shape::Of({out, ad.rank}) : layout::Shape::Of({ad.rank, out});
    for (auto [name, want] : {std::pair{ad.a_tensor, want_a}, {ad.b_tensor, want_b}}) {
      const layout::TensorSpec* t = find(name);
      if (t == nullptr) {
        tensors.push_back({name, want, base_dtype});
      } else if (t->shape != want) {
        return absl::InvalidArgumentError(absl::StrCat(
            "model '", a.model_id, "': LoRA tensor '", name, "' has shape ", t->shape.ToString(),
            "; rank ", ad.rank, " on '", ad.base_tensor, "' ", base_shape.ToString(), " needs ",
            want.ToString()));
      }
    }
  }
  // FP8 scales of the weights FP8 checkpoints quantize, when asked and not
  // listed already (never of LoRA adapters: they stay with the trainer's
  // precision).
  if (a.fp8_scales) {
    std::set<std::string> lora;
    for (const LoraAdapterArg& ad : a.adapters) lora.insert({ad.a_tensor, ad.b_tensor});
    std::vector<layout::TensorSpec> scales;
    for (const layout::TensorSpec& t : tensors) {
      if (!t.scales_of.empty() || t.shape.ndim != 2 || !layout::Fp8Quantized(t) || lora.count(t.name)) continue;
      const std::string name = layout::Fp8ScaleName(t.name, *a.fp8_scales);
      if (find(name) == nullptr) {
        scales.push_back({name, layout::Fp8ScaleShape(t.shape, *a.fp8_scales), layout::DType::kF32, t.name});
      }
    }
    tensors.insert(tensors.end(), scales.begin(), scales.end());
  }
  auto spec = layout::ModelSpec::Create(tensors);
  if (!spec.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': ", spec.status().message()));
  }
  auto m = std::make_unique<Model>();
  m->id = a.model_id;
  m->owner_session = a.session_id;
  m->spec = *spec;
  m->has_config = a.has_config;
  m->config = config;
  for (const LoraAdapterArg& ad : a.adapters) {
    m->adapters[m->spec.Find(ad.base_tensor)] =
        Adapter{m->spec.Find(ad.a_tensor), m->spec.Find(ad.b_tensor), ad.rank, ad.scaling, ad.convention};
  }
  ModelRegistered out{a.model_id, m->spec.size(), m->spec.TotalBytes()};

  if (!a.announced) {
    m->owner = a.caller;
  }

  wsync::MutexLock lock(&mu_);
  if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
  if (!a.session_id.empty()) {
    if (auto s = CallerSession(a.caller, a.session_id); !s.ok()) return s.status();
  }
  auto it = models_.find(a.model_id);
  if (it != models_.end()) {
    Model& old = *it->second;
    // A model known only from peers' announcements is claimed by the first
    // local registrant.
    if (!a.announced) {
      if (!old.owner) old.owner = m->owner;
      WSYNC_RETURN_IF_ERROR(Authorize(a.caller, old.id, &old, "register"));
    }
    // The first tensor that differs (an FP8 scaling or an adapter asked for
    // by one registrant and not the other shows here).
    auto describe = [](const layout::ModelSpec& spec, int32_t i) {
      return i < spec.size() ? absl::StrCat("'", spec.tensor(i).name, "' ", spec.tensor(i).shape.ToString())
                             : std::string("absent");
    };
    int32_t diff = -1;
    for (int32_t i = 0; diff < 0 && i < std::max(old.spec.size(), m->spec.size()); ++i) {
      const bool same = i < old.spec.size() && i < m->spec.size() &&
                        old.spec.tensor(i).name == m->spec.tensor(i).name &&
                        old.spec.tensor(i).shape == m->spec.tensor(i).shape &&
                        old.spec.tensor(i).scales_of == m->spec.tensor(i).scales_of;
      if (!same) diff = i;
    }
    if (diff >= 0 || old.adapters.size() != m->adapters.size()) {
      const std::string which =
          diff >= 0 ? absl::StrCat(": tensor ", diff, " is ", describe(old.spec, diff), " there and ",
                                   describe(m->spec, diff), " here")
                    : absl::StrCat(": ", old.adapters.size(), " vs ", m->adapters.size(), " LoRA adapters");
      return absl::AlreadyExistsError(absl::StrCat("model '", a.model_id,
                                                   "' is already registered with different tensors (",
                                                   old.spec.size(), " vs ", m->spec.size(), ")", which,
                                                   "; every registrant must ask for the same tensors, adapters and "
                                                   "FP8 scaling, or unregister it first"));
    }
    return out;
  }
  log_->info("model '{}' registered: {} tensors, {:.1f} MiB, {} LoRA adapter(s)", a.model_id,
             out.num_tensors, out.total_bytes / 1048576.0, m->adapters.size());
  models_[a.model_id] = std::move(m);
  return out;
}

absl::Status CoreImpl::CheckMemory(const std::set<std::string>& sessions) {
  wsync::MutexLock lock(&mu_);
  for (const std::string& sid : sessions) {
    auto it = sessions_.find(sid);
    if (it == sessions_.end()) continue;
    WSYNC_RETURN_IF_ERROR(it->second->lease->CheckIntact());
  }
  return absl::OkStatus();
}

std::string CoreImpl::HolderLabel(const std::string& session_id) const {
  if (absl::StartsWith(session_id, "peer:")) return absl::StrCat("daemon '", session_id.substr(5), "'");
  auto it = sessions_.find(session_id);
  return it == sessions_.end() ? std::string("a client that detached") : it->second->Label();
}

absl::Status CoreImpl::CheckGridPlace(const std::map<std::string, std::unique_ptr<RankReg>>& ranks,
                                      const RankReg& rank, const std::string& who) const {
  const std::string key = CoordsKey(rank.coords);
  for (const auto& [k, other] : ranks) {
    if (k == key) continue;
    const layout::RankCoords& o = other->coords;
    const bool dense = DenseCoords(o) == DenseCoords(rank.coords);
    if (dense || ExpertCoords(o) == ExpertCoords(rank.coords)) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": ", dense ? "dense coordinates " : "expert coordinates ",
          dense ? DenseCoords(rank.coords) : ExpertCoords(rank.coords), " are already those of process ",
          o.ToString(), " (registered by ", HolderLabel(other->session_id),
          "); every process of a layout has its own place in each grid"));
    }
  }
  return absl::OkStatus();
}

absl::Status CoreImpl::StoreRank(Model& model, std::unique_ptr<RankReg> rank, UpdateMode mode,
                                 const std::string& who) {
  const std::string key = CoordsKey(rank->coords);
  if (rank->role == Role::kSource) {
    if (!model.sources.empty() && (model.source_recipe != rank->recipe ||
                                   !model.source_sizes.SameSizes(rank->coords))) {
      return absl::InvalidArgumentError(absl::StrCat(
          who, ": sources of this model are registered as ", model.source_recipe, " ",
          SizesString(model.source_sizes), ", not ", rank->recipe, " ", SizesString(rank->coords)));
    }
    auto old = model.sources.find(key);
    if (old != model.sources.end() && old->second->session_id != rank->session_id) {
      return absl::AlreadyExistsError(absl::StrCat(who, " is already registered by ",
                                                   HolderLabel(old->second->session_id)));
    }
    WSYNC_RETURN_IF_ERROR(CheckGridPlace(model.sources, *rank, who));
    model.source_recipe = rank->recipe;
    model.source_sizes = SizesOf(rank->coords);
    model.sources[key] = std::move(rank);
  } else {
    auto [rit, fresh] = model.replicas.try_emplace(rank->replica_id);
    Replica& rep = rit->second;
    if (fresh) {
      rep.id = rank->replica_id;
      rep.mode = mode;
      rep.counted = !rank->recipe.empty() || rank->world_declared;
      model.replica_sizes[rank->replica_id] = SizesOf(rank->coords);
      model.replica_recipe[rank->replica_id] = rank->recipe;
    } else {
      if (rep.mode != mode) {
        return absl::InvalidArgumentError(absl::StrCat(who, ": replica '", rank->replica_id, "' is ",
                                                       UpdateModeName(rep.mode), ", not ",
                                                       UpdateModeName(mode)));
      }
      if (model.replica_recipe[rank->replica_id] != rank->recipe ||
          !model.replica_sizes[rank->replica_id].SameSizes(rank->coords)) {
        return absl::InvalidArgumentError(absl::StrCat(
            who, ": replica '", rank->replica_id, "' is registered as ", model.replica_recipe[rank->replica_id],
            " ", SizesString(model.replica_sizes[rank->replica_id]), ", not ", rank->recipe, " ",
            SizesString(rank->coords)));
      }
      auto old = rep.ranks.find(key);
      if (old != rep.ranks.end() && old->second->session_id != rank->session_id) {
        return absl::AlreadyExistsError(absl::StrCat(who, " is already registered by ",
                                                     HolderLabel(old->second->session_id)));
      }
      WSYNC_RETURN_IF_ERROR(CheckGridPlace(rep.ranks, *rank, who));
    }
    rep.ranks[key] = std::move(rank);
    // New target memory holds unknown bytes: the replica needs a full sync.
    rep.Reset();
  }
  return absl::OkStatus();
}

std::string CoreImpl::RemoteCoordinator(const RegisterShardsArgs& a) const {
  return a.coordinator == PeerAddress() ? "" : a.coordinator;
}

absl::StatusOr<ShardsRegistered> CoreImpl::RegisterShards(const RegisterShardsArgs& a) {
  auto out = RegisterShardsLocal(a);
  if (!out.ok()) return out;
  if (RemoteCoordinator(a).empty()) return out;
  // The coordinator must know the rank before it can plan syncs with it;
  // if it cannot be told, the registration is undone.
  const layout::RankCoords coords = *Completed(a.rank);  // RegisterShardsLocal checked it
  absl::Status s = AnnounceRank(a.coordinator, a.model_id, a.role, a.replica_id, coords);
  if (!s.ok()) {
    layout::RankCoords c = coords;
    Role role = a.role;
    Unregister(a.caller, a.model_id, a.role == Role::kTarget ? a.replica_id : "", &role, &c).IgnoreError();
    return absl::Status(s.code(), absl::StrCat("model '", a.model_id, "' ", RoleName(a.role), " ",
                                               coords.ToString(), ": registered here but the coordinator at ",
                                               a.coordinator, " could not be told, so the registration was undone: ",
                                               s.message()));
  }
  return out;
}

absl::StatusOr<std::pair<layout::ModelSpec, std::vector<layout::ShardSpec>>> CoreImpl::DescribeLayout(
    const std::string& model_id, const std::string& recipe, const layout::RecipeOptions& options,
    const layout::RankCoords& rank) const {
  WSYNC_RETURN_IF_ERROR(CheckModelId(model_id));
  auto coords = Completed(rank);
  if (!coords.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", model_id, "': ", coords.status().message()));
  }
  layout::ModelSpec spec;
  layout::ModelConfig config;
  {
    wsync::MutexLock lock(&mu_);
    auto it = models_.find(model_id);
    if (it == models_.end()) return absl::NotFoundError(absl::StrCat("model '", model_id, "' is not registered"));
    if (!it->second->has_config) {
      return absl::FailedPreconditionError(
          absl::StrCat("model '", model_id, "' was registered without a config; recipes need one"));
    }
    spec = it->second->spec;
    config = it->second->config;
  }
  auto shards = layout::BuildShards(spec, config, recipe, options, *coords, layout::DType::kF32);
  if (!shards.ok()) {
    return absl::Status(shards.status().code(),
                        absl::StrCat("model '", model_id, "' ", recipe, " ", coords->ToString(), ": ",
                                     shards.status().message()));
  }
  return std::make_pair(std::move(spec), std::move(*shards));
}

absl::StatusOr<ShardsRegistered> CoreImpl::RegisterShardsLocal(const RegisterShardsArgs& a) {
  WSYNC_RETURN_IF_ERROR(CheckModelId(a.model_id));
  auto completed = Completed(a.rank);
  if (!completed.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': ", completed.status().message()));
  }
  layout::RankCoords coords = *completed;
  if (a.role == Role::kTarget && !ValidId(a.replica_id)) {
    return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': target replica id ",
                                                   Quoted(a.replica_id), " must match [A-Za-z0-9._-]{1,128}"));
  }
  if (a.buffers.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("model '", a.model_id, "': no buffers to register"));
  }
  wsync::MutexLock lock(&mu_);
  if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
  auto sit = CallerSession(a.caller, a.session_id);
  if (!sit.ok()) return sit.status();
  Session* session = *sit;
  auto mit = models_.find(a.model_id);
  if (mit == models_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", a.model_id, "' is not registered"));
  }
  Model& model = *mit->second;
  WSYNC_RETURN_IF_ERROR(Authorize(a.caller, model.id, &model, "register ranks of"));
  if (model.running != nullptr || model.part != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model '", a.model_id, "' has a sync running (version ",
        model.running ? model.running->version : model.part->plan.version, "); register after it ends"));
  }
  auto rank = std::make_unique<RankReg>();
  rank->session_id = a.session_id;
  rank->role = a.role;
  rank->replica_id = a.role == Role::kTarget ? a.replica_id : "";
  rank->coords = coords;
  rank->recipe = a.recipe;
  rank->world_declared = a.rank.world_size != 0;
  const std::string who = absl::StrCat("model '", a.model_id, "' ", rank->Label());

  // Pieces: from the recipe for buffers that list none.
  std::map<std::string, layout::ShardSpec> from_recipe;
  if (!a.recipe.empty()) {
    if (!model.has_config) {
      return absl::FailedPreconditionError(absl::StrCat(
          who, ": the recipe '", a.recipe, "' needs the model's config; register the model with a "
          "config or send explicit pieces"));
    }
    auto shards = layout::BuildShards(model.spec, model.config, a.recipe, a.recipe_options, coords,
                                      layout::DType::kBF16);
    if (!shards.ok()) {
      return Annotate(shards.status(), absl::StrCat(who));
    }
    for (auto& s : *shards) from_recipe[s.name] = std::move(s);
  }
  std::set<std::string> seen;
  for (const BufferArg& b : a.buffers) {
    const std::string bw = absl::StrCat(who, " buffer '", b.name, "'");
    if (!seen.insert(b.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": buffer '", b.name, "' is listed twice"));
    }
    layout::ShardSpec shard;
    shard.name = b.name;
    shard.shape = b.shape;
    shard.dtype = b.dtype;
    if (b.pieces.empty()) {
      auto r = from_recipe.find(b.name);
      if (r == from_recipe.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            bw, ": lists no pieces and ",
            a.recipe.empty() ? std::string("no recipe was given to generate them")
                             : "is not a buffer of the " + a.recipe + " recipe for this rank"));
      }
      // The recipe fixes the shape; the dtype is the client's choice.
      if (absl::Status s = layout::CheckDeclaredShape(r->second, b.shape); !s.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(who, ": ", s.message()));
      }
      shard.pieces = r->second.pieces;
    } else {
      for (const PieceArg& p : b.pieces) {
        int32_t id = model.spec.Find(p.tensor);
        if (id < 0) {
          return absl::InvalidArgumentError(
              absl::StrCat(bw, ": piece refers to unknown tensor '", p.tensor, "'"));
        }
        shard.pieces.push_back({id, p.canonical, p.shard});
      }
    }
    if (absl::Status s = layout::ValidateShard(model.spec, shard); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": ", s.message()));
    }
    WSYNC_RETURN_IF_ERROR(CheckFp8Pieces(model.spec, a.role, shard, bw));
    if (!b.strides.empty()) {
      if (static_cast<int>(b.strides.size()) != b.shape.ndim) {
        return absl::InvalidArgumentError(absl::StrCat(bw, ": ", b.strides.size(),
                                                       " strides for a ", b.shape.ndim, "-d shape"));
      }
      for (int64_t st : b.strides) {
        if (st < 1) return absl::InvalidArgumentError(absl::StrCat(bw, ": strides must be >= 1"));
      }
    }
    auto span = SpanBytes(b.shape, b.strides, b.dtype, bw);
    if (!span.ok()) return span.status();
    const uint64_t need = *span;
    if (b.nbytes < need) {
      return absl::InvalidArgumentError(absl::StrCat(bw, ": ", b.nbytes, " bytes registered but shape ",
                                                     b.shape.ToString(), " of ", kernels::DTypeName(b.dtype),
                                                     " needs ", need));
    }
    void* ptr = nullptr;
    int device = -1;
    RankReg::Extent extent;
    if (b.memory == BufferArg::Memory::kHostShm) {
      auto p = session->lease->Resolve(b.shm_name, b.offset, b.nbytes, bw, /*reserve=*/a.role == Role::kTarget);
      if (!p.ok()) return p.status();
      ptr = p->ptr;
      extent = {p->object, b.offset, b.offset + need, absl::StrCat("shm object ", b.shm_name)};
    } else {
      if (a.caller.kind != Caller::Kind::kLocal) {
        return absl::PermissionDeniedError(absl::StrCat(
            bw, ": GPU memory is registered over the daemon's Unix socket only, not by ", a.caller.ToString()));
      }
      rank->cuda = session->cuda.get();
      auto r = session->cuda->Acquire(b.cuda_handle, b.device_uuid, b.offset, b.nbytes, bw);
      if (!r.ok()) return r.status();
      rank->cuda_handles.push_back(b.cuda_handle);
      ptr = r->ptr;
      device = r->device;
      rank->gpu_uuid = b.device_uuid;
      if (!b.event_handle.empty()) {
        auto ev = session->cuda->OpenEvent(b.event_handle, r->device, bw);
        if (!ev.ok()) return ev.status();
        if (std::find(rank->events.begin(), rank->events.end(), *ev) == rank->events.end()) {
          rank->events.push_back(*ev);
        }
      }
    }
    if (!rank->shards.empty() && device != rank->device) {
      auto where = [](int d) { return d < 0 ? std::string("host shared memory") : absl::StrCat("GPU ", d); };
      return absl::InvalidArgumentError(absl::StrCat(
          bw, " is in ", where(device), " but buffer '", rank->shards[0].name, "' of this rank is in ",
          where(rank->device), "; every buffer of a rank must be in the same place"));
    }
    if (device >= 0) {
      const uint64_t at = reinterpret_cast<uintptr_t>(ptr);
      extent = {absl::StrCat("cuda:", device), at, at + need, absl::StrCat("GPU ", device, " memory")};
    }
    rank->device = device;
    rank->extents.push_back(std::move(extent));
    rank->shards.push_back(std::move(shard));
    rank->live.push_back(ptr);
    rank->strides.push_back(b.strides);
    rank->bytes += need;
  }
  for (const auto& [name, s] : from_recipe) {
    // Scale buffers are a generator's choice (its FP8 weights need them);
    // sources never hold them.
    const bool scales = !s.pieces.empty() && model.spec.ScalesOf(s.pieces[0].tensor) >= 0;
    if (scales && a.role == Role::kSource) continue;
    if (!seen.count(name)) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": buffer '", name, "' of the ", a.recipe,
                                                     " layout was not registered (", from_recipe.size(),
                                                     " expected)"));
    }
  }
  rank->staging.resize(rank->shards.size());
  rank->base.resize(rank->shards.size());

  // Multi-node: every local rank of a model names the same coordinator.
  const std::string coord = RemoteCoordinator(a);
  if (!coord.empty() && options_.peers == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        who, ": names coordinator ", a.coordinator, ", but this wsyncd has no peer endpoint (start it with "
        "--listen to take part in multi-node syncs)"));
  }
  const bool has_local = [&] {
    for (const auto& [k, r] : model.sources) if (r->daemon.empty()) return true;
    for (const auto& [id, rep] : model.replicas)
      for (const auto& [k, r] : rep.ranks) if (r->daemon.empty()) return true;
    return false;
  }();
  if (has_local && model.coordinator != coord) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, ": names coordinator '", coord.empty() ? "this daemon" : coord, "', but other ranks of the model here "
        "named '", model.coordinator.empty() ? "this daemon" : model.coordinator, "'"));
  }
  {
    const RankReg* replaced = nullptr;
    const std::string key = CoordsKey(rank->coords);
    if (a.role == Role::kSource) {
      auto it = model.sources.find(key);
      if (it != model.sources.end()) replaced = it->second.get();
    } else if (auto rit = model.replicas.find(rank->replica_id); rit != model.replicas.end()) {
      auto it = rit->second.ranks.find(key);
      if (it != rit->second.ranks.end()) replaced = it->second.get();
    }
    if (replaced != nullptr && replaced->session_id != rank->session_id) replaced = nullptr;  // StoreRank refuses
    WSYNC_RETURN_IF_ERROR(CheckOverlaps(*rank, replaced, who));
  }
  ShardsRegistered out;
  out.num_buffers = static_cast<int64_t>(rank->shards.size());
  for (const auto& s : rank->shards) out.num_pieces += static_cast<int64_t>(s.pieces.size());
  out.bytes = rank->bytes;
  WSYNC_RETURN_IF_ERROR(StoreRank(model, std::move(rank), a.mode, who));
  model.coordinator = coord;
  model.generation++;
  log_->info("{} registered by {}: {} buffers, {} pieces, {:.1f} MiB", who, session->Label(),
             out.num_buffers, out.num_pieces, out.bytes / 1048576.0);
  return out;
}

absl::Status CoreImpl::CheckOverlaps(const RankReg& rank, const RankReg* replaced, const std::string& who) const {
  // Registered buffers by memory object; labels are made only for an error.
  struct Held {
    const Model* model;
    const RankReg* rank;
    size_t shard;
  };
  std::map<std::string_view, std::vector<Held>> by_object;
  auto add = [&](const Model& m, const RankReg& r) {
    if (&r == replaced || !r.daemon.empty()) return;
    for (size_t i = 0; i < r.extents.size(); ++i) by_object[r.extents[i].object].push_back({&m, &r, i});
  };
  for (const auto& [id, m] : models_) {
    for (const auto& [k, r] : m->sources) add(*m, *r);
    for (const auto& [rid, rep] : m->replicas) {
      for (const auto& [k, r] : rep.ranks) add(*m, *r);
    }
  }
  auto refuse = [&](size_t i, const RankReg::Extent& other, const std::string& other_label) {
    const RankReg::Extent& e = rank.extents[i];
    return absl::InvalidArgumentError(absl::StrCat(
        who, " buffer '", rank.shards[i].name, "' (bytes [", e.begin, ", ", e.end, ") of ", e.where,
        ") shares bytes with ", other_label, " (bytes [", other.begin, ", ", other.end, ") of ", other.where,
        "); a target's memory may share no byte with any other registered buffer, nor a source's with a "
        "target's"));
  };
  auto overlap = [](const RankReg::Extent& x, const RankReg::Extent& y) {
    return x.object == y.object && x.begin < y.end && y.begin < x.end;
  };
  for (size_t i = 0; i < rank.extents.size(); ++i) {
    const RankReg::Extent& e = rank.extents[i];
    // Sources may share bytes with sources (both are only read).
    auto it = by_object.find(e.object);
    if (it != by_object.end()) {
      for (const Held& h : it->second) {
        const RankReg::Extent& other = h.rank->extents[h.shard];
        if ((rank.role == Role::kTarget || h.rank->role == Role::kTarget) && overlap(e, other)) {
          return refuse(i, other, absl::StrCat("model '", h.model->id, "' ", h.rank->Label(), " buffer '",
                                               h.rank->shards[h.shard].name, "'"));
        }
      }
    }
    if (rank.role != Role::kTarget) continue;
    for (size_t j = 0; j < i; ++j) {
      if (overlap(e, rank.extents[j])) {
        return refuse(i, rank.extents[j], absl::StrCat("buffer '", rank.shards[j].name, "' of the same rank"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> CoreImpl::Unregister(const Caller& caller, const std::string& model_id,
                                             const std::string& replica_id, const Role* role,
                                             const layout::RankCoords* rank) {
  WSYNC_RETURN_IF_ERROR(CheckModelId(model_id));
  wsync::MutexLock lock(&mu_);
  auto mit = models_.find(model_id);
  if (mit == models_.end()) {
    return absl::NotFoundError(absl::StrCat("model '", model_id, "' is not registered"));
  }
  Model& m = *mit->second;
  WSYNC_RETURN_IF_ERROR(Authorize(caller, m.id, &m, "unregister"));
  if (m.running != nullptr || m.part != nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("model '", model_id, "' has a sync running; cancel it or wait"));
  }
  // Local ranks of a model coordinated elsewhere are withdrawn there too.
  auto withdraw = [&](const RankReg& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!m.coordinator.empty() && r.daemon.empty()) {
      withdrawals_.push_back({m.coordinator, m.id, r.role, r.replica_id, r.coords});
    }
  };
  auto withdraw_replica = [&](const Replica& rep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& [k, r] : rep.ranks) withdraw(*r);
  };
  int64_t released = 0;
  if (rank != nullptr && role != nullptr) {
    auto coords = Completed(*rank);
    if (!coords.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("model '", model_id, "': ", coords.status().message()));
    }
    const std::string key = CoordsKey(*coords);
    if (*role == Role::kSource) {
      if (auto it = m.sources.find(key); it != m.sources.end()) withdraw(*it->second);
      released = static_cast<int64_t>(m.sources.erase(key));
    } else {
      auto rit = m.replicas.find(replica_id);
      if (rit != m.replicas.end()) {
        if (auto it = rit->second.ranks.find(key); it != rit->second.ranks.end()) withdraw(*it->second);
        released = static_cast<int64_t>(rit->second.ranks.erase(key));
        if (rit->second.ranks.empty()) m.replicas.erase(rit);
      }
    }
    if (released == 0) {
      return absl::NotFoundError(absl::StrCat("model '", model_id, "': no ", RoleName(*role), " ",
                                              coords->ToString(), " is registered"));
    }
  } else if (!replica_id.empty()) {
    auto rit = m.replicas.find(replica_id);
    if (rit == m.replicas.end()) {
      return absl::NotFoundError(absl::StrCat("model '", model_id, "' has no replica ", Quoted(replica_id)));
    }
    released = static_cast<int64_t>(rit->second.ranks.size());
    withdraw_replica(rit->second);
    m.replicas.erase(rit);
  } else {
    released = static_cast<int64_t>(m.sources.size());
    for (const auto& [k, r] : m.sources) withdraw(*r);
    for (const auto& [id, r] : m.replicas) {
      released += static_cast<int64_t>(r.ranks.size());
      withdraw_replica(r);
    }
    models_.erase(mit);
    log_->info("model '{}' unregistered ({} ranks)", model_id, released);
    return released;
  }
  m.generation++;
  return released;
}

DaemonStatus CoreImpl::GetStatus(const Caller& viewer) const {
  DaemonStatus st;
  st.daemon_id = options_.daemon_id;
  st.version = Version();
  st.build = BuildDescription();
  st.uptime_s = absl::ToDoubleSeconds(absl::Now() - started_);
  st.pid = getpid();
  st.gpus = options_.gpus;
  wsync::MutexLock lock(&mu_);
  st.serving = serving_;
  st.endpoints = endpoints_;
  // Session ids are capabilities: a viewer sees only its own, an
  // administrator every one.
  const std::string me = viewer.Key();
  auto sees = [&](const std::string& sid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (viewer.admin) return true;
    auto it = sessions_.find(sid);
    return it != sessions_.end() && viewer.kind != Caller::Kind::kAnonymous && it->second->client.caller.Key() == me;
  };
  auto client_of = [this](const std::string& sid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = sessions_.find(sid);
    return it == sessions_.end() ? std::string() : it->second->client.name;
  };
  for (const auto& [id, m] : models_) {
    ModelInfo mi;
    mi.model_id = id;
    mi.num_tensors = m->spec.size();
    mi.total_bytes = m->spec.TotalBytes();
    mi.num_adapters = static_cast<int64_t>(m->adapters.size());
    bool mixed = false;
    for (int32_t t = 0; t < m->spec.size(); ++t) {
      if (m->spec.ScaleTensorOf(t) < 0) continue;
      mixed |= mi.fp8_weights > 0 && mi.fp8_scaling != m->spec.ScalingOf(t);
      mi.fp8_scaling = m->spec.ScalingOf(t);
      ++mi.fp8_weights;
    }
    if (mixed) mi.fp8_scaling.reset();
    auto add_rank = [&](const RankReg& r, UpdateMode mode) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      RankInfo ri;
      ri.role = r.role;
      ri.replica_id = r.replica_id;
      ri.rank = r.coords;
      ri.session_id = sees(r.session_id) ? r.session_id : "";
      ri.client_name = client_of(r.session_id);
      ri.num_buffers = static_cast<int64_t>(r.shards.size());
      ri.bytes = r.bytes;
      ri.mode = mode;
      mi.ranks.push_back(ri);
    };
    for (const auto& [k, r] : m->sources) add_rank(*r, UpdateMode::kStaged);
    for (const auto& [rid, rep] : m->replicas) {
      for (const auto& [k, r] : rep.ranks) add_rank(*r, rep.mode);
      mi.replicas.push_back({rid, rep.version, rep.digest, rep.poisoned()});
    }
    mi.has_last_sync = m->has_last;
    mi.last_sync = m->last;
    mi.last_error = m->last_error;
    st.models.push_back(std::move(mi));
  }
  for (const auto& [id, j] : jobs_) {
    st.jobs.push_back({j->id, j->model_id, j->version, j->progress,
                       absl::ToDoubleMilliseconds(absl::Now() - j->start)});
  }
  const absl::Time now = absl::Now();
  for (const auto& [id, m] : members_) {
    auto seen = last_seen_.find(id);
    st.peers.push_back({id, m.address, m.incarnation, "member",
                        seen == last_seen_.end() ? 0 : absl::ToDoubleMilliseconds(now - seen->second), false});
  }
  for (const auto& [addr, u] : upstream_) {
    st.peers.push_back({u.daemon_id, addr, 0, "coordinator",
                        u.daemon_id.empty() ? 0 : absl::ToDoubleMilliseconds(now - u.last_ok), u.lost});
  }
  for (const auto& [id, s] : sessions_) {
    st.sessions.push_back({sees(id) ? id : "", s->client.name, s->client.pid, s->client.caller.uid,
                           s->client.caller.ToString(), absl::ToDoubleMilliseconds(absl::Now() - s->attached)});
  }
  return st;
}

void CoreImpl::BeginShutdown() {
  wsync::MutexLock lock(&mu_);
  if (!serving_) return;
  serving_ = false;
  for (auto& [id, job] : jobs_) {
    if (job->abort_reason.empty()) {
      job->abort_reason = "wsyncd is shutting down";
      job->abort_code = absl::StatusCode::kUnavailable;
    }
  }
  for (auto& [id, p] : parts_) {
    if (p->comm != nullptr) p->comm->Abort("wsyncd is shutting down");
  }
  log_->info("no longer accepting new work; {} sync(s) asked to stop", jobs_.size());
}

absl::Status CoreImpl::KvSet(const std::string& job, const std::string& key, const std::string& value) {
  constexpr size_t kMaxKeys = 100000;
  const Limits& lim = options_.limits;
  if (value.size() > lim.max_kv_value_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("rendezvous value for key ", Quoted(key), " is ", value.size(),
                                                     " bytes; the limit is ", lim.max_kv_value_bytes,
                                                     " (--max-kv-value-bytes)"));
  }
  const std::string k = job + '\0' + key;
  wsync::MutexLock lock(&mu_);
  if (!serving_) return absl::UnavailableError("wsyncd is shutting down");
  auto it = kv_.find(k);
  const uint64_t old = it == kv_.end() ? 0 : k.size() + it->second.size();
  if (it == kv_.end() && kv_.size() >= kMaxKeys) {
    return absl::ResourceExhaustedError(absl::StrCat("rendezvous store is full (", kMaxKeys, " keys)"));
  }
  if (kv_bytes_ - old + k.size() + value.size() > lim.max_kv_total_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("rendezvous store is full (", kv_bytes_, " of ",
                                                     lim.max_kv_total_bytes, " bytes held)"));
  }
  kv_bytes_ = kv_bytes_ - old + k.size() + value.size();
  kv_[k] = value;
  return absl::OkStatus();
}

absl::StatusOr<std::string> CoreImpl::KvGet(const std::string& job, const std::string& key, uint64_t timeout_ms,
                                            const std::function<bool()>& client_gone) {
  const std::string k = job + '\0' + key;
  const absl::Time until = absl::Now() + absl::Milliseconds(timeout_ms);
  wsync::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return kv_.count(k) > 0 || !serving_; };
  while (!ready()) {
    if (absl::Now() >= until) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' of job '", job,
                                                      "' did not appear within ", timeout_ms, " ms"));
    }
    if (client_gone && client_gone()) return absl::CancelledError("the caller went away");
    mu_.AwaitWithDeadline(absl::Condition(&ready), std::min(until, absl::Now() + absl::Milliseconds(100)));
  }
  if (!kv_.count(k)) return absl::UnavailableError("wsyncd is shutting down");
  return kv_[k];
}

void CoreImpl::Notify(const std::set<std::string>& sessions, const Event& e) {
  wsync::MutexLock lock(&mu_);
  NotifyLocked(sessions, e);
}

void CoreImpl::NotifyLocked(const std::set<std::string>& sessions, const Event& e) {
  for (const std::string& sid : sessions) {
    auto it = sessions_.find(sid);
    if (it != sessions_.end() && it->second->sink != nullptr) it->second->sink->Push(e);
  }
}

}  // namespace internal
}  // namespace wsync::core
