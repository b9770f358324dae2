#include "daemon/transport/communicator_cache.h"

#include <catch2/catch.hpp>

namespace wsync::transport {
namespace {

// A communicator whose error the test controls.
class FakeComm : public Communicator {
 public:
  explicit FakeComm(int rank) : rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return 3; }
  absl::Status Exchange(const std::vector<P2P>&) override { return error_; }
  absl::Status Broadcast(void*, size_t, int) override { return error_; }
  absl::Status error() const override { return error_; }
  void Abort(const std::string& why) override { error_ = absl::AbortedError(why); }
  absl::Status error_;
  int rank_;
};

TEST_CASE("communicators are reused per membership, and errored ones are rebuilt") {
  int built = 0;
  CommunicatorCache cache([&](const std::vector<std::string>&, int rank, const std::string&) {
    ++built;
    return absl::StatusOr<std::unique_ptr<Communicator>>(std::make_unique<FakeComm>(rank));
  });
  const std::vector<std::string> members = {"node-a", "node-b", "node-c"};
  auto c = cache.Take("gloo", 1, members, "node-b");
  REQUIRE(c.ok());
  CHECK((*c)->rank() == 1);
  const std::string key = CommunicatorCache::Key("gloo", 1, members);
  CHECK(key == "gloo|1|node-a,node-b,node-c");
  cache.Put(key, std::move(*c));
  CHECK(cache.size() == 1);
  auto again = cache.Take("gloo", 1, members, "node-b");
  CHECK(built == 1);  // reused
  static_cast<FakeComm*>(again->get())->error_ = absl::UnavailableError("peer gone");
  cache.Put(key, std::move(*again));
  CHECK(cache.size() == 0);  // an errored communicator is dropped
  auto fresh = cache.Take("gloo", 1, members, "node-b");
  CHECK(built == 2);
  // A new epoch (membership changed) is a different group.
  auto other = cache.Take("gloo", 2, members, "node-b");
  CHECK(built == 3);
  auto outsider = cache.Take("gloo", 1, members, "node-z");
  CHECK(outsider.status().message() == "daemon 'node-z' is not a member of group gloo|1|node-a,node-b,node-c");
}

}  // namespace
}  // namespace wsync::transport
