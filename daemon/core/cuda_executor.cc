// Executor::Cuda: the CUDA kernels, one stream per device shared by every
// job (created on first use), op arrays staged through pinned host memory
// and stream-ordered device allocations, digest slots on each device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "daemon/core/executor.h"
#include "daemon/memory/cuda_memory.h"
#include "kernels/box_copy_cuda.h"
#include "kernels/fp8_cuda.h"
#include "kernels/cuda_status.h"
#include "daemon/common/mutex.h"
#include "daemon/common/status.h"

namespace wsync::core {
namespace {

using kernels::CudaStatus;

constexpr size_t kSlotChunk = 256;
constexpr size_t kPinnedChunk = 1 << 20;

class CudaExecutor;

class CudaContext final : public ExecContext {
 public:
  explicit CudaContext(CudaExecutor* ex) : ex_(ex) {}
  ~CudaContext() override;

  absl::StatusOr<std::unique_ptr<memory::Buffer>> Allocate(int device, uint64_t bytes,
                                                           const std::string& what) override {
    auto b = memory::DeviceBuffer::Allocate(device, bytes, what);
    if (!b.ok()) return b.status();
    return std::unique_ptr<memory::Buffer>(std::move(*b));
  }

  absl::Status EnablePeer(int device, int from_device) override {
    if (device == from_device) return absl::OkStatus();
    int can = 0;
    if (absl::Status s = CudaStatus(cudaDeviceCanAccessPeer(&can, device, from_device), "cudaDeviceCanAccessPeer");
        !s.ok()) {
      return s;
    }
    if (!can) {
      return absl::FailedPreconditionError(absl::StrCat(
          "GPU ", device, " cannot read GPU ", from_device,
          " over peer-to-peer (no NVLink or PCIe P2P between them); a colocated sync between them is not possible"));
    }
    WSYNC_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
    cudaError_t e = cudaDeviceEnablePeerAccess(from_device, 0);
    if (e == cudaErrorPeerAccessAlreadyEnabled) {
      cudaGetLastError();
      return absl::OkStatus();
    }
    return CudaStatus(e, absl::StrCat("cudaDeviceEnablePeerAccess(", device, " -> ", from_device, ")"));
  }

  absl::Status WaitEvent(int device, void* event) override {
    auto st = Stream(device);
    if (!st.ok()) return st.status();
    return CudaStatus(cudaStreamWaitEvent(*st, static_cast<cudaEvent_t>(event), 0), "cudaStreamWaitEvent");
  }

  absl::Status Copy(int device, const kernels::BoxCopyOp* ops, size_t n) override {
    return Batch(device, ops, n, /*copy=*/true, nullptr, 0);
  }
  absl::Status CopyDigest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                          size_t slot) override {
    return Batch(device, ops, n, /*copy=*/true, word_base, slot);
  }

  absl::Status LoraMerge(int device, const kernels::LoraMergeOp* ops, size_t n) override {
    if (n == 0) return absl::OkStatus();
    if (std::string err = kernels::CheckLoraOps(ops, n); !err.empty()) return absl::InternalError(err);
    auto st = Stream(device);
    if (!st.ok()) return st.status();
    int64_t rows = 0, cols = 0, rank = 0;
    for (size_t i = 0; i < n; ++i) {
      rows = std::max(rows, ops[i].rows);
      cols = std::max(cols, ops[i].cols);
      rank = std::max(rank, ops[i].rank);
    }
    auto d_ops = Upload(device, *st, ops, n * sizeof(*ops));
    if (!d_ops.ok()) return d_ops.status();
    return CudaStatus(kernels::LaunchLoraMerge(static_cast<const kernels::LoraMergeOp*>(*d_ops), static_cast<int>(n),
                                               rows, cols, kernels::DefaultLoraMath(rank), *st),
                      "LoRA merge kernel");
  }

  absl::Status Digest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                      size_t slot) override {
    return Batch(device, ops, n, /*copy=*/false, word_base, slot);
  }

