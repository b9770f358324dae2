#ifndef WSYNC_DAEMON_CORE_MEMBER_FAILURE_H_
#define WSYNC_DAEMON_CORE_MEMBER_FAILURE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace wsync::core {

// One member's failure during a multi-node transfer, as the coordinator saw
// it. A failure brings others: when a daemon dies, its peers' transfers fail
// with UNAVAILABLE ("peer gone"), and a member that aborts its part closes its
// connections, so its own peers fail the same way. RootCause picks the
// failure that explains the rest. A plain value; not synchronized.
struct MemberFailure {
  enum class Kind {
    kNoAnswer,  // the coordinator's call to the member failed
    kReported,  // the member answered with its part's error
  };
  std::string daemon_id;
  Kind kind;
  absl::Status status;

  static MemberFailure NoAnswer(std::string daemon_id, absl::Status s) {
    return {std::move(daemon_id), Kind::kNoAnswer, std::move(s)};
  }
  static MemberFailure Reported(std::string daemon_id, absl::Status s) {
    return {std::move(daemon_id), Kind::kReported, std::move(s)};
  }

  // 0: the member stopped answering (unreachable, or past the call's
  // deadline); 1: any other error; 2: a transfer that failed because a peer
  // went away, which some other failure explains when there is one.
  int Rank() const {
    const absl::StatusCode c = status.code();
    if (kind == Kind::kNoAnswer) {
      return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ? 0 : 1;
    }
    return c == absl::StatusCode::kUnavailable ? 2 : 1;
  }

  // The error to report for `failures` (in the order they arrived): the
  // lowest Rank, the earliest among equals. A member that stopped answering
  // becomes ABORTED naming it; reported errors keep their code and message.
  // Requires a non-empty `failures`.
  static absl::Status RootCause(const std::vector<MemberFailure>& failures) {
    const MemberFailure* best = &failures.front();
    for (const MemberFailure& f : failures) {
      if (f.Rank() < best->Rank()) best = &f;
    }
    if (best->kind == Kind::kReported) return best->status;
    const bool gone = best->Rank() == 0;
    return absl::Status(gone ? absl::StatusCode::kAborted : best->status.code(),
                        absl::StrCat("daemon '", best->daemon_id, "'", gone ? " stopped answering" : "", ": ",
                                     best->status.message()));
  }
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_MEMBER_FAILURE_H_
