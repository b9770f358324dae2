#include "daemon/core/recent.h"

#include "absl/strings/str_cat.h"
#include "catch2/catch.hpp"

namespace wsync::core {
namespace {

TEST_CASE("the entry just put survives when job ids cross a digit boundary") {
  // Job ids as the daemon makes them: "j-9@a" sorts after "j-10@a", so an
  // eviction by key order would forget the job that just finished.
  RecentMap<bool> m(4);
  for (int i = 1; i <= 200; ++i) {
    const std::string id = absl::StrCat("j-", i, "@daemon");
    m.Put(id, i % 2 == 0);
    REQUIRE(m.Find(id) != nullptr);
    CHECK(*m.Find(id) == (i % 2 == 0));
    CHECK(m.size() == std::min(i, 4));
    // The previous three are still there; the one before them is gone.
    for (int k = std::max(1, i - 3); k <= i; ++k) CHECK(m.Contains(absl::StrCat("j-", k, "@daemon")));
    if (i > 4) CHECK_FALSE(m.Contains(absl::StrCat("j-", i - 4, "@daemon")));
  }
}

TEST_CASE("putting a key again replaces its value and keeps its age") {
  RecentMap<int> m(2);
  m.Put("a", 1);
  m.Put("b", 2);
  m.Put("a", 3);
  CHECK(*m.Find("a") == 3);
  m.Put("c", 4);  // forgets "a", the oldest put
  CHECK(m.Find("a") == nullptr);
  CHECK(*m.Find("b") == 2);
  CHECK(*m.Find("c") == 4);
}

}  // namespace
}  // namespace wsync::core
