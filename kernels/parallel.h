#ifndef WSYNC_KERNELS_PARALLEL_H_
#define WSYNC_KERNELS_PARALLEL_H_

#include <atomic>
#include <cstddef>
#include <thread>
#include <vector>

namespace wsync::kernels {

// Runs fn(i) for every i in [0, n) on up to `threads` threads (the caller's
// thread included), handing out indices dynamically. Returns when all are
// done. fn must be safe to call concurrently for distinct i.
template <typename Fn>
void ParallelFor(size_t n, int threads, const Fn& fn) {
  if (threads <= 1 || n <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  if (static_cast<size_t>(threads) > n) threads = static_cast<int>(n);
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
}

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_PARALLEL_H_
