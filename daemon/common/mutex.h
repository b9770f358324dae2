#ifndef WSYNC_DAEMON_COMMON_MUTEX_H_
#define WSYNC_DAEMON_COMMON_MUTEX_H_

// absl::Mutex, as ThreadSanitizer can see it. Debian's absl is built without
// TSan annotations, so under --config=tsan every lock of an absl::Mutex would
// be invisible and every guarded field would look racy. This wrapper tells
// TSan about each acquire and release (and around Await, whose condition may
// be evaluated by another thread holding the lock). Without WSYNC_TSAN it is
// absl::Mutex with no cost. Thread-safe.

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#ifdef WSYNC_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace wsync {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_.Lock();
    Acquired();
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    Released();
    mu_.Unlock();
  }
  // As absl::Mutex: releases the lock until `cond` holds, then holds it again.
  void Await(const absl::Condition& cond) {
    Guarded g{this, &cond};
    Released();
    mu_.Await(absl::Condition(&Guarded::Eval, &g));
    Acquired();
  }
  bool AwaitWithDeadline(const absl::Condition& cond, absl::Time deadline) {
    Guarded g{this, &cond};
    Released();
    const bool ok = mu_.AwaitWithDeadline(absl::Condition(&Guarded::Eval, &g), deadline);
    Acquired();
    return ok;
  }
  bool AwaitWithTimeout(const absl::Condition& cond, absl::Duration timeout) {
    return AwaitWithDeadline(cond, absl::Now() + timeout);
  }

 private:
  // A condition evaluated with the lock held, on whichever thread holds it.
  struct Guarded {
    Mutex* mu;
    const absl::Condition* cond;
    static bool Eval(Guarded* g) {
      g->mu->Acquired();
      const bool holds = g->cond->Eval();
      g->mu->Released();  // the lock may be given up right after, inside absl
      return holds;
    }
  };
#ifdef WSYNC_TSAN
  void Acquired() { __tsan_acquire(this); }
  void Released() { __tsan_release(this); }
#else
  void Acquired() {}
  void Released() {}
#endif

  absl::Mutex mu_;
};

// Holds `mu` for its scope.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace wsync

#endif  // WSYNC_DAEMON_COMMON_MUTEX_H_
