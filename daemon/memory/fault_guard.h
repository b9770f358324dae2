#ifndef WSYNC_DAEMON_MEMORY_FAULT_GUARD_H_
#define WSYNC_DAEMON_MEMORY_FAULT_GUARD_H_

#include <cstddef>
#include <memory>

namespace wsync::memory {

// Shared memory of other processes can vanish under the daemon: a client may
// ftruncate its shm object while it is registered, or tmpfs may be unable to
// back a page nobody touched yet. Touching such a page raises SIGBUS, which
// would kill the daemon and every sync of every client.
//
// A GuardedRange puts a mapping under a process-wide SIGBUS handler: a fault
// inside the range replaces the faulting page with a private zero page, so
// the access (a copy kernel's load or store, on any thread) completes, and
// marks the range faulted. The bytes that went through such a page are
// wrong, so whoever reads or wrote the range checks faulted() before it
// publishes anything. A SIGBUS outside every guarded range keeps its default
// action. Thread-safe; the handler is async-signal-safe.
class GuardedRange {
 public:
  // Guards [addr, addr + size). Aborts the process if the table of guarded
  // ranges (65536) is full.
  static std::unique_ptr<GuardedRange> Guard(void* addr, size_t size);
  ~GuardedRange();  // stops guarding; the mapping must still exist or be gone for good

  // Whether any page of the range faulted since it was guarded.
  bool faulted() const;

  GuardedRange(const GuardedRange&) = delete;
  GuardedRange& operator=(const GuardedRange&) = delete;

 private:
  explicit GuardedRange(int slot) : slot_(slot) {}
  const int slot_;
};

}  // namespace wsync::memory

#endif  // WSYNC_DAEMON_MEMORY_FAULT_GUARD_H_
