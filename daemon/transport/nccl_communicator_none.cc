// NCCL in a build without CUDA: nothing to connect.
#include "absl/status/status.h"
#include "daemon/transport/nccl_communicator.h"

namespace wsync::transport {

bool NcclAvailable() { return false; }

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(KvStore*, const std::string&, int, int,
                                                                     const NcclOptions&) {
  return absl::FailedPreconditionError("this wsyncd was built without CUDA, so it has no NCCL");
}

}  // namespace wsync::transport
