// Membership between daemons: joining coordinators, heartbeats, ranks
// announced to a model's coordinator, and dropping members that go silent.
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/common/build_info.h"
#include "daemon/core/core_impl.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::core::internal {

PeerMember CoreImpl::self() const {
  return {options_.daemon_id, PeerAddress(), options_.incarnation, Version(), nccl_};
}

bool CoreImpl::IsDistributed(const Model& m) const {
  if (!m.coordinator.empty()) return true;
  for (const auto& [k, r] : m.sources) {
    if (!r->daemon.empty()) return true;
  }
  for (const auto& [id, rep] : m.replicas) {
    for (const auto& [k, r] : rep.ranks) {
      if (!r->daemon.empty()) return true;
    }
  }
  return false;
}

std::pair<uint64_t, std::vector<Core::Member>> CoreImpl::Join(const Member& m) {
  wsync::MutexLock lock(&mu_);
  auto it = members_.find(m.daemon_id);
  if (it == members_.end() || it->second.incarnation != m.incarnation || it->second.address != m.address) {
    if (it != members_.end() && it->second.incarnation != m.incarnation) {
      DropDaemon(m.daemon_id, absl::StrCat("daemon '", m.daemon_id, "' restarted (incarnation ",
                                           it->second.incarnation, " -> ", m.incarnation, ")"));
    }
    ++epoch_;
    log_->info("peer '{}' at {} joined (incarnation {}), epoch {}", m.daemon_id, m.address, m.incarnation, epoch_);
  }
  members_[m.daemon_id] = m;
  last_seen_[m.daemon_id] = absl::Now();
  std::vector<Member> all;
  for (const auto& [id, mem] : members_) all.push_back(mem);
  return {epoch_, all};
}

bool CoreImpl::Heartbeat(const std::string& daemon_id, uint64_t incarnation) {
  wsync::MutexLock lock(&mu_);
  auto it = members_.find(daemon_id);
  if (it == members_.end() || it->second.incarnation != incarnation) return false;
  last_seen_[daemon_id] = absl::Now();
  return true;
}

void CoreImpl::DropDaemon(const std::string& daemon_id, const std::string& why) {
  for (auto& [id, job] : jobs_) {
    if (job->daemons.count(daemon_id) && job->abort_reason.empty()) {
      job->abort_reason = why;
      job->abort_code = absl::StatusCode::kAborted;
    }
  }
  for (auto& [mid, mp] : models_) {
    Model& m = *mp;
    if (m.running != nullptr && m.running->daemons.count(daemon_id)) continue;  // dropped when the job ends
    size_t dropped = 0;
    for (auto it = m.sources.begin(); it != m.sources.end();) {
      if (it->second->daemon == daemon_id) {
        it = m.sources.erase(it);
        ++dropped;
      } else {
        ++it;
      }
    }
    for (auto rit = m.replicas.begin(); rit != m.replicas.end();) {
      for (auto it = rit->second.ranks.begin(); it != rit->second.ranks.end();) {
        if (it->second->daemon == daemon_id) {
          it = rit->second.ranks.erase(it);
          ++dropped;
        } else {
          ++it;
        }
      }
      rit = rit->second.ranks.empty() ? m.replicas.erase(rit) : std::next(rit);
    }
    if (dropped) {
      m.generation++;
      log_->warn("model '{}': dropped {} rank(s) of daemon '{}': {}", m.id, dropped, daemon_id, why);
    }
  }
}

