#include "daemon/core/part_state.h"

#include <catch2/catch.hpp>

namespace wsync::core::internal {
namespace {

using Phase = PartState::Phase;
using Decision = PartState::Decision;

TEST_CASE("every transition of the diagram, and nothing else") {
  const Phase all[] = {Phase::kRunning, Phase::kPrepared, Phase::kFailed, Phase::kCommitted, Phase::kAborted};
  int legal = 0;
  for (Phase from : all) {
    for (Phase to : all) {
      const bool want = (from == Phase::kRunning && (to == Phase::kPrepared || to == Phase::kFailed)) ||
                        (from == Phase::kPrepared && (to == Phase::kCommitted || to == Phase::kAborted)) ||
                        (from == Phase::kFailed && to == Phase::kAborted);
      INFO(PartState::Name(from) << " -> " << PartState::Name(to));
      CHECK(PartState::Legal(from, to) == want);
      legal += want;
    }
  }
  CHECK(legal == 5);
}

TEST_CASE("a part commits only when prepared and told to commit") {
  PartState s;
  CHECK(!s.Enter(Phase::kCommitted));  // still running
  REQUIRE(s.Enter(Phase::kPrepared));
  CHECK(!s.Enter(Phase::kCommitted));  // no decision yet
  REQUIRE(s.Decide(Decision::kCommit));
  CHECK(!s.Decide(Decision::kAbort));  // the first decision is final
  CHECK(s.decision() == Decision::kCommit);
  REQUIRE(s.Enter(Phase::kCommitted));
  CHECK(s.ended());
  CHECK(!s.Enter(Phase::kAborted));  // an ended part stays where it is
  CHECK(s.phase() == Phase::kCommitted);
}

TEST_CASE("a failed part can only abort, whatever arrives later") {
  PartState s;
  REQUIRE(s.Enter(Phase::kFailed));
  REQUIRE(s.Decide(Decision::kAbort));
  CHECK(!s.Decide(Decision::kCommit));
  CHECK(!s.Enter(Phase::kCommitted));
  CHECK(!s.Enter(Phase::kPrepared));
  REQUIRE(s.Enter(Phase::kAborted));
  CHECK(s.ended());
  CHECK(!s.Decide(Decision::kPending));
}

}  // namespace
}  // namespace wsync::core::internal
