#ifndef WSYNC_DAEMON_CORE_EXECUTOR_H_
#define WSYNC_DAEMON_CORE_EXECUTOR_H_

// Where a sync's kernels run: on the host (the CPU references, over shared
// memory) or on GPUs (the CUDA kernels, over CUDA IPC memory, one stream per
// device). The sync job drives both through the same calls.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/memory/host_memory.h"
#include "kernels/box_copy.h"
#include "kernels/digest.h"
#include "kernels/fp8.h"
#include "kernels/lora.h"

namespace wsync::core {

// One job's kernel queue. Calls enqueue work in order (the host context runs
// it at once); digest sums add into numbered slots that Finish returns.
// `device` is -1 for host memory, else the CUDA ordinal whose stream runs
// the work; the ops' pointers must be addressable from there. Op arrays are
// copied before a call returns. Not thread-safe: one job thread uses it.
class ExecContext {
 public:
  // Waits for enqueued work.
  virtual ~ExecContext() = default;

  // Daemon-owned memory on `device`, zeroed.
  virtual absl::StatusOr<std::unique_ptr<memory::Buffer>> Allocate(int device, uint64_t bytes,
                                                                   const std::string& what) = 0;
  // Makes later work on `device` able to read memory on `from_device`
  // (peer access); FAILED_PRECONDITION naming both when it cannot.
  virtual absl::Status EnablePeer(int device, int from_device) = 0;
  // Later work on `device` waits for a producer's event (a cudaEvent_t).
  virtual absl::Status WaitEvent(int device, void* event) = 0;

  virtual absl::Status Copy(int device, const kernels::BoxCopyOp* ops, size_t n) = 0;
  // Copy, and add the digest of what it writes into `slot`.
  virtual absl::Status CopyDigest(int device, const kernels::BoxCopyOp* ops, size_t n,
                                  const uint64_t* word_base, size_t slot) = 0;
  virtual absl::Status LoraMerge(int device, const kernels::LoraMergeOp* ops, size_t n) = 0;
  // Add the digest of the ops' destination boxes as they are then into `slot`.
  virtual absl::Status Digest(int device, const kernels::BoxCopyOp* ops, size_t n,
                              const uint64_t* word_base, size_t slot) = 0;
  // Scaled FP8 quantization (kernels/fp8.h) of `ops`, after the work before
  // it. INVALID_ARGUMENT naming the op's element and value when an input is
  // not finite (its outputs are then unspecified). Waits for the result.
  virtual absl::Status QuantizeFp8(int device, const kernels::Fp8QuantOp* ops, size_t n) = 0;

  // Waits for every enqueued call and returns the slots (summed over
  // devices); the first kernel or transfer error if any. Slots restart at
  // zero afterwards.
  virtual absl::StatusOr<std::vector<kernels::DigestSums>> Finish(size_t num_slots) = 0;
};

// Makes contexts. Thread-safe.
class Executor {
 public:
  // Host memory: the CPU references over `threads` threads.
  static std::unique_ptr<Executor> Host(int threads);
  // GPUs (FAILED_PRECONDITION in a build without CUDA). No CUDA call is
  // made until a context is.
  static absl::StatusOr<std::unique_ptr<Executor>> Cuda();

  virtual ~Executor() = default;
  virtual absl::StatusOr<std::unique_ptr<ExecContext>> NewContext() = 0;
};

// A context over host memory and GPUs together, for work that moves bytes
// between them through host buffers (multi-node parts: wire buffers in host
// memory, shards in GPU memory). Work for device -1 runs in a host context,
// work for a GPU ordinal in a CUDA context made on first use; Finish sums
// the slots of both. Not thread-safe: one job thread uses it.
class MixedContext final : public ExecContext {
 public:
  // `gpu` makes the CUDA context (null: GPU work fails with `gpu_error`).
  // With `stand_in`, GPU ordinals run in a second host context as device
  // -1, so that tests without a GPU exercise the routing.
  static absl::StatusOr<std::unique_ptr<MixedContext>> Create(Executor* host, Executor* gpu, absl::Status gpu_error,
                                                              bool stand_in);
  ~MixedContext() override;

  // Host memory, zeroed, that work on every device of this context can read
  // and write: pinned and mapped when `for_gpus` (plain when standing in).
  absl::StatusOr<std::unique_ptr<memory::Buffer>> AllocateShared(uint64_t bytes, const std::string& what,
                                                                 bool for_gpus);

  absl::StatusOr<std::unique_ptr<memory::Buffer>> Allocate(int device, uint64_t bytes,
                                                           const std::string& what) override;
  absl::Status EnablePeer(int device, int from_device) override;
  absl::Status WaitEvent(int device, void* event) override;
  absl::Status Copy(int device, const kernels::BoxCopyOp* ops, size_t n) override;
  absl::Status CopyDigest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                          size_t slot) override;
  absl::Status LoraMerge(int device, const kernels::LoraMergeOp* ops, size_t n) override;
  absl::Status Digest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                      size_t slot) override;
  absl::Status QuantizeFp8(int device, const kernels::Fp8QuantOp* ops, size_t n) override;
  absl::StatusOr<std::vector<kernels::DigestSums>> Finish(size_t num_slots) override;

 private:
  MixedContext(std::unique_ptr<ExecContext> host, Executor* gpu, absl::Status gpu_error)
      : host_(std::move(host)), gpu_exec_(gpu), gpu_error_(std::move(gpu_error)) {}
  // The context for `device` and the device number to pass it.
  absl::StatusOr<std::pair<ExecContext*, int>> Route(int device);

  std::unique_ptr<ExecContext> host_;
  Executor* gpu_exec_;  // the CUDA executor, or the host one standing in
  absl::Status gpu_error_;
  bool stand_in_ = false;
  std::unique_ptr<ExecContext> gpu_;  // made on first use
};

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_EXECUTOR_H_