absl::Status CoreImpl::AcceptRanks(const RankAnnouncement& a) {
  {
    wsync::MutexLock lock(&mu_);
    auto it = members_.find(a.daemon_id);
    if (it == members_.end() || it->second.incarnation != a.incarnation) {
      return absl::FailedPreconditionError(absl::StrCat("daemon '", a.daemon_id, "' (incarnation ", a.incarnation,
                                                        ") is not a member of daemon '", options_.daemon_id,
                                                        "': join first"));
    }
  }
  RegisterModelArgs ma;
  ma.announced = true;
  ma.model_id = a.model_id;
  ma.tensors = a.tensors;
  ma.adapters = a.adapters;
  auto reg = RegisterModel(ma);
  if (!reg.ok()) {
    return absl::Status(reg.status().code(), absl::StrCat("rank announced by daemon '", a.daemon_id,
                                                          "': ", reg.status().message()));
  }
  wsync::MutexLock lock(&mu_);
  auto mit = models_.find(a.model_id);
  if (mit == models_.end()) return absl::NotFoundError(absl::StrCat("model '", a.model_id, "' went away"));
  Model& model = *mit->second;
  if (model.running != nullptr || model.part != nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("model '", a.model_id,
                                                      "' has a sync running; announce after it ends"));
  }
  auto rank = std::make_unique<RankReg>();
  rank->daemon = a.daemon_id;
  rank->session_id = absl::StrCat("peer:", a.daemon_id);
  rank->role = a.role;
  rank->replica_id = a.role == Role::kTarget ? a.replica_id : "";
  rank->coords = a.rank;
  rank->recipe = a.recipe;
  rank->gpu_uuid = a.gpu_uuid;
  const std::string who = absl::StrCat("model '", a.model_id, "' ", rank->Label(), " of daemon '", a.daemon_id, "'");
  for (layout::ShardSpec s : a.shards) {
    for (layout::Piece& p : s.pieces) {
      p.tensor = p.tensor >= 0 && p.tensor < static_cast<int32_t>(a.tensors.size())
                     ? model.spec.Find(a.tensors[p.tensor].name)
                     : -1;
      if (p.tensor < 0) return absl::InvalidArgumentError(absl::StrCat(who, ": a piece names an unknown tensor"));
    }
    if (absl::Status st = layout::ValidateShard(model.spec, s); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(who, ": ", st.message()));
    }
    rank->bytes += s.shape.NumElements() * kernels::DTypeSize(s.dtype);
    rank->shards.push_back(std::move(s));
  }
  rank->live.resize(rank->shards.size(), nullptr);
  rank->strides.resize(rank->shards.size());
  rank->staging.resize(rank->shards.size());
  rank->base.resize(rank->shards.size());
  if (absl::Status st = StoreRank(model, std::move(rank), a.mode, who); !st.ok()) return st;
  model.generation++;
  log_->info("{} announced: {} buffers", who, a.shards.size());
  return absl::OkStatus();
}

absl::Status CoreImpl::WithdrawRanks(const std::string& daemon_id, const std::string& model_id, Role role,
                                     const std::string& replica_id, const layout::RankCoords& rank) {
  wsync::MutexLock lock(&mu_);
  auto mit = models_.find(model_id);
  if (mit == models_.end()) return absl::OkStatus();
  Model& m = *mit->second;
  const std::string key = CoordsKey(rank);
  auto drop = [&](std::map<std::string, std::unique_ptr<RankReg>>& ranks) {
    auto it = ranks.find(key);
    if (it != ranks.end() && it->second->daemon == daemon_id) {
      ranks.erase(it);
      m.generation++;
      log_->info("model '{}': daemon '{}' withdrew {} rank {}", model_id, daemon_id, RoleName(role), rank.ToString());
    }
  };
  if (m.running != nullptr && m.running->daemons.count(daemon_id)) {
    return absl::FailedPreconditionError(absl::StrCat("model '", model_id, "' has a sync running"));
  }
  if (role == Role::kSource) {
    drop(m.sources);
  } else if (auto rit = m.replicas.find(replica_id); rit != m.replicas.end()) {
    drop(rit->second.ranks);
    if (rit->second.ranks.empty()) m.replicas.erase(rit);
  }
  return absl::OkStatus();
}

RankAnnouncement CoreImpl::MakeAnnouncement(const Model& m, const RankReg& r, UpdateMode mode) const {
  RankAnnouncement a;
  a.daemon_id = options_.daemon_id;
  a.incarnation = options_.incarnation;
  a.model_id = m.id;
  a.tensors = m.spec.tensors();
  for (const auto& [base, ad] : m.adapters) {
    a.adapters.push_back({m.spec.tensor(base).name, m.spec.tensor(ad.a).name, m.spec.tensor(ad.b).name, ad.rank,
                          ad.scaling, ad.convention});
  }
  a.role = r.role;
  a.replica_id = r.replica_id;
  a.rank = r.coords;
  a.recipe = r.recipe;
  a.mode = mode;
  a.shards = r.shards;
  a.gpu_uuid = GpuOf(r);
  return a;
}

