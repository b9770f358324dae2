#include "daemon/transport/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/logging.h"
#include "daemon/common/mutex.h"

namespace wsync::transport {
namespace {

using Clock = std::chrono::steady_clock;

absl::Status NcclStatus(ncclResult_t r, const std::string& what) {
  if (r == ncclSuccess || r == ncclInProgress) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

absl::Status CudaStatus(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}

class NcclChain;

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, int rank, int size, const NcclOptions& o)
      : comm_(comm), stream_(stream), rank_(rank), size_(size), options_(o) {}

  ~NcclCommunicator() override {
    if (comm_ != nullptr) {
      if (error_.ok()) {
        ncclCommFinalize(comm_);
        WaitIdle(Clock::now() + options_.timeout, "finalize").IgnoreError();
        ncclCommDestroy(comm_);
      } else {
        ncclCommAbort(comm_);
      }
    }
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  absl::Status error() const override { return error_; }

  void Abort(const std::string& reason) override {
    wsync::MutexLock lock(&abort_mu_);
    if (abort_reason_.empty()) abort_reason_ = reason;
    aborted_.store(true);
  }

  absl::Status Exchange(const std::vector<P2P>& ops) override {
    if (aborted_.load() && comm_ != nullptr) return Watchdog("grouped send/recv");
    if (!error_.ok()) return Poisoned();
    const auto deadline = Clock::now() + options_.timeout;
    if (absl::Status s = Enqueue(ops); !s.ok()) return s;
    return WaitDone(deadline, absl::StrCat(ops.size(), " grouped send/recv"));
  }

  // Enqueues every step of ChainSteps as one NCCL group on the stream
  // without waiting, so the chain's chunks overlap and later buckets queue
  // behind it; the transfer waits for an event recorded after the last step.
  absl::StatusOr<std::unique_ptr<Transfer>> StartChain(void* data, size_t bytes, const std::vector<int>& chain,
                                                       uint32_t tag, size_t chunk_bytes) override;

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (!error_.ok()) return Poisoned();
    const auto deadline = Clock::now() + options_.timeout;
    if (absl::Status s = Check(ncclBroadcast(data, data, bytes, ncclUint8, root, comm_, stream_), "ncclBroadcast");
        !s.ok()) {
      return s;
    }
    return WaitDone(deadline, absl::StrCat("broadcast from rank ", root));
  }

  // Waits until the communicator has no pending init/enqueue (non-blocking mode).
  absl::Status WaitIdle(Clock::time_point deadline, const std::string& what) {
    while (true) {
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async == ncclSuccess) return absl::OkStatus();
      if (async != ncclInProgress) return Fail(NcclStatus(async, absl::StrCat(what, " (async error)")));
      if (Clock::now() > deadline || aborted_.load()) return Watchdog(what);
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

 private:
  friend class NcclChain;

  // Enqueues one group of sends and receives on the stream.
  absl::Status Enqueue(const std::vector<P2P>& ops) {
    if (absl::Status s = Check(ncclGroupStart(), "ncclGroupStart"); !s.ok()) return s;
    for (const P2P& op : ops) {
      if (op.peer < 0 || op.peer >= size_) {
        ncclGroupEnd();
        return absl::InvalidArgumentError(absl::StrCat("rank ", rank_, ": invalid peer ", op.peer));
      }
      ncclResult_t r = op.kind == P2P::Kind::kSend
                           ? ncclSend(op.data, op.bytes, ncclUint8, op.peer, comm_, stream_)
                           : ncclRecv(op.data, op.bytes, ncclUint8, op.peer, comm_, stream_);
      if (absl::Status s = Check(r, "ncclSend/ncclRecv"); !s.ok()) {
        ncclGroupEnd();
        return s;
      }
    }
    return Check(ncclGroupEnd(), "ncclGroupEnd");
  }

  absl::Status Check(ncclResult_t r, const std::string& what) {
    if (r == ncclSuccess) return absl::OkStatus();
    if (r == ncclInProgress) return WaitIdle(Clock::now() + options_.timeout, what);
    return Fail(NcclStatus(r, absl::StrCat("rank ", rank_, ": ", what)));
  }

  // Polls the stream (or `event`, when given) and the communicator's async
  // error until done.
  absl::Status WaitDone(Clock::time_point deadline, const std::string& what, cudaEvent_t event = nullptr) {
    while (true) {
      if (!error_.ok()) return Poisoned();
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        return Fail(NcclStatus(async, absl::StrCat("rank ", rank_, ": ", what)));
      }
      cudaError_t q = event != nullptr ? cudaEventQuery(event) : cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) return Fail(CudaStatus(q, absl::StrCat("rank ", rank_, ": ", what)));
      if (Clock::now() > deadline || aborted_.load()) return Watchdog(what);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  absl::Status Watchdog(const std::string& what) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
    if (aborted_.load()) {
      wsync::MutexLock lock(&abort_mu_);
      return Fail(absl::AbortedError(absl::StrCat("rank ", rank_, ": ", what, " aborted (", abort_reason_,
                                                  "); the NCCL communicator was aborted")));
    }
    return Fail(absl::DeadlineExceededError(absl::StrCat("rank ", rank_, ": ", what, " did not complete within ",
                                                         options_.timeout.count(),
                                                         " ms; the NCCL communicator was aborted")));
  }

