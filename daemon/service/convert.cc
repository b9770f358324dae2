#include "daemon/service/convert.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "daemon/layout/fp8_checkpoint.h"

namespace wsync::service {
namespace {

template <typename R>
absl::StatusOr<layout::Shape> ShapeOf(const R& dims, const std::string& field) {
  layout::Shape s;
  if (dims.size() < 1 || dims.size() > layout::kMaxDims) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": shape must have 1 to ", layout::kMaxDims, " dimensions, got ", dims.size()));
  }
  for (int64_t d : dims) {
    if (d < 1) return absl::InvalidArgumentError(absl::StrCat(field, ": shape dimensions must be >= 1"));
    s.d[s.ndim++] = d;
  }
  return s;
}

absl::StatusOr<layout::Box> BoxOf(const v1::Box& b, const std::string& field) {
  if (b.offsets_size() != b.sizes_size() || b.sizes_size() < 1 || b.sizes_size() > layout::kMaxDims) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": a box needs 1 to ", layout::kMaxDims, " offsets and as many sizes"));
  }
  layout::Box out;
  for (int i = 0; i < b.sizes_size(); ++i) {
    out.off[i] = b.offsets(i);
    out.size[i] = b.sizes(i);
  }
  out.ndim = b.sizes_size();
  return out;
}

void ToProtoCoords(const layout::RankCoords& r, v1::RankCoordinates* out) {
  out->set_rank(r.rank);
  out->set_world_size(r.world_size);
  out->set_tp(r.tp);
  out->set_tp_size(r.tp_size);
  out->set_cp(r.cp);
  out->set_cp_size(r.cp_size);
  out->set_dp(r.dp);
  out->set_dp_size(r.dp_size);
  out->set_pp(r.pp);
  out->set_pp_size(r.pp_size);
  out->set_etp(r.etp);
  out->set_etp_size(r.etp_size);
  out->set_ep(r.ep);
  out->set_ep_size(r.ep_size);
  out->set_edp(r.edp);
  out->set_edp_size(r.edp_size);
}

void ToProto(const core::ReplicaInfo& r, v1::ReplicaStatus* rs) {
  rs->set_replica_id(r.replica_id);
  rs->set_version(r.version);
  rs->set_digest(r.digest);
  rs->set_poisoned(r.poisoned);
}

v1::SyncPhase PhaseOf(const std::string& p) {
  v1::SyncPhase out;
  return v1::SyncPhase_Parse(p, &out) ? out : v1::TRANSFERRING;
}

}  // namespace

absl::StatusOr<layout::Shape> ShapeFromProto(const google::protobuf::RepeatedField<int64_t>& dims,
                                             const std::string& field) {
  return ShapeOf(dims, field);
}
absl::StatusOr<layout::Box> FromProto(const v1::Box& b, const std::string& field) { return BoxOf(b, field); }
void ToProto(const layout::RankCoords& r, v1::RankCoordinates* out) { ToProtoCoords(r, out); }

layout::RankCoords FromProto(const v1::RankCoordinates& in) {
  layout::RankCoords r;
  r.rank = in.rank();
  r.world_size = in.world_size();
  r.tp = in.tp();
  r.tp_size = in.tp_size();
  r.cp = in.cp();
  r.cp_size = in.cp_size();
  r.dp = in.dp();
  r.dp_size = in.dp_size();
  r.pp = in.pp();
  r.pp_size = in.pp_size();
  r.etp = in.etp();
  r.etp_size = in.etp_size();
  r.ep = in.ep();
  r.ep_size = in.ep_size();
  r.edp = in.edp();
  r.edp_size = in.edp_size();
  return r;
}

void ToProto(const layout::ModelSpec& spec, const std::vector<layout::ShardSpec>& shards,
             v1::DescribeLayoutResponse* out) {
  auto box = [](const layout::Box& b, v1::Box* o) {
    for (int i = 0; i < b.ndim; ++i) {
      o->add_offsets(b.off[i]);
      o->add_sizes(b.size[i]);
    }
  };
  std::vector<bool> named(spec.size(), false);
  for (const layout::ShardSpec& s : shards) {
    for (const layout::Piece& p : s.pieces) named[p.tensor] = true;
  }
  for (int32_t t = 0; t < spec.size(); ++t) {
    if (!named[t]) continue;
    v1::CanonicalTensor* c = out->add_tensors();
    c->set_name(spec.tensor(t).name);
    for (int i = 0; i < spec.tensor(t).shape.ndim; ++i) c->add_shape(spec.tensor(t).shape.d[i]);
    c->set_scales_of(spec.tensor(t).scales_of);
  }
  for (const layout::ShardSpec& s : shards) {
    v1::BufferSpec* b = out->add_buffers();
    b->set_name(s.name);
    for (int i = 0; i < s.shape.ndim; ++i) b->add_shape(s.shape.d[i]);
    for (const layout::Piece& p : s.pieces) {
      v1::Piece* q = b->add_pieces();
      q->set_tensor(spec.tensor(p.tensor).name);
      box(p.canonical, q->mutable_canonical());
      box(p.shard, q->mutable_shard());
    }
  }
}