  absl::Status QuantizeFp8(int device, const kernels::Fp8QuantOp* ops, size_t n) override {
    if (n == 0) return absl::OkStatus();
    if (std::string err = kernels::CheckFp8QuantOps(ops, n); !err.empty()) return absl::InternalError(err);
    auto st = Stream(device);
    if (!st.ok()) return st.status();
    const std::vector<kernels::Fp8Block> blocks = kernels::MakeFp8Blocks(ops, n);
    auto d_ops = Upload(device, *st, ops, n * sizeof(*ops));
    if (!d_ops.ok()) return d_ops.status();
    auto d_blocks = Upload(device, *st, blocks.data(), blocks.size() * sizeof(blocks[0]));
    if (!d_blocks.ok()) return d_blocks.status();
    const unsigned long long all_finite = kernels::kFp8AllFinite;
    auto d_bad = Upload(device, *st, &all_finite, sizeof(all_finite));
    if (!d_bad.ok()) return d_bad.status();
    auto* bad_ptr = static_cast<unsigned long long*>(*d_bad);
    WSYNC_RETURN_IF_ERROR(CudaStatus(
        kernels::LaunchQuantizeFp8(static_cast<const kernels::Fp8QuantOp*>(*d_ops),
                                   static_cast<const kernels::Fp8Block*>(*d_blocks),
                                   static_cast<int64_t>(blocks.size()), bad_ptr, *st),
        "FP8 quantization kernel"));
    unsigned long long bad = 0;
    WSYNC_RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(&bad, bad_ptr, sizeof(bad), cudaMemcpyDeviceToHost, *st),
                                     "reading the FP8 check"));
    WSYNC_RETURN_IF_ERROR(CudaStatus(cudaStreamSynchronize(*st), absl::StrCat("GPU ", device, " stream")));
    if (bad == kernels::kFp8AllFinite) return absl::OkStatus();
    kernels::Fp8Element e;
    if (!kernels::Fp8BadElement(ops, blocks, bad, &e)) {
      return absl::InternalError(absl::StrCat("the FP8 kernel reported element key ", bad, ", which names none"));
    }
    const kernels::Fp8QuantOp& op = ops[e.op];
    const size_t esz = kernels::DTypeSize(op.src_dtype);
    unsigned char raw[4] = {};
    WSYNC_RETURN_IF_ERROR(CudaStatus(
        cudaMemcpy(raw, static_cast<const char*>(op.src) + (e.row * op.src_ld + e.col) * esz, esz,
                   cudaMemcpyDeviceToHost),
        "reading a non-finite weight"));
    return absl::InvalidArgumentError(kernels::Fp8BadMessage(e, kernels::LoadAsF32(raw, op.src_dtype, 0)));
  }

  absl::StatusOr<std::vector<kernels::DigestSums>> Finish(size_t num_slots) override {
    std::vector<kernels::DigestSums> out(num_slots);
    absl::Status first;
    for (auto& [device, d] : devices_) {
      cudaSetDevice(device);
      for (size_t c = 0; c < d.slot_chunks.size(); ++c) {
        if (d.slot_chunks[c] == nullptr) continue;
        std::vector<kernels::DigestSums> host(kSlotChunk);
        absl::Status s = CudaStatus(cudaMemcpyAsync(host.data(), d.slot_chunks[c], kSlotChunk * sizeof(host[0]),
                                                    cudaMemcpyDeviceToHost, d.stream),
                                    "reading digests");
        if (s.ok()) s = CudaStatus(cudaStreamSynchronize(d.stream), absl::StrCat("GPU ", device, " stream"));
        if (!s.ok()) {
          if (first.ok()) first = s;
          continue;
        }
        for (size_t i = 0; i < kSlotChunk && c * kSlotChunk + i < num_slots; ++i) {
          out[c * kSlotChunk + i].s1 += host[i].s1;
          out[c * kSlotChunk + i].s2 += host[i].s2;
        }
        cudaMemsetAsync(d.slot_chunks[c], 0, kSlotChunk * sizeof(kernels::DigestSums), d.stream);
      }
      absl::Status s = CudaStatus(cudaStreamSynchronize(d.stream), absl::StrCat("GPU ", device, " stream"));
      if (!s.ok() && first.ok()) first = s;
    }
    ReleasePinned();
    if (!first.ok()) return first;
    return out;
  }

 private:
  struct Dev {
    cudaStream_t stream = nullptr;
    std::vector<kernels::DigestSums*> slot_chunks;
  };

  absl::StatusOr<cudaStream_t> Stream(int device);

  absl::StatusOr<kernels::DigestSums*> Slot(int device, cudaStream_t st, size_t slot) {
    Dev& d = devices_[device];
    const size_t c = slot / kSlotChunk;
    if (d.slot_chunks.size() <= c) d.slot_chunks.resize(c + 1, nullptr);
    if (d.slot_chunks[c] == nullptr) {
      void* p = nullptr;
      if (absl::Status s = CudaStatus(cudaMallocAsync(&p, kSlotChunk * sizeof(kernels::DigestSums), st),
                                      "cudaMallocAsync (digest slots)");
          !s.ok()) {
        return s;
      }
      if (absl::Status s = CudaStatus(cudaMemsetAsync(p, 0, kSlotChunk * sizeof(kernels::DigestSums), st),
                                      "cudaMemsetAsync");
          !s.ok()) {
        return s;
      }
      d.slot_chunks[c] = static_cast<kernels::DigestSums*>(p);
    }
    return d.slot_chunks[c] + slot % kSlotChunk;
  }

  // Copies `bytes` of host data to a stream-ordered device allocation that
  // is freed (stream-ordered) once the work enqueued after it has run.
  absl::StatusOr<void*> Upload(int device, cudaStream_t st, const void* data, size_t bytes) {
    bytes = std::max<size_t>(bytes, 16);
    auto pinned = Pinned(bytes);
    if (!pinned.ok()) return pinned.status();
    std::memcpy(*pinned, data, bytes);
    void* dev = nullptr;
    if (absl::Status s = CudaStatus(cudaMallocAsync(&dev, bytes, st), "cudaMallocAsync (op arrays)"); !s.ok()) {
      return s;
    }
    if (absl::Status s = CudaStatus(cudaMemcpyAsync(dev, *pinned, bytes, cudaMemcpyHostToDevice, st), "uploading ops");
        !s.ok()) {
      return s;
    }
    to_free_[device].push_back(dev);
    return dev;
  }

  // Pinned host memory that stays untouched until Finish.
  absl::StatusOr<void*> Pinned(size_t bytes) {
    bytes = (bytes + 15) & ~size_t{15};
    if (pinned_.empty() || pinned_used_ + bytes > pinned_.back().second) {
      const size_t size = std::max(bytes, kPinnedChunk);
      void* p = nullptr;
      WSYNC_RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&p, size), "cudaMallocHost (op staging)"));
      pinned_.push_back({p, size});
      pinned_used_ = 0;
    }
    void* out = static_cast<char*>(pinned_.back().first) + pinned_used_;
    pinned_used_ += bytes;
    return out;
  }

  void ReleasePinned() {
    for (auto& [device, ptrs] : to_free_) {
      Dev& d = devices_[device];
      cudaSetDevice(device);
      for (void* p : ptrs) cudaFreeAsync(p, d.stream);
      cudaStreamSynchronize(d.stream);
    }
    to_free_.clear();
    // Keep the newest chunk for the next calls; the rest go back.
    while (pinned_.size() > 1) {
      cudaFreeHost(pinned_.front().first);
      pinned_.erase(pinned_.begin());
    }
    pinned_used_ = 0;
  }

  // Box copy (when `copy`) and/or digest into `slot` (when word_base).
  absl::Status Batch(int device, const kernels::BoxCopyOp* ops, size_t n, bool copy, const uint64_t* word_base,
                     size_t slot) {
    if (n == 0) return absl::OkStatus();
    if (std::string err = kernels::CheckBoxCopyOps(ops, n); !err.empty()) return absl::InternalError(err);
    auto st = Stream(device);
    if (!st.ok()) return st.status();
    auto tiles = kernels::MakeBoxTiles(ops, n);
    auto d_ops = Upload(device, *st, ops, n * sizeof(*ops));
    if (!d_ops.ok()) return d_ops.status();
    auto d_tiles = Upload(device, *st, tiles.data(), tiles.size() * sizeof(tiles[0]));
    if (!d_tiles.ok()) return d_tiles.status();
    const auto* o = static_cast<const kernels::BoxCopyOp*>(*d_ops);
    const auto* t = static_cast<const kernels::BoxTile*>(*d_tiles);
    const int num_tiles = static_cast<int>(tiles.size());
    if (word_base == nullptr) return CudaStatus(kernels::LaunchBoxCopy(o, t, num_tiles, *st), "box copy kernel");
    auto d_words = Upload(device, *st, word_base, n * sizeof(uint64_t));
    if (!d_words.ok()) return d_words.status();
    auto d_slot = Slot(device, *st, slot);
    if (!d_slot.ok()) return d_slot.status();
    const auto* w = static_cast<const uint64_t*>(*d_words);
    if (copy) return CudaStatus(kernels::LaunchBoxCopyDigest(o, w, t, num_tiles, *d_slot, *st), "box copy+digest kernel");
    return CudaStatus(kernels::LaunchBoxDigest(o, w, t, num_tiles, *d_slot, *st), "box digest kernel");
  }

  CudaExecutor* const ex_;
  std::map<int, Dev> devices_;
  std::map<int, std::vector<void*>> to_free_;
  std::vector<std::pair<void*, size_t>> pinned_;
  size_t pinned_used_ = 0;
};

