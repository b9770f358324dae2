// Executor::Cuda in a build without CUDA.
#include "daemon/core/executor.h"

namespace wsync::core {

absl::StatusOr<std::unique_ptr<Executor>> Executor::Cuda() {
  return absl::FailedPreconditionError("GPU syncs need a wsyncd built with CUDA; this one was built without it");
}

}  // namespace wsync::core