std::vector<RankAnnouncement> CoreImpl::LocalAnnouncements(const std::string& address) {
  wsync::MutexLock lock(&mu_);
  std::vector<RankAnnouncement> out;
  for (const auto& [mid, mp] : models_) {
    const Model& m = *mp;
    if (m.coordinator != address) continue;
    for (const auto& [k, r] : m.sources) {
      if (r->daemon.empty()) out.push_back(MakeAnnouncement(m, *r, UpdateMode::kStaged));
    }
    for (const auto& [id, rep] : m.replicas) {
      for (const auto& [k, r] : rep.ranks) {
        if (r->daemon.empty()) out.push_back(MakeAnnouncement(m, *r, rep.mode));
      }
    }
  }
  return out;
}

void CoreImpl::RecordJoin(const std::string& address, const PeerLink::Joined& j) {
  wsync::MutexLock lock(&mu_);
  Upstream& u = upstream_[address];
  u.daemon_id = j.daemon_id;
  u.last_ok = absl::Now();
  u.lost = false;
}

absl::Status CoreImpl::AnnounceRank(const std::string& coordinator, const std::string& model_id, Role role,
                                    const std::string& replica_id, const layout::RankCoords& rank) {
  bool joined = false;
  std::optional<RankAnnouncement> ann;
  {
    wsync::MutexLock lock(&mu_);
    auto it = upstream_.find(coordinator);
    joined = it != upstream_.end() && !it->second.daemon_id.empty() && !it->second.lost;
    auto mit = models_.find(model_id);
    if (mit != models_.end()) {
      const Model& m = *mit->second;
      const std::string key = CoordsKey(rank);
      if (role == Role::kSource) {
        if (auto r = m.sources.find(key); r != m.sources.end()) ann = MakeAnnouncement(m, *r->second, UpdateMode::kStaged);
      } else if (auto rep = m.replicas.find(replica_id); rep != m.replicas.end()) {
        if (auto r = rep->second.ranks.find(key); r != rep->second.ranks.end()) {
          ann = MakeAnnouncement(m, *r->second, rep->second.mode);
        }
      }
    }
  }
  if (!ann.has_value()) {
    return absl::NotFoundError(absl::StrCat("model '", model_id, "' ", RoleName(role), " ", rank.ToString(),
                                            " went away before it could be announced"));
  }
  auto join = [&]() -> absl::Status {
    auto j = options_.peers->Join(coordinator, self());
    if (!j.ok()) return j.status();
    RecordJoin(coordinator, *j);
    log_->info("joined coordinator '{}' at {} ({} members)", j->daemon_id, coordinator, j->members.size());
    return absl::OkStatus();
  };
  if (!joined) {
    WSYNC_RETURN_IF_ERROR(join());
  }
  absl::Status s = options_.peers->Announce(coordinator, *ann);
  if (s.code() == absl::StatusCode::kFailedPrecondition && absl::StrContains(s.message(), "join first")) {
    if (absl::Status j = join(); !j.ok()) return j;  // the coordinator restarted since we joined
    s = options_.peers->Announce(coordinator, *ann);
  }
  return s;
}

std::string CoreImpl::PeerAddress() const {
  wsync::MutexLock lock(&addr_mu_);
  return peer_address_;
}

void CoreImpl::StartCluster(const std::string& peer_address) {
  {
    wsync::MutexLock lock(&addr_mu_);
    peer_address_ = peer_address;
  }
  if (options_.peers == nullptr) return;
  wsync::MutexLock lock(&mu_);
  for (const std::string& addr : options_.join) upstream_.try_emplace(addr);
  if (cluster_thread_.joinable()) return;
  cluster_thread_ = std::thread([this] { ClusterLoop(); });
  watchdog_thread_ = std::thread([this] { WatchdogLoop(); });
}

