#include "daemon/core/member_failure.h"

#include <catch2/catch.hpp>

namespace wsync::core {
namespace {

TEST_CASE("RootCause: a dead daemon explains its peers' closed connections, whatever arrived first") {
  // g1 is killed. t1 sees g0 close (g0 aborted when its forward to g1 failed),
  // g0 reports its failed forward, and the call to g1 is refused.
  std::vector<MemberFailure> f = {
      MemberFailure::Reported("t1", absl::UnavailableError("wire bucket 12 from 't1' to 'g0': peer gone?")),
      MemberFailure::Reported("g0", absl::UnavailableError("wire bucket 3 from 'g0' to 'g1': peer gone?")),
      MemberFailure::NoAnswer("g1", absl::UnavailableError("failed to connect")),
  };
  absl::Status s = MemberFailure::RootCause(f);
  CHECK(s.code() == absl::StatusCode::kAborted);
  CHECK(std::string(s.message()) == "daemon 'g1' stopped answering: failed to connect");

  // A deadline is no answer too.
  f.back() = MemberFailure::NoAnswer("g1", absl::DeadlineExceededError("Deadline Exceeded"));
  CHECK(std::string(MemberFailure::RootCause(f).message()) == "daemon 'g1' stopped answering: Deadline Exceeded");
}

TEST_CASE("RootCause: a member's own error outranks the closed connections it caused") {
  std::vector<MemberFailure> f = {
      MemberFailure::Reported("t0", absl::UnavailableError("wire bucket 1 from 't0' to 'g0': peer gone?")),
      MemberFailure::Reported("g0", absl::DataLossError("wire bucket 1 changed under the part")),
      MemberFailure::Reported("g1", absl::FailedPreconditionError("second, not reported")),
  };
  absl::Status s = MemberFailure::RootCause(f);
  CHECK(s.code() == absl::StatusCode::kDataLoss);
  CHECK(std::string(s.message()) == "wire bucket 1 changed under the part");
}

TEST_CASE("RootCause: with only closed connections, the first one stands; a refused call keeps its code") {
  std::vector<MemberFailure> f = {
      MemberFailure::Reported("t1", absl::UnavailableError("first")),
      MemberFailure::Reported("g0", absl::UnavailableError("second")),
  };
  CHECK(MemberFailure::RootCause(f) == absl::UnavailableError("first"));

  f.push_back(MemberFailure::NoAnswer("g1", absl::PermissionDeniedError("not a member")));
  absl::Status s = MemberFailure::RootCause(f);
  CHECK(s.code() == absl::StatusCode::kPermissionDenied);
  CHECK(std::string(s.message()) == "daemon 'g1': not a member");
}

}  // namespace
}  // namespace wsync::core
