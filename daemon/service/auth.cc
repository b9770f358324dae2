#include "daemon/service/auth.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "daemon/common/mutex.h"

namespace wsync::service {
namespace {

// Whether `uid` (with primary group `gid`) is in group `admin_gid`, its
// supplementary groups included.
bool InGroup(int64_t uid, int64_t gid, gid_t admin_gid) {
  if (gid >= 0 && static_cast<gid_t>(gid) == admin_gid) return true;
  std::vector<char> buf(16384);
  passwd pw{};
  passwd* found = nullptr;
  if (getpwuid_r(static_cast<uid_t>(uid), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    return false;
  }
  int n = 64;
  std::vector<gid_t> groups(n);
  if (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) {
    groups.resize(n);
    if (getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) < 0) return false;
  }
  groups.resize(n);
  return std::find(groups.begin(), groups.end(), admin_gid) != groups.end();
}

class AuthenticatorImpl final : public Authenticator {
 public:
  AuthenticatorImpl(const Options& o, CredLookup lookup, std::optional<gid_t> admin_gid)
      : options_(o), lookup_(std::move(lookup)), admin_gid_(admin_gid), daemon_uid_(geteuid()) {}

  core::Caller Identify(const grpc::ServerContext& ctx) const override {
    if (auto cred = lookup_(ctx.peer()); cred.has_value()) {
      if (cred->uid < 0) return core::Caller::Anonymous(false);  // SO_PEERCRED failed: trust nothing
      const bool admin = cred->uid == static_cast<int64_t>(daemon_uid_) || IsAdminMember(cred->uid, cred->gid);
      return core::Caller::Local(cred->uid, cred->gid, cred->pid, admin);
    }
    if (std::string name = CertificateName(ctx); !name.empty()) return core::Caller::Certificate(name);
    return core::Caller::Anonymous(options_.anonymous_writes);
  }

  absl::Status CheckPeer(const grpc::ServerContext& ctx) const override {
    if (lookup_(ctx.peer()).has_value()) {
      return absl::PermissionDeniedError(
          "the peer service is for other daemons over TCP; it is not served on the local socket");
    }
    auto auth = ctx.auth_context();
    if (auth != nullptr && auth->IsPeerAuthenticated()) {
      std::vector<std::string> names = Names(ctx);
      for (const std::string& n : names) {
        if (std::find(options_.peer_identities.begin(), options_.peer_identities.end(), n) !=
            options_.peer_identities.end()) {
          return absl::OkStatus();
        }
      }
      return absl::PermissionDeniedError(absl::StrCat(
          "certificate [", absl::StrJoin(names, ", "), "] is not a peer daemon's (--peer-identities: ",
          options_.peer_identities.empty() ? std::string("none") : absl::StrJoin(options_.peer_identities, ", "),
          ")"));
    }
    if (options_.insecure_peers) return absl::OkStatus();
    return absl::PermissionDeniedError(
        "the peer service needs an mTLS client certificate of a peer daemon (--peer-identities)");
  }

 private:
  // Membership of --admin-group, looked up in the user and group databases
  // at most once a minute per (uid, gid), not on every call.
  bool IsAdminMember(int64_t uid, int64_t gid) const {
    if (!admin_gid_.has_value()) return false;
    const absl::Time now = absl::Now();
    MutexLock lock(&mu_);
    auto it = admin_cache_.find({uid, gid});
    if (it != admin_cache_.end() && now - it->second.second < absl::Minutes(1)) return it->second.first;
    const bool member = InGroup(uid, gid, *admin_gid_);
    admin_cache_[{uid, gid}] = {member, now};
    return member;
  }

  // Every name of the verified client certificate: CN first, then SANs.
  static std::vector<std::string> Names(const grpc::ServerContext& ctx) {
    std::vector<std::string> out;
    auto auth = ctx.auth_context();
    if (auth == nullptr || !auth->IsPeerAuthenticated()) return out;
    for (const char* prop : {"x509_common_name", "x509_subject_alternative_name"}) {
      for (const auto& v : auth->FindPropertyValues(prop)) out.emplace_back(v.data(), v.size());
    }
    return out;
  }
  static std::string CertificateName(const grpc::ServerContext& ctx) {
    std::vector<std::string> n = Names(ctx);
    return n.empty() ? "" : n[0];
  }

  const Options options_;
  const CredLookup lookup_;
  const std::optional<gid_t> admin_gid_;
  const uid_t daemon_uid_;
  mutable Mutex mu_;
  mutable std::map<std::pair<int64_t, int64_t>, std::pair<bool, absl::Time>> admin_cache_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const Options& options, CredLookup lookup) {
  std::optional<gid_t> admin_gid;
  if (!options.admin_group.empty()) {
    uint32_t numeric = 0;
    if (absl::SimpleAtoi(options.admin_group, &numeric)) {
      admin_gid = numeric;
    } else {
      std::vector<char> buf(16384);
      group gr{};
      group* found = nullptr;
      if (getgrnam_r(options.admin_group.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("--admin-group '", options.admin_group, "' is not a group on this host"));
      }
      admin_gid = gr.gr_gid;
    }
  }
  return std::unique_ptr<Authenticator>(new AuthenticatorImpl(options, std::move(lookup), admin_gid));
}

}  // namespace wsync::service