void CoreImpl::WatchdogLoop() {
  wsync::MutexLock lock(&mu_);
  auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cluster_stop_; };
  while (!mu_.AwaitWithTimeout(absl::Condition(&stop), absl::Milliseconds(100))) {
    const absl::Time now = absl::Now();
    for (auto& [id, part] : parts_) {
      if (!part->state.decided() && !part->watchdog_fired && part->comm != nullptr && now > part->deadline) {
        part->watchdog_fired = true;
        if (options_.metrics != nullptr) options_.metrics->Add("wsync_watchdog_aborts_total", {}, 1);
        const std::string why = absl::StrCat("watchdog: job ", id, " of model '", part->plan.model_id,
                                             "' passed its deadline with its transfer still running");
        log_->warn("{}; aborting its communicator", why);
        part->comm->Abort(why);
      }
    }
  }
}

void CoreImpl::ClusterLoop() {
  const absl::Duration period = absl::Milliseconds(options_.heartbeat_ms);
  const absl::Duration timeout = absl::Milliseconds(options_.peer_timeout_ms);
  while (true) {
    std::map<std::string, Upstream> ups;
    std::vector<Withdrawal> withdrawals;
    {
      wsync::MutexLock lock(&mu_);
      auto stop = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cluster_stop_; };
      mu_.AwaitWithTimeout(absl::Condition(&stop), period);
      if (cluster_stop_) return;
      ReapParts();
      // Members that went silent.
      const absl::Time now = absl::Now();
      for (auto it = members_.begin(); it != members_.end();) {
        auto seen = last_seen_.find(it->first);
        if (seen != last_seen_.end() && now - seen->second > timeout) {
          const std::string why = absl::StrCat("daemon '", it->first, "' at ", it->second.address,
                                               " missed heartbeats for ", absl::FormatDuration(now - seen->second),
                                               " (peer timeout ", options_.peer_timeout_ms, " ms)");
          log_->warn("{}: removed from the membership", why);
          DropDaemon(it->first, why);
          last_seen_.erase(seen);
          it = members_.erase(it);
          ++epoch_;
        } else {
          ++it;
        }
      }
      ups = upstream_;
      withdrawals.swap(withdrawals_);
    }
    for (const Withdrawal& w : withdrawals) {
      absl::Status s = options_.peers->Withdraw(w.coordinator, options_.daemon_id, w.model_id, w.role, w.replica_id,
                                                w.rank);
      if (!s.ok()) log_->warn("could not withdraw a rank of model '{}' from {}: {}", w.model_id, w.coordinator,
                              s.ToString());
    }
    for (const auto& [addr, u] : ups) {
      bool rejoin = u.daemon_id.empty();
      if (!rejoin) {
        auto hb = options_.peers->Heartbeat(addr, options_.daemon_id, options_.incarnation);
        if (hb.ok()) {
          rejoin = *hb;
          wsync::MutexLock lock(&mu_);
          upstream_[addr].last_ok = absl::Now();
          if (upstream_[addr].lost) log_->info("coordinator at {} answers again", addr);
          upstream_[addr].lost = false;
        } else {
          wsync::MutexLock lock(&mu_);
          Upstream& x = upstream_[addr];
          if (!x.lost && absl::Now() - x.last_ok > timeout) {
            x.lost = true;
            const std::string why = absl::StrCat("coordinator '", x.daemon_id, "' at ", addr,
                                                 " stopped answering heartbeats (", hb.status().message(), ")");
            log_->warn("{}", why);
            for (auto& [id, p] : parts_) {
              if (p->plan.coordinator_address == addr && p->state.Decide(Part::Decision::kAbort)) {
                p->abort_reason = why;
                if (p->job->abort_reason.empty()) {
                  p->job->abort_reason = why;
                  p->job->abort_code = absl::StatusCode::kAborted;
                }
                if (p->comm != nullptr) p->comm->Abort(why);
              }
            }
          }
        }
      }
      if (!rejoin) continue;
      auto j = options_.peers->Join(addr, self());
      if (!j.ok()) continue;
      RecordJoin(addr, *j);
      std::vector<RankAnnouncement> anns = LocalAnnouncements(addr);
      log_->info("joined coordinator '{}' at {}; announcing {} rank(s)", j->daemon_id, addr, anns.size());
      for (const RankAnnouncement& a : anns) {
        absl::Status s = options_.peers->Announce(addr, a);
        if (!s.ok()) log_->warn("announcing a rank of model '{}' to {} failed: {}", a.model_id, addr, s.ToString());
      }
    }
  }
}

}  // namespace wsync::core::internal