class CudaExecutor final : public Executor {
 public:
  ~CudaExecutor() override {
    wsync::MutexLock lock(&mu_);
    for (auto& [device, st] : streams_) {
      cudaSetDevice(device);
      cudaStreamDestroy(st);
    }
  }

  absl::StatusOr<std::unique_ptr<ExecContext>> NewContext() override {
    return std::unique_ptr<ExecContext>(new CudaContext(this));
  }

  // The device's stream, created on first use (non-blocking: it never
  // waits for the legacy default stream).
  absl::StatusOr<cudaStream_t> StreamFor(int device) {
    wsync::MutexLock lock(&mu_);
    auto it = streams_.find(device);
    if (it != streams_.end()) return it->second;
    if (absl::Status s = CudaStatus(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")")); !s.ok()) {
      return s;
    }
    cudaStream_t st = nullptr;
    if (absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), "cudaStreamCreate");
        !s.ok()) {
      return s;
    }
    streams_[device] = st;
    return st;
  }

 private:
  wsync::Mutex mu_;
  std::map<int, cudaStream_t> streams_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<cudaStream_t> CudaContext::Stream(int device) {
  if (device < 0) return absl::InternalError("GPU executor asked to run kernels on host memory");
  auto it = devices_.find(device);
  if (it == devices_.end()) {
    auto st = ex_->StreamFor(device);
    if (!st.ok()) return st.status();
    it = devices_.emplace(device, Dev{*st, {}}).first;
  }
  WSYNC_RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  return it->second.stream;
}

CudaContext::~CudaContext() {
  for (auto& [device, d] : devices_) {
    cudaSetDevice(device);
    cudaStreamSynchronize(d.stream);
    for (kernels::DigestSums* p : d.slot_chunks) {
      if (p) cudaFreeAsync(p, d.stream);
    }
  }
  ReleasePinned();
  for (auto& [p, size] : pinned_) cudaFreeHost(p);
  cudaGetLastError();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Executor>> Executor::Cuda() { return std::unique_ptr<Executor>(new CudaExecutor); }

}  // namespace wsync::core
