#include "daemon/memory/fault_guard.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace wsync::memory {
namespace {

constexpr int kSlots = 65536;

struct Slot {
  std::atomic<uintptr_t> begin{0}, end{0};  // end == 0: free
  std::atomic<int> faulted{0};
};

Slot g_slots[kSlots];
std::atomic<int> g_high{0};  // slots [0, g_high) may be in use
std::mutex g_mu;             // registration only; the handler takes no lock
struct sigaction g_previous;

void OnSigbus(int sig, siginfo_t* info, void* ctx) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  const int high = g_high.load(std::memory_order_acquire);
  for (int i = 0; i < high; ++i) {
    const uintptr_t b = g_slots[i].begin.load(std::memory_order_acquire);
    const uintptr_t e = g_slots[i].end.load(std::memory_order_acquire);
    if (e == 0 || addr < b || addr >= e) continue;
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    void* at = reinterpret_cast<void*>(addr & ~(page - 1));
    if (mmap(at, page, PROT_READ | PROT_WRITE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED) {
      break;  // cannot repair: die as we would have
    }
    g_slots[i].faulted.store(1, std::memory_order_release);
    return;  // the access is retried and completes on the private page
  }
  // Not ours: the previous disposition decides (default: terminate with a core).
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) {
      g_previous.sa_sigaction(sig, info, ctx);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN) {
    g_previous.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

void InstallOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_sigaction = OnSigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &g_previous) != 0) {
      std::perror("wsyncd: sigaction(SIGBUS)");
      std::abort();
    }
  });
}

}  // namespace

std::unique_ptr<GuardedRange> GuardedRange::Guard(void* addr, size_t size) {
  InstallOnce();
  std::lock_guard<std::mutex> lock(g_mu);
  for (int i = 0; i < kSlots; ++i) {
    if (g_slots[i].end.load(std::memory_order_acquire) != 0) continue;
    g_slots[i].faulted.store(0, std::memory_order_relaxed);
    g_slots[i].begin.store(reinterpret_cast<uintptr_t>(addr), std::memory_order_release);
    g_slots[i].end.store(reinterpret_cast<uintptr_t>(addr) + size, std::memory_order_release);
    if (i >= g_high.load(std::memory_order_relaxed)) g_high.store(i + 1, std::memory_order_release);
    return std::unique_ptr<GuardedRange>(new GuardedRange(i));
  }
  std::fprintf(stderr, "wsyncd: more than %d shared-memory mappings guarded\n", kSlots);
  std::abort();
}

GuardedRange::~GuardedRange() {
  std::lock_guard<std::mutex> lock(g_mu);
  g_slots[slot_].end.store(0, std::memory_order_release);
  g_slots[slot_].begin.store(0, std::memory_order_release);
}

bool GuardedRange::faulted() const { return g_slots[slot_].faulted.load(std::memory_order_acquire) != 0; }

}  // namespace wsync::memory
