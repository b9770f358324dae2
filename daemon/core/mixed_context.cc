#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/common/status.h"
#include "daemon/core/executor.h"
#include "daemon/memory/cuda_memory.h"

namespace wsync::core {

absl::StatusOr<std::unique_ptr<MixedContext>> MixedContext::Create(Executor* host, Executor* gpu,
                                                                   absl::Status gpu_error, bool stand_in) {
  auto h = host->NewContext();
  if (!h.ok()) return h.status();
  if (stand_in) gpu = host;
  if (gpu == nullptr && gpu_error.ok()) gpu_error = absl::FailedPreconditionError("no GPU executor");
  std::unique_ptr<MixedContext> c(new MixedContext(std::move(*h), gpu, std::move(gpu_error)));
  c->stand_in_ = stand_in;
  return c;
}

// The GPU context goes first: it waits for its queued work, which may read
// host buffers made through this context.
MixedContext::~MixedContext() { gpu_.reset(); }

absl::StatusOr<std::pair<ExecContext*, int>> MixedContext::Route(int device) {
  if (device < 0) return std::make_pair(host_.get(), -1);
  if (gpu_ == nullptr) {
    if (gpu_exec_ == nullptr) return gpu_error_;
    auto c = gpu_exec_->NewContext();
    if (!c.ok()) return c.status();
    gpu_ = std::move(*c);
  }
  return std::make_pair(gpu_.get(), stand_in_ ? -1 : device);
}

absl::StatusOr<std::unique_ptr<memory::Buffer>> MixedContext::AllocateShared(uint64_t bytes, const std::string& what,
                                                                             bool for_gpus) {
  if (!for_gpus || stand_in_) return host_->Allocate(-1, bytes, what);
  if (gpu_exec_ == nullptr) return gpu_error_;
  auto b = memory::PinnedHostBuffer::Allocate(bytes, what);
  if (!b.ok()) return b.status();
  return std::unique_ptr<memory::Buffer>(std::move(*b));
}

absl::StatusOr<std::unique_ptr<memory::Buffer>> MixedContext::Allocate(int device, uint64_t bytes,
                                                                       const std::string& what) {
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->Allocate(r->second, bytes, what);
}

absl::Status MixedContext::EnablePeer(int device, int from_device) {
  if (stand_in_) return absl::OkStatus();
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->EnablePeer(device, from_device);
}

absl::Status MixedContext::WaitEvent(int device, void* event) {
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->WaitEvent(r->second, event);
}

absl::Status MixedContext::Copy(int device, const kernels::BoxCopyOp* ops, size_t n) {
  if (n == 0) return absl::OkStatus();
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->Copy(r->second, ops, n);
}

absl::Status MixedContext::CopyDigest(int device, const kernels::BoxCopyOp* ops, size_t n,
                                      const uint64_t* word_base, size_t slot) {
  if (n == 0) return absl::OkStatus();
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->CopyDigest(r->second, ops, n, word_base, slot);
}

absl::Status MixedContext::LoraMerge(int device, const kernels::LoraMergeOp* ops, size_t n) {
  if (n == 0) return absl::OkStatus();
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->LoraMerge(r->second, ops, n);
}

absl::Status MixedContext::Digest(int device, const kernels::BoxCopyOp* ops, size_t n, const uint64_t* word_base,
                                  size_t slot) {
  if (n == 0) return absl::OkStatus();
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->Digest(r->second, ops, n, word_base, slot);
}

absl::Status MixedContext::QuantizeFp8(int device, const kernels::Fp8QuantOp* ops, size_t n) {
  if (n == 0) return absl::OkStatus();
  auto r = Route(device);
  if (!r.ok()) return r.status();
  return r->first->QuantizeFp8(r->second, ops, n);
}

absl::StatusOr<std::vector<kernels::DigestSums>> MixedContext::Finish(size_t num_slots) {
  auto out = host_->Finish(num_slots);
  if (!out.ok() || gpu_ == nullptr) return out;
  auto g = gpu_->Finish(num_slots);
  if (!g.ok()) return g.status();
  out->resize(std::max(out->size(), g->size()));
  for (size_t i = 0; i < g->size(); ++i) {
    (*out)[i].s1 += (*g)[i].s1;
    (*out)[i].s2 += (*g)[i].s2;
  }
  return out;
}

}  // namespace wsync::core