absl::StatusOr<layout::TensorSpec> FromProto(const v1::CanonicalTensor& t, const std::string& model_id) {
  const std::string field = absl::StrCat("model '", model_id, "' tensor '", t.name(), "'");
  auto shape = ShapeOf(t.shape(), field);
  if (!shape.ok()) return shape.status();
  auto dt = DTypeFromProto(t.dtype(), field);
  if (!dt.ok()) return dt.status();
  return layout::TensorSpec{t.name(), *shape, *dt, t.scales_of()};
}

absl::StatusOr<core::LoraAdapterArg> FromProto(const v1::LoraAdapter& l, const std::string& model_id) {
  const std::string field = absl::StrCat("model '", model_id, "' LoRA adapter on '", l.base_tensor(), "'");
  auto convention = LoraConventionFromProto(l.convention(), field);
  if (!convention.ok()) return convention.status();
  if (!std::isfinite(l.scaling())) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": scaling ", l.scaling(), " is not a finite number"));
  }
  return core::LoraAdapterArg{l.base_tensor(), l.a_tensor(), l.b_tensor(), l.rank(), l.scaling(), *convention};
}

absl::StatusOr<core::RegisterModelArgs> FromProto(const v1::RegisterModelRequest& in) {
  core::RegisterModelArgs a;
  a.session_id = in.session_id();
  a.model_id = in.model_id();
  for (const auto& t : in.tensors()) {
    auto spec = FromProto(t, in.model_id());
    if (!spec.ok()) return spec.status();
    a.tensors.push_back(*std::move(spec));
  }
  if (in.has_config()) {
    const v1::ModelConfig& c = in.config();
    a.has_config = true;
    a.config.family = c.family();
    a.config.hidden_size = c.hidden_size();
    a.config.num_attention_heads = c.num_attention_heads();
    a.config.num_key_value_heads = c.num_key_value_heads();
    a.config.head_dim = c.head_dim();
    a.config.intermediate_size = c.intermediate_size();
    a.config.vocab_size = c.vocab_size();
    a.config.num_hidden_layers = c.num_hidden_layers();
    a.config.tie_word_embeddings = c.tie_word_embeddings();
    a.config.attention_bias = c.attention_bias();
    a.config.qk_norm = c.qk_norm();
    a.config.num_experts = c.num_experts();
    a.config.moe_intermediate_size = c.moe_intermediate_size();
    a.config.shared_expert_intermediate_size = c.shared_expert_intermediate_size();
    a.config.decoder_sparse_step = c.decoder_sparse_step() > 0 ? c.decoder_sparse_step() : 1;
    a.config.mlp_only_layers.assign(c.mlp_only_layers().begin(), c.mlp_only_layers().end());
    a.config.q_lora_rank = c.q_lora_rank();
    a.config.kv_lora_rank = c.kv_lora_rank();
    a.config.qk_nope_head_dim = c.qk_nope_head_dim();
    a.config.qk_rope_head_dim = c.qk_rope_head_dim();
    a.config.v_head_dim = c.v_head_dim();
    a.config.first_k_dense_replace = c.first_k_dense_replace();
    a.config.moe_layer_freq = c.moe_layer_freq();
    a.config.num_shared_experts = c.num_shared_experts();
    a.config.n_group = c.n_group();
    a.config.router_bias = c.router_bias();
  }
  for (const auto& l : in.lora_adapters()) {
    auto ad = FromProto(l, in.model_id());
    if (!ad.ok()) return ad.status();
    a.adapters.push_back(*std::move(ad));
  }
  auto scaling = Fp8ScalingFromProto(in.fp8_scaling(), absl::StrCat("model '", in.model_id(), "': fp8_scaling"));
  if (!scaling.ok()) return scaling.status();
  a.fp8_scales = *scaling;
  if (!a.fp8_scales && in.fp8_block_scales()) a.fp8_scales = layout::Fp8Scaling::kBlock;
  if (in.fp8_block_scales() && a.fp8_scales != layout::Fp8Scaling::kBlock) {
    return absl::InvalidArgumentError(absl::StrCat("model '", in.model_id(), "': fp8_block_scales asks for block "
                                                   "scales, fp8_scaling for ", layout::Fp8ScalingName(*a.fp8_scales)));
  }
  return a;
}

