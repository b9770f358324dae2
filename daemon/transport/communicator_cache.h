#ifndef WSYNC_DAEMON_TRANSPORT_COMMUNICATOR_CACHE_H_
#define WSYNC_DAEMON_TRANSPORT_COMMUNICATOR_CACHE_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "daemon/transport/communicator.h"
#include "daemon/common/mutex.h"

namespace wsync::transport {

// Communicators reused across syncs, keyed by membership: the transport kind
// and the ordered member list (daemon ids in rank order) and the membership
// epoch. A communicator that reported an error is dropped and rebuilt on the
// next Get, never reused. Thread-safe; a communicator handed out is used by
// one sync at a time (the cache does not lend it twice concurrently).
class CommunicatorCache {
 public:
  // Builds a communicator for `members` in which this daemon has `rank`.
  using Factory = std::function<absl::StatusOr<std::unique_ptr<Communicator>>(
      const std::vector<std::string>& members, int rank, const std::string& key)>;

  explicit CommunicatorCache(Factory factory) : factory_(std::move(factory)) {}

  // The group key: "kind|epoch|a,b,c". Members are in rank order, which
  // every daemon derives the same way from the plan, so every member
  // computes the same key and the same ranks.
  static std::string Key(const std::string& kind, uint64_t epoch, const std::vector<std::string>& members);

  // A healthy communicator for the group, built on first use. The caller
  // returns it with Put when the sync ends.
  absl::StatusOr<std::unique_ptr<Communicator>> Take(const std::string& kind, uint64_t epoch,
                                                     const std::vector<std::string>& members,
                                                     const std::string& self);
  // Returns a communicator; an errored one is destroyed instead of kept.
  void Put(const std::string& key, std::unique_ptr<Communicator> comm);

  size_t size() const;

 private:
  Factory factory_;
  mutable wsync::Mutex mu_;
  std::map<std::string, std::unique_ptr<Communicator>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace wsync::transport

#endif  // WSYNC_DAEMON_TRANSPORT_COMMUNICATOR_CACHE_H_
