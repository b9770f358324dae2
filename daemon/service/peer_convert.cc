// wsync.v1 peer messages <-> daemon/core/peer.h.
#include "absl/strings/str_cat.h"
#include "daemon/service/convert.h"

namespace wsync::service {
namespace {

void BoxProto(const layout::Box& b, v1::Box* out) {
  for (int i = 0; i < b.ndim; ++i) {
    out->add_offsets(b.off[i]);
    out->add_sizes(b.size[i]);
  }
}

// The inverse: tensor names become indexes into `names` (appended when new).
absl::StatusOr<layout::ShardSpec> ShardFromProto(const v1::BufferSpec& b, std::vector<std::string>* names,
                                                 const std::string& where) {
  const std::string field = absl::StrCat(where, " buffer '", b.name(), "'");
  layout::ShardSpec s;
  s.name = b.name();
  auto shape = ShapeFromProto(b.shape(), field);
  if (!shape.ok()) return shape.status();
  s.shape = *shape;
  auto dt = DTypeFromProto(b.dtype(), field);
  if (!dt.ok()) return dt.status();
  s.dtype = *dt;
  for (const v1::Piece& p : b.pieces()) {
    auto c = FromProto(p.canonical(), field + " piece canonical");
    if (!c.ok()) return c.status();
    auto sh = FromProto(p.shard(), field + " piece shard");
    if (!sh.ok()) return sh.status();
    auto it = std::find(names->begin(), names->end(), p.tensor());
    if (it == names->end()) it = names->insert(names->end(), p.tensor());
    s.pieces.push_back({static_cast<int32_t>(it - names->begin()), *c, *sh});
  }
  return s;
}

void EndpointProto(const core::PlanEndpoint& e, const std::vector<std::string>& names, v1::PlanEndpoint* out) {
  out->set_daemon_id(e.daemon_id);
  out->set_role(ToProto(e.role));
  out->set_replica_id(e.replica_id);
  ToProto(e.rank, out->mutable_rank());
  out->set_update_mode(ToProto(e.mode));
  for (const auto& s : e.shards) ToProto(s, names, out->add_buffers());
  out->set_gpu_uuid(e.gpu_uuid);
}

absl::StatusOr<core::PlanEndpoint> EndpointFromProto(const v1::PlanEndpoint& in, std::vector<std::string>* names) {
  core::PlanEndpoint e;
  e.daemon_id = in.daemon_id();
  e.replica_id = in.replica_id();
  e.rank = FromProto(in.rank());
  const std::string where = absl::StrCat("plan endpoint on '", in.daemon_id(), "' ", e.rank.ToString());
  auto role = RoleFromProto(in.role(), where);
  if (!role.ok()) return role.status();
  e.role = *role;
  auto mode = UpdateModeFromProto(in.update_mode(), where);
  if (!mode.ok()) return mode.status();
  e.mode = *mode;
  e.gpu_uuid = in.gpu_uuid();
  for (const auto& b : in.buffers()) {
    auto s = ShardFromProto(b, names, where);
    if (!s.ok()) return s.status();
    e.shards.push_back(std::move(*s));
  }
  return e;
}

}  // namespace

void ToProto(const layout::ShardSpec& s, const std::vector<std::string>& names, v1::BufferSpec* out) {
  out->set_name(s.name);
  for (int i = 0; i < s.shape.ndim; ++i) out->add_shape(s.shape.d[i]);
  out->set_dtype(ToProto(s.dtype));
  for (const layout::Piece& p : s.pieces) {
    v1::Piece* q = out->add_pieces();
    q->set_tensor(p.tensor >= 0 && p.tensor < static_cast<int32_t>(names.size()) ? names[p.tensor] : "");
    BoxProto(p.canonical, q->mutable_canonical());
    BoxProto(p.shard, q->mutable_shard());
  }
}

void ToProto(const core::PeerMember& in, v1::Member* out) {
  out->set_daemon_id(in.daemon_id);
  out->set_address(in.address);
  out->set_incarnation(in.incarnation);
  out->set_version(in.version);
  out->set_nccl(in.nccl);
}

core::PeerMember FromProto(const v1::Member& in) {
  return {in.daemon_id(), in.address(), in.incarnation(), in.version(), in.nccl()};
}

void ToProto(const core::RankAnnouncement& in, v1::RankAnnouncement* out) {
  out->set_daemon_id(in.daemon_id);
  out->set_incarnation(in.incarnation);
  out->set_model_id(in.model_id);
  std::vector<std::string> names;
  for (const auto& t : in.tensors) {
    v1::CanonicalTensor* c = out->add_tensors();
    c->set_name(t.name);
    for (int i = 0; i < t.shape.ndim; ++i) c->add_shape(t.shape.d[i]);
    c->set_dtype(ToProto(t.dtype));
    c->set_scales_of(t.scales_of);
    names.push_back(t.name);
  }
  for (const auto& a : in.adapters) {
    v1::LoraAdapter* l = out->add_lora_adapters();
    l->set_base_tensor(a.base_tensor);
    l->set_a_tensor(a.a_tensor);
    l->set_b_tensor(a.b_tensor);
    l->set_rank(a.rank);
    l->set_scaling(a.scaling);
    l->set_convention(ToProto(a.convention));
  }
  out->set_role(ToProto(in.role));
  out->set_replica_id(in.replica_id);
  ToProto(in.rank, out->mutable_rank());
  out->set_recipe(in.recipe);
  out->set_update_mode(ToProto(in.mode));
  for (const auto& s : in.shards) ToProto(s, names, out->add_buffers());
  out->set_gpu_uuid(in.gpu_uuid);
}

absl::StatusOr<core::RankAnnouncement> FromProto(const v1::RankAnnouncement& in) {
  core::RankAnnouncement a;
  a.daemon_id = in.daemon_id();
  a.incarnation = in.incarnation();
  a.model_id = in.model_id();
  std::vector<std::string> names;
  for (const auto& t : in.tensors()) {
    auto spec = FromProto(t, in.model_id());
    if (!spec.ok()) return spec.status();
    a.tensors.push_back(*std::move(spec));
    names.push_back(t.name());
  }
  const std::string where = absl::StrCat("model '", in.model_id(), "' announced by '", in.daemon_id(), "'");
  for (const auto& l : in.lora_adapters()) {
    auto ad = FromProto(l, in.model_id());
    if (!ad.ok()) return ad.status();
    a.adapters.push_back(*std::move(ad));
  }
  auto role = RoleFromProto(in.role(), where);
  if (!role.ok()) return role.status();
  a.role = *role;
  a.replica_id = in.replica_id();
  a.rank = FromProto(in.rank());
  a.recipe = in.recipe();
  auto mode = UpdateModeFromProto(in.update_mode(), where);
  if (!mode.ok()) return mode.status();
  a.mode = *mode;
  a.gpu_uuid = in.gpu_uuid();
  const size_t known = names.size();
  for (const auto& b : in.buffers()) {
    auto s = ShardFromProto(b, &names, absl::StrCat("model '", in.model_id(), "' announced by '", in.daemon_id(), "'"));
    if (!s.ok()) return s.status();
    a.shards.push_back(std::move(*s));
  }
  if (names.size() != known) {
    return absl::InvalidArgumentError(absl::StrCat("model '", in.model_id(), "' announced by '", in.daemon_id(),
                                                   "': a piece names tensor '", names[known],
                                                   "', which the announcement does not list"));
  }
  return a;
}

void ToProto(const core::PlanPart& in, v1::PlanPart* out) {
  out->set_job_id(in.job_id);
  out->set_model_id(in.model_id);
  out->set_version(in.version);
  out->set_plan_hash(in.plan_hash);
  out->mutable_lora()->set_mode(ToProto(in.lora));
  for (const auto& b : in.lora_bases) out->mutable_lora()->add_base_tensors(b);
  out->set_bucket_bytes(in.bucket_bytes);
  out->set_transport(in.transport == core::WireTransport::kNccl ? "nccl" : "gloo");
  out->set_deadline_unix_ms(in.deadline_unix_ms);
  out->mutable_coordinator()->set_daemon_id(in.coordinator_id);
  out->mutable_coordinator()->set_address(in.coordinator_address);
  for (const auto& m : in.members) ToProto(m, out->add_members());
  out->set_comm_key(in.comm_key);
  for (const auto& e : in.sources) EndpointProto(e, in.tensor_names, out->add_sources());
  for (const auto& g : in.replica_groups) {
    v1::ReplicaGroup* rg = out->add_replica_groups();
    for (const auto& r : g) rg->add_replica_ids(r);
  }
  for (const auto& e : in.targets) EndpointProto(e, in.tensor_names, out->add_targets());
}

absl::StatusOr<core::PlanPart> FromProto(const v1::PlanPart& in) {
  core::PlanPart p;
  p.job_id = in.job_id();
  p.model_id = in.model_id();
  p.version = in.version();
  p.plan_hash = in.plan_hash();
  auto lora = LoraModeFromProto(in.lora().mode(), absl::StrCat("plan of job '", in.job_id(), "'"));
  if (!lora.ok()) return lora.status();
  p.lora = *lora;
  p.lora_bases.assign(in.lora().base_tensors().begin(), in.lora().base_tensors().end());
  if (in.transport() == "nccl") {
    p.transport = core::WireTransport::kNccl;
  } else if (in.transport() != "gloo") {
    return absl::InvalidArgumentError(absl::StrCat("plan of job '", in.job_id(), "': transport '",
                                                   in.transport().substr(0, 32), "' is unknown (expected gloo or nccl)"));
  }
  p.bucket_bytes = in.bucket_bytes();
  p.deadline_unix_ms = in.deadline_unix_ms();
  p.coordinator_id = in.coordinator().daemon_id();
  p.coordinator_address = in.coordinator().address();
  for (const auto& m : in.members()) p.members.push_back(FromProto(m));
  p.comm_key = in.comm_key();
  for (const auto& e : in.sources()) {
    auto x = EndpointFromProto(e, &p.tensor_names);
    if (!x.ok()) return x.status();
    p.sources.push_back(std::move(*x));
  }
  for (const auto& g : in.replica_groups()) p.replica_groups.emplace_back(g.replica_ids().begin(), g.replica_ids().end());
  for (const auto& e : in.targets()) {
    auto x = EndpointFromProto(e, &p.tensor_names);
    if (!x.ok()) return x.status();
    p.targets.push_back(std::move(*x));
  }
  return p;
}

void ToProto(const core::PrepareResult& in, v1::PrepareResponse* out) {
  out->set_ready(in.ready);
  out->set_error_code(static_cast<int32_t>(in.error.code()));
  out->set_error(std::string(in.error.message()));
  out->set_bytes_sent(in.bytes_sent);
  out->set_bytes_received(in.bytes_received);
  for (const auto& s : in.sums) {
    v1::BucketDigest* d = out->add_digests();
    d->set_index(s.bucket);
    d->set_replica_id(s.replica_id);
    d->set_s1(s.s1);
    d->set_s2(s.s2);
    d->set_w1(s.w1);
    d->set_w2(s.w2);
    d->set_written_words(s.written_words);
  }
}

core::PrepareResult FromProto(const v1::PrepareResponse& in) {
  core::PrepareResult r;
  r.ready = in.ready();
  r.error = absl::Status(static_cast<absl::StatusCode>(in.error_code()), in.error());
  r.bytes_sent = in.bytes_sent();
  r.bytes_received = in.bytes_received();
  for (const auto& d : in.digests()) {
    r.sums.push_back({d.index(), d.replica_id(), d.s1(), d.s2(), d.w1(), d.w2(), d.written_words()});
  }
  return r;
}

}  // namespace wsync::service