absl::StatusOr<core::RegisterShardsArgs> FromProto(const v1::RegisterShardsRequest& in) {
  core::RegisterShardsArgs a;
  a.session_id = in.session_id();
  a.model_id = in.model_id();
  const std::string where = absl::StrCat("model '", in.model_id(), "'");
  auto role = RoleFromProto(in.role(), where);
  if (!role.ok()) return role.status();
  a.role = *role;
  a.replica_id = in.replica_id();
  a.rank = FromProto(in.rank());
  a.recipe = in.recipe().name();
  for (const auto& [k, v] : in.recipe().options()) a.recipe_options[k] = v;
  auto mode = UpdateModeFromProto(in.update_mode(), where);
  if (!mode.ok()) return mode.status();
  a.mode = *mode;
  a.coordinator = in.coordinator();
  for (const auto& b : in.buffers()) {
    const std::string field = absl::StrCat("model '", in.model_id(), "' buffer '", b.name(), "'");
    core::BufferArg buf;
    buf.name = b.name();
    if (b.memory().has_host_shm()) {
      buf.memory = core::BufferArg::Memory::kHostShm;
      buf.shm_name = b.memory().host_shm().name();
    } else if (b.memory().has_cuda_ipc()) {
      buf.memory = core::BufferArg::Memory::kCudaIpc;
      buf.cuda_handle = b.memory().cuda_ipc().ipc_handle();
      buf.device_uuid = b.memory().cuda_ipc().device_uuid();
      buf.event_handle = b.memory().cuda_ipc().event_handle();
    } else {
      return absl::InvalidArgumentError(absl::StrCat(field, ": memory names neither host_shm nor cuda_ipc"));
    }
    buf.offset = b.memory().offset();
    buf.nbytes = b.memory().nbytes();
    auto shape = ShapeOf(b.shape(), field);
    if (!shape.ok()) return shape.status();
    buf.shape = *shape;
    buf.strides.assign(b.strides().begin(), b.strides().end());
    auto dt = DTypeFromProto(b.dtype(), field);
    if (!dt.ok()) return dt.status();
    buf.dtype = *dt;
    for (const auto& p : b.pieces()) {
      auto c = BoxOf(p.canonical(), field + " piece of '" + p.tensor() + "' canonical");
      if (!c.ok()) return c.status();
      auto s = BoxOf(p.shard(), field + " piece of '" + p.tensor() + "' shard");
      if (!s.ok()) return s.status();
      buf.pieces.push_back({p.tensor(), *c, *s});
    }
    a.buffers.push_back(std::move(buf));
  }
  return a;
}

absl::StatusOr<core::SyncArgs> FromProto(const v1::SyncRequest& in) {
  core::SyncArgs a;
  a.model_id = in.model_id();
  a.version = in.version();
  auto lora = LoraModeFromProto(in.lora().mode(), absl::StrCat("model '", in.model_id(), "' sync"));
  if (!lora.ok()) return lora.status();
  a.lora = *lora;
  a.lora_bases.assign(in.lora().base_tensors().begin(), in.lora().base_tensors().end());
  a.replicas.assign(in.target_replicas().begin(), in.target_replicas().end());
  a.deadline_ms = in.deadline_ms();
  a.max_bucket_bytes = in.max_bucket_bytes();
  if (a.max_bucket_bytes != 0 && a.max_bucket_bytes < 4096) {
    return absl::InvalidArgumentError("max_bucket_bytes must be 0 (default) or >= 4096");
  }
  return a;
}

void ToProto(const core::Progress& in, v1::ProgressUpdate* out) {
  out->set_phase(PhaseOf(in.phase));
  out->set_bytes_done(in.bytes_done);
  out->set_bytes_total(in.bytes_total);
  out->set_buckets_done(in.buckets_done);
  out->set_buckets_total(in.buckets_total);
  out->set_rate_bytes_per_s(in.rate_bytes_per_s);
}

void ToProto(const core::SyncOutcome& in, v1::SyncResult* out) {
  out->set_model_id(in.model_id);
  out->set_version(in.version);
  out->set_digest(in.digest);
  out->set_bytes(in.bytes);
  out->set_buckets(in.buckets);
  out->set_plan_hash(in.plan_hash);
  out->set_path(in.path);
  out->set_fp8_pieces(in.fp8_pieces);
  out->set_fp8_assembled(in.fp8_assembled);
  auto* t = out->mutable_timings();
  t->set_plan_ms(in.times.plan_ms);
  t->set_transfer_ms(in.times.transfer_ms);
  t->set_verify_ms(in.times.verify_ms);
  t->set_commit_ms(in.times.commit_ms);
  t->set_total_ms(in.times.total_ms);
  for (const auto& r : in.replicas) out->add_replicas(r);
}

