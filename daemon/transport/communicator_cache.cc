#include "daemon/transport/communicator_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/common/mutex.h"

namespace wsync::transport {

std::string CommunicatorCache::Key(const std::string& kind, uint64_t epoch, const std::vector<std::string>& members) {
  return absl::StrCat(kind, "|", epoch, "|", absl::StrJoin(members, ","));
}

absl::StatusOr<std::unique_ptr<Communicator>> CommunicatorCache::Take(const std::string& kind, uint64_t epoch,
                                                                      const std::vector<std::string>& members,
                                                                      const std::string& self) {
  auto it = std::find(members.begin(), members.end(), self);
  if (it == members.end()) {
    return absl::InvalidArgumentError(absl::StrCat("daemon '", self, "' is not a member of group ",
                                                   Key(kind, epoch, members)));
  }
  const std::string key = Key(kind, epoch, members);
  {
    wsync::MutexLock lock(&mu_);
    auto found = idle_.find(key);
    if (found != idle_.end()) {
      std::unique_ptr<Communicator> c = std::move(found->second);
      idle_.erase(found);
      if (c->error().ok()) return c;
    }
  }
  return factory_(members, static_cast<int>(it - members.begin()), key);
}

void CommunicatorCache::Put(const std::string& key, std::unique_ptr<Communicator> comm) {
  if (comm == nullptr || !comm->error().ok()) return;  // errored: never reused
  wsync::MutexLock lock(&mu_);
  idle_[key] = std::move(comm);
}

size_t CommunicatorCache::size() const {
  wsync::MutexLock lock(&mu_);
  return idle_.size();
}

}  // namespace wsync::transport
