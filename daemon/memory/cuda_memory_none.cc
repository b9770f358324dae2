// daemon/memory/cuda_memory.h in a build without CUDA: every call says so.
#include "absl/strings/str_cat.h"
#include "daemon/memory/cuda_memory.h"

namespace wsync::memory {
namespace {

absl::Status NoCuda(const std::string& what) {
  return absl::FailedPreconditionError(
      absl::StrCat(what, ": GPU memory needs a wsyncd built with CUDA; this one was built without it"));
}

class NoCudaLease final : public CudaLease {
 public:
  absl::StatusOr<Range> Acquire(const std::string&, const std::string&, uint64_t, uint64_t,
                                const std::string& what) override {
    return NoCuda(what);
  }
  void Release(const std::string&) override {}
  absl::StatusOr<void*> OpenEvent(const std::string&, int, const std::string& what) override { return NoCuda(what); }
  size_t num_handles() const override { return 0; }
};

}  // namespace

std::unique_ptr<CudaLease> CudaLease::Create(std::string) { return std::make_unique<NoCudaLease>(); }

absl::StatusOr<std::unique_ptr<DeviceBuffer>> DeviceBuffer::Allocate(int, uint64_t, const std::string& what) {
  return NoCuda(what);
}

DeviceBuffer::~DeviceBuffer() = default;

absl::StatusOr<std::unique_ptr<PinnedHostBuffer>> PinnedHostBuffer::Allocate(uint64_t, const std::string& what) {
  return NoCuda(what);
}

PinnedHostBuffer::~PinnedHostBuffer() = default;

absl::StatusOr<int> DeviceOrdinal(const std::string& device_uuid) {
  return NoCuda(absl::StrCat("GPU ", device_uuid));
}

}  // namespace wsync::memory