void ToProto(const core::Event& in, v1::AttachEvent* out) {
  switch (in.kind) {
    case core::Event::Kind::kPause: {
      auto* p = out->mutable_pause_requested();
      p->set_model_id(in.model_id);
      p->set_replica_id(in.replica_id);
      p->set_version(in.version);
      p->set_timeout_ms(in.timeout_ms);
      break;
    }
    case core::Event::Kind::kResume: {
      auto* p = out->mutable_resume();
      p->set_model_id(in.model_id);
      p->set_replica_id(in.replica_id);
      p->set_version(in.version);
      p->set_poisoned(in.poisoned);
      break;
    }
    case core::Event::Kind::kCommitted: {
      auto* p = out->mutable_version_committed();
      p->set_model_id(in.model_id);
      p->set_replica_id(in.replica_id);
      p->set_version(in.version);
      p->set_digest(in.digest);
      break;
    }
    case core::Event::Kind::kFailed: {
      auto* p = out->mutable_sync_failed();
      p->set_model_id(in.model_id);
      p->set_version(in.version);
      p->set_code(in.code);
      p->set_message(in.message);
      break;
    }
  }
}

void ToProto(const core::DaemonStatus& in, v1::GetStatusResponse* out) {
  out->Clear();
  out->set_daemon_id(in.daemon_id);
  out->set_version(in.version);
  out->set_build(in.build);
  out->set_uptime_s(in.uptime_s);
  out->set_pid(in.pid);
  out->set_serving(in.serving);
  for (const core::EndpointInfo& e : in.endpoints) {
    v1::Endpoint* p = out->add_endpoints();
    p->set_kind(e.kind);
    p->set_address(e.address);
    p->set_tls(e.tls);
  }
  for (const std::string& g : in.gpus) out->add_gpus(g);
  for (const core::ModelInfo& m : in.models) {
    v1::ModelStatus* p = out->add_models();
    p->set_model_id(m.model_id);
    p->set_num_tensors(m.num_tensors);
    p->set_total_bytes(m.total_bytes);
    p->set_fp8_weights(m.fp8_weights);
    p->set_fp8_scaling(ToProto(m.fp8_scaling));
    for (const core::RankInfo& r : m.ranks) {
      v1::RankStatus* rs = p->add_ranks();
      rs->set_role(r.role == core::Role::kSource ? v1::SOURCE : v1::TARGET);
      rs->set_replica_id(r.replica_id);
      ToProto(r.rank, rs->mutable_rank());
      rs->set_session_id(r.session_id);
      rs->set_client_name(r.client_name);
      rs->set_num_buffers(r.num_buffers);
      rs->set_bytes(r.bytes);
      rs->set_update_mode(ToProto(r.mode));
    }
    for (const core::ReplicaInfo& r : m.replicas) ToProto(r, p->add_replicas());
    if (m.has_last_sync) ToProto(m.last_sync, p->mutable_last_sync());
    p->set_last_error(m.last_error);
  }
  for (const core::JobInfo& j : in.jobs) {
    v1::JobStatus* p = out->add_jobs();
    p->set_job_id(j.job_id);
    p->set_model_id(j.model_id);
    p->set_version(j.version);
    ToProto(j.progress, p->mutable_progress());
    p->set_elapsed_ms(j.elapsed_ms);
  }
  for (const core::SessionInfo& s : in.sessions) {
    v1::SessionStatus* p = out->add_sessions();
    p->set_session_id(s.session_id);
    p->set_client_name(s.client_name);
    p->set_pid(s.pid);
    p->set_uid(s.uid);
    p->set_attached_ms(s.attached_ms);
  }
  for (const core::PeerInfo& x : in.peers) {
    v1::PeerStatus* p = out->add_peers();
    p->set_daemon_id(x.daemon_id);
    p->set_address(x.address);
    p->set_incarnation(x.incarnation);
    p->set_relation(x.relation);
    p->set_last_seen_ms(x.last_seen_ms);
    p->set_lost(x.lost);
  }
}

void ToProto(const std::vector<core::ModelInfo>& in, v1::ListModelsResponse* out) {
  out->Clear();
  for (const core::ModelInfo& m : in) {
    v1::ModelSummary* p = out->add_models();
    p->set_model_id(m.model_id);
    p->set_num_tensors(m.num_tensors);
    p->set_total_bytes(m.total_bytes);
    p->set_fp8_weights(m.fp8_weights);
    p->set_fp8_scaling(ToProto(m.fp8_scaling));
    int64_t sources = 0;
    for (const auto& r : m.ranks) sources += r.role == core::Role::kSource;
    p->set_num_source_ranks(sources);
    for (const core::ReplicaInfo& r : m.replicas) ToProto(r, p->add_replicas());
  }
}

}  // namespace wsync::service