  absl::Status Fail(absl::Status s) {
    if (error_.ok()) {
      error_ = s;
      Logger("transport")->warn("NCCL communicator poisoned: {}", s.ToString());
    }
    return s;
  }

  absl::Status Poisoned() const {
    return absl::FailedPreconditionError(absl::StrCat("NCCL communicator of rank ", rank_,
                                                      " failed earlier and is not reused (", error_.message(), ")"));
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_, size_;
  NcclOptions options_;
  absl::Status error_;
  std::atomic<bool> aborted_{false};
  wsync::Mutex abort_mu_;
  std::string abort_reason_ ABSL_GUARDED_BY(abort_mu_);
};

// One rank's enqueued chain: done when the event recorded after its last
// step has passed.
class NcclChain final : public Transfer {
 public:
  NcclChain(NcclCommunicator* comm, cudaEvent_t event, Clock::time_point deadline, std::string what)
      : comm_(comm), event_(event), deadline_(deadline), what_(std::move(what)) {}
  ~NcclChain() override {
    if (!waited_) Wait().IgnoreError();
    cudaEventDestroy(event_);
  }
  absl::Status Wait() override {
    if (!waited_) {
      waited_ = true;
      status_ = comm_->WaitDone(deadline_, what_, event_);
    }
    return status_;
  }

 private:
  NcclCommunicator* comm_;
  cudaEvent_t event_;
  Clock::time_point deadline_;
  std::string what_;
  bool waited_ = false;
  absl::Status status_;
};

absl::StatusOr<std::unique_ptr<Transfer>> NcclCommunicator::StartChain(void* data, size_t bytes,
                                                                       const std::vector<int>& chain, uint32_t tag,
                                                                       size_t chunk_bytes) {
  if (aborted_.load() && comm_ != nullptr) return Watchdog("chain transfer");
  if (!error_.ok()) return Poisoned();
  if (absl::Status s = CheckChain(chain, rank_, size_, chunk_bytes); !s.ok()) return s;
  const auto deadline = Clock::now() + options_.timeout;
  for (const std::vector<P2P>& step : ChainSteps(data, bytes, chain, rank_, tag, chunk_bytes)) {
    if (absl::Status s = Enqueue(step); !s.ok()) return s;
  }
  cudaEvent_t event = nullptr;
  if (absl::Status s = CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
      !s.ok()) {
    return Fail(s);
  }
  if (absl::Status s = CudaStatus(cudaEventRecord(event, stream_), "cudaEventRecord"); !s.ok()) {
    cudaEventDestroy(event);
    return Fail(s);
  }
  return std::unique_ptr<Transfer>(
      new NcclChain(this, event, deadline,
                    absl::StrCat("chain transfer (tag ", tag, ", ", bytes, " bytes, chain [", absl::StrJoin(chain, ", "),
                                 "])")));
}

}  // namespace

bool NcclAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

absl::StatusOr<std::unique_ptr<Communicator>> CreateNcclCommunicator(KvStore* store, const std::string& prefix,
                                                                     int rank, int size,
                                                                     const NcclOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside a group of ", size));
  }
  if (absl::Status s = CudaStatus(cudaSetDevice(options.device), "cudaSetDevice"); !s.ok()) return s;
  ncclUniqueId id;
  const std::string key = prefix + "/nccl-unique-id";
  if (rank == 0) {
    if (absl::Status s = NcclStatus(ncclGetUniqueId(&id), "ncclGetUniqueId"); !s.ok()) return s;
    if (absl::Status s = store->Set(key, std::string(id.internal, sizeof(id.internal))); !s.ok()) return s;
  } else {
    auto v = store->Get(key, options.timeout);
    if (!v.ok()) return v.status();
    if (v->size() != sizeof(id.internal)) {
      return absl::InvalidArgumentError(absl::StrCat("rendezvous key '", key, "' holds ", v->size(),
                                                     " bytes, not an NCCL unique id"));
    }
    std::memcpy(id.internal, v->data(), sizeof(id.internal));
  }
  cudaStream_t stream = nullptr;
  if (absl::Status s = CudaStatus(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
      !s.ok()) {
    return s;
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, size, id, rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    cudaStreamDestroy(stream);
    return NcclStatus(r, absl::StrCat("rank ", rank, " ncclCommInitRankConfig"));
  }
  auto c = std::make_unique<NcclCommunicator>(comm, stream, rank, size, options);
  if (absl::Status s = c->WaitIdle(Clock::now() + options.timeout, "ncclCommInitRankConfig"); !s.ok()) return s;
  return std::unique_ptr<Communicator>(std::move(c));
}

}  // namespace wsync::transport
