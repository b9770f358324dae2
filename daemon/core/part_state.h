#ifndef WSYNC_DAEMON_CORE_PART_STATE_H_
#define WSYNC_DAEMON_CORE_PART_STATE_H_

namespace wsync::core::internal {

// Where a participant's part of a multi-node sync is, and what the
// coordinator decided: one checked state machine instead of flags.
//
//   phase:    Running --+--> Prepared --+--> Committed   (decision Commit)
//                       |               +--> Aborted
//                       +--> Failed ------> Aborted
//   decision: Pending --> Commit | Abort   (the first decision is final)
//
// A failed transfer decides Abort itself; so do a lost coordinator, the
// deadline and shutdown. Not thread-safe: the owner's lock guards it.
class PartState {
 public:
  enum class Phase { kRunning, kPrepared, kFailed, kCommitted, kAborted };
  enum class Decision { kPending, kCommit, kAbort };

  Phase phase() const { return phase_; }
  Decision decision() const { return decision_; }
  bool decided() const { return decision_ != Decision::kPending; }
  // Committed or Aborted.
  bool ended() const { return phase_ == Phase::kCommitted || phase_ == Phase::kAborted; }

  // Moves to `next` if the diagram allows it (Committed also needs the
  // decision Commit); returns false and changes nothing otherwise.
  bool Enter(Phase next) {
    if (!Legal(phase_, next) || (next == Phase::kCommitted && decision_ != Decision::kCommit)) return false;
    phase_ = next;
    return true;
  }

  // Records `d` (not Pending) unless a decision was made; returns whether
  // this one was taken.
  bool Decide(Decision d) {
    if (decided() || d == Decision::kPending) return false;
    decision_ = d;
    return true;
  }

  static bool Legal(Phase from, Phase to) {
    switch (from) {
      case Phase::kRunning:
        return to == Phase::kPrepared || to == Phase::kFailed;
      case Phase::kPrepared:
        return to == Phase::kCommitted || to == Phase::kAborted;
      case Phase::kFailed:
        return to == Phase::kAborted;
      case Phase::kCommitted:
      case Phase::kAborted:
        return false;
    }
    return false;
  }

  static const char* Name(Phase p) {
    switch (p) {
      case Phase::kRunning:
        return "running";
      case Phase::kPrepared:
        return "prepared";
      case Phase::kFailed:
        return "failed";
      case Phase::kCommitted:
        return "committed";
      case Phase::kAborted:
        return "aborted";
    }
    return "?";
  }

 private:
  Phase phase_ = Phase::kRunning;
  Decision decision_ = Decision::kPending;
};

}  // namespace wsync::core::internal

#endif  // WSYNC_DAEMON_CORE_PART_STATE_H_
