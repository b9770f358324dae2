#include <algorithm>

#include "absl/strings/str_cat.h"
#include "daemon/core/executor.h"
#include "daemon/common/status.h"

namespace wsync::core {
namespace {

class HostContext final : public ExecContext {
 public:
  explicit HostContext(int threads) : threads_(threads) {}

  absl::StatusOr<std::unique_ptr<memory::Buffer>> Allocate(int device, uint64_t bytes,
                                                           const std::string& what) override {
    WSYNC_RETURN_IF_ERROR(Host(device, what));
    auto b = memory::HostBuffer::Allocate(bytes, what);
    if (!b.ok()) return b.status();
    return std::unique_ptr<memory::Buffer>(std::move(*b));
  }
  absl::Status EnablePeer(int device, int from_device) override {
    WSYNC_RETURN_IF_ERROR(Host(device, "peer access"));
    return Host(from_device, "peer access");
  }
  absl::Status WaitEvent(int device, void*) override { return Host(device, "a CUDA event"); }
  absl::Status Copy(int device, const kernels::BoxCopyOp* ops, size_t n) override {
    WSYNC_RETURN_IF_ERROR(Check(device, ops, n));
    kernels::BoxCopyCpu(ops, n, threads_);
    return absl::OkStatus();
  }
  absl::Status CopyDigest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                          size_t slot) override {
    WSYNC_RETURN_IF_ERROR(Check(device, ops, n));
    Add(slot, kernels::BoxCopyDigestCpu(ops, n, word_base, threads_));
    return absl::OkStatus();
  }
  absl::Status LoraMerge(int device, const kernels::LoraMergeOp* ops, size_t n) override {
    WSYNC_RETURN_IF_ERROR(Host(device, "LoRA merge"));
    if (std::string err = kernels::CheckLoraOps(ops, n); !err.empty()) return absl::InternalError(err);
    kernels::LoraMergeCpu(ops, n, threads_);
    return absl::OkStatus();
  }
  absl::Status Digest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                      size_t slot) override {
    WSYNC_RETURN_IF_ERROR(Host(device, "digest"));
    Add(slot, kernels::BoxDigestCpu(ops, n, word_base, threads_));
    return absl::OkStatus();
  }
  absl::Status QuantizeFp8(int device, const kernels::Fp8QuantOp* ops, size_t n) override {
    WSYNC_RETURN_IF_ERROR(Host(device, "FP8 quantization"));
    if (std::string err = kernels::CheckFp8QuantOps(ops, n); !err.empty()) return absl::InternalError(err);
    if (std::string err = kernels::QuantizeFp8Cpu(ops, n, threads_); !err.empty()) {
      return absl::InvalidArgumentError(err);
    }
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<kernels::DigestSums>> Finish(size_t num_slots) override {
    std::vector<kernels::DigestSums> out = std::move(slots_);
    out.resize(std::max(out.size(), num_slots));
    slots_.clear();
    return out;
  }

 private:
  static absl::Status Host(int device, const std::string& what) {
    if (device < 0) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("host executor asked to run ", what, " on GPU ", device));
  }
  absl::Status Check(int device, const kernels::BoxCopyOp* ops, size_t n) {
    WSYNC_RETURN_IF_ERROR(Host(device, "a box copy"));
    // The planner's output always passes; a failure here is a bug.
    if (std::string err = kernels::CheckBoxCopyOps(ops, n); !err.empty()) return absl::InternalError(err);
    return absl::OkStatus();
  }
  void Add(size_t slot, kernels::DigestSums d) {
    if (slots_.size() <= slot) slots_.resize(slot + 1);
    slots_[slot].s1 += d.s1;
    slots_[slot].s2 += d.s2;
  }

  const int threads_;
  std::vector<kernels::DigestSums> slots_;
};

class HostExecutor final : public Executor {
 public:
  explicit HostExecutor(int threads) : threads_(std::max(1, threads)) {}
  absl::StatusOr<std::unique_ptr<ExecContext>> NewContext() override {
    return std::unique_ptr<ExecContext>(new HostContext(threads_));
  }

 private:
  const int threads_;
};

}  // namespace

std::unique_ptr<Executor> Executor::Host(int threads) { return std::make_unique<HostExecutor>(threads); }

}  // namespace wsync::core
