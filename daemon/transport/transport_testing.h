#ifndef WSYNC_DAEMON_TRANSPORT_TRANSPORT_TESTING_H_
#define WSYNC_DAEMON_TRANSPORT_TRANSPORT_TESTING_H_

// For tests of communicators: runs one thread per rank.

#include <thread>
#include <vector>

namespace wsync::transport {

// Calls f(rank) for every rank in [0, size), each on its own thread, and
// returns when all have returned.
template <typename F>
void OnEveryRank(int size, F f) {
  std::vector<std::thread> t;
  for (int r = 0; r < size; ++r) t.emplace_back([&, r] { f(r); });
  for (auto& x : t) x.join();
}

}  // namespace wsync::transport

#endif  // WSYNC_DAEMON_TRANSPORT_TRANSPORT_TESTING_H_
