#ifndef WSYNC_DAEMON_TRANSPORT_COMMUNICATOR_H_
#define WSYNC_DAEMON_TRANSPORT_COMMUNICATOR_H_

// Moving bytes between daemons: point-to-point and broadcast over a group of
// ranks, on host memory (Gloo, TCP) or device memory (NCCL). A communicator
// that failed is never reused: after any error every call fails, and the
// caller builds a new one for the next sync.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace wsync::transport {

// The rendezvous key-value store (hosted by the coordinator). Thread-safe.
class KvStore {
 public:
  virtual ~KvStore() = default;
  // Stores `value` under `key`, replacing any previous value.
  virtual absl::Status Set(const std::string& key, const std::string& value) = 0;
  // The value of `key`, waiting up to `timeout` for it to appear
  // (DEADLINE_EXCEEDED naming the key).
  virtual absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) = 0;
  // An in-process store, for tests and single-daemon groups.
  static std::unique_ptr<KvStore> InMemory();
};

// One posted transfer of a grouped call.
struct P2P {
  enum class Kind { kSend, kRecv } kind = Kind::kSend;
  void* data = nullptr;  // const for sends
  size_t bytes = 0;
  int peer = 0;
  uint32_t tag = 0;      // pairs a send with the peer's recv of the same tag
};

// A posted transfer, completed by Wait.
class Transfer {
 public:
  // Waits for the transfer; if it never completes, the communicator's
  // timeout or Abort ends the wait with an error.
  virtual ~Transfer() = default;
  // Completes this rank's part: receives, forwards and sends. Errors
  // poison the communicator.
  virtual absl::Status Wait() = 0;
};

// A group of `size` ranks. Not thread-safe: one caller at a time, except
// Abort, which any thread may call.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;

  // Posts every transfer, then waits for all of them, up to the timeout.
  // DEADLINE_EXCEEDED names the peers still outstanding; UNAVAILABLE a
  // broken connection. Either error poisons the communicator.
  virtual absl::Status Exchange(const std::vector<P2P>& ops) = 0;

  // Sends `bytes` from `root` to every other rank into the same address.
  virtual absl::Status Broadcast(void* data, size_t bytes, int root) = 0;

  // A pipelined chain broadcast: `chain[0]` holds `bytes` at `data`; every
  // other rank of the chain receives them into its `data`, forwarding each
  // chunk of `chunk_bytes` to the next rank as soon as it arrives, so that
  // k receivers take about the time of one plus k-1 chunks. Only ranks in
  // the chain call it, each with the same arguments; `tag` tells concurrent
  // transfers apart. The base implementation runs ChainSteps through
  // Exchange, one step at a time, and completes before it returns; NCCL
  // enqueues every step at once, Gloo posts chunks as they arrive.
  virtual absl::StatusOr<std::unique_ptr<Transfer>> StartChain(void* data, size_t bytes,
                                                               const std::vector<int>& chain,
                                                               uint32_t tag, size_t chunk_bytes);

  // Ends every pending and later call with ABORTED naming `reason`, and
  // poisons the communicator. Thread-safe; idempotent.
  virtual void Abort(const std::string& reason) = 0;

  // Whether an error has poisoned this communicator, and which.
  virtual absl::Status error() const = 0;
};

// OK when `chain` has at least two ranks, each once and inside a group of
// `size`, `rank` is one of them and `chunk_bytes` is positive; otherwise
// INVALID_ARGUMENT naming the chain.
absl::Status CheckChain(const std::vector<int>& chain, int rank, int size, size_t chunk_bytes);

// The chain broadcast of StartChain as steps for `rank`, a member of the
// (checked) chain: in step j the head sends chunk j, every other rank
// receives chunk j from its predecessor and forwards chunk j-1, which it
// received in step j-1, to its successor. The transfers of one step run
// together and steps run in order. Counting the steps of the rank at
// position p >= 1 from round p - 1 (the head's from round 0), the two sides
// of every transfer lie in the same round, so ranks that run their steps in
// order never wait on each other in a cycle. Every transfer carries `tag`.
// No bytes, no steps.
std::vector<std::vector<P2P>> ChainSteps(void* data, size_t bytes, const std::vector<int>& chain, int rank,
                                         uint32_t tag, size_t chunk_bytes);

struct GlooOptions {
  std::string hostname = "127.0.0.1";  // interface to listen on
  std::chrono::milliseconds timeout{30000};
};

// Connects rank `rank` of `size` over TCP, rendezvousing through `store`
// under `prefix` (one prefix per group and epoch). Every rank must call it.
absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(KvStore* store,
                                                                     const std::string& prefix,
                                                                     int rank, int size,
                                                                     const GlooOptions& options);

}  // namespace wsync::transport

#endif  // WSYNC_DAEMON_TRANSPORT_COMMUNICATOR_H_
