#ifndef WSYNC_DAEMON_TRANSPORT_NCCL_COMMUNICATOR_H_
#define WSYNC_DAEMON_TRANSPORT_NCCL_COMMUNICATOR_H_

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/transport/communicator.h"

namespace wsync::transport {

struct NcclOptions {
  int device = 0;  // CUDA device ordinal
  std::chrono::milliseconds timeout{30000};
};

// A non-blocking NCCL communicator (config.blocking = 0) for device memory.
// Every operation is polled with ncclCommGetAsyncError; a watchdog aborts the
// communicator (ncclCommAbort) when the timeout passes, and an errored
// communicator is never reused. Rank 0 publishes the NCCL unique id in
// `store` under `prefix`. Transfers to the own rank are allowed.
// Whether this build has NCCL and a CUDA device is visible.
bool NcclAvailable();

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(KvStore* store, const std::string& prefix,
                                                                     int rank, int size,
                                                                     const NcclOptions& options);

}  // namespace wsync::transport

#endif  // WSYNC_DAEMON_TRANSPORT_NCCL_COMMUNICATOR_H_
