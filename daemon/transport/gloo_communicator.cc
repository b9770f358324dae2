#include <exception>
#include <algorithm>
#include <map>
#include <set>

#include <gloo/broadcast.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/prefix_store.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "daemon/common/logging.h"
#include "daemon/transport/communicator.h"
#include "daemon/common/mutex.h"

namespace wsync::transport {
namespace {

class InMemoryStore final : public KvStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override {
    wsync::MutexLock lock(&mu_);
    kv_[key] = value;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    wsync::MutexLock lock(&mu_);
    auto has = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return kv_.count(key) > 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&has), absl::FromChrono(timeout))) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' did not appear within ",
                                                      timeout.count(), " ms"));
    }
    return kv_[key];
  }

 private:
  wsync::Mutex mu_;
  std::map<std::string, std::string> kv_ ABSL_GUARDED_BY(mu_);
};

// Gloo's rendezvous Store over our KvStore (Gloo reports errors by throwing).
class GlooStore final : public gloo::rendezvous::Store {
 public:
  GlooStore(KvStore* kv, std::chrono::milliseconds timeout) : kv_(kv), timeout_(timeout) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    absl::Status s = kv_->Set(key, std::string(data.begin(), data.end()));
    if (!s.ok()) throw std::runtime_error(s.ToString());
  }
  std::vector<char> get(const std::string& key) override {
    auto v = kv_->Get(key, timeout_);
    if (!v.ok()) throw std::runtime_error(v.status().ToString());
    return std::vector<char>(v->begin(), v->end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const auto& k : keys) {
      auto v = kv_->Get(k, timeout);
      if (!v.ok()) throw std::runtime_error(v.status().ToString());
    }
  }

 private:
  KvStore* kv_;
  std::chrono::milliseconds timeout_;
};

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::rendezvous::Context> ctx, std::shared_ptr<gloo::transport::Device> dev,
                   std::chrono::milliseconds timeout)
      : ctx_(std::move(ctx)), dev_(std::move(dev)), timeout_(timeout) {}

  int rank() const override { return ctx_->rank; }
  int size() const override { return ctx_->size; }
  absl::Status error() const override {
    wsync::MutexLock lock(&mu_);
    return error_;
  }

  void Abort(const std::string& reason) override {
    wsync::MutexLock lock(&mu_);
    if (!error_.ok()) return;
    error_ = absl::AbortedError(absl::StrCat("rank ", ctx_->rank, ": transfer aborted: ", reason));
    Logger("transport")->warn("communicator aborted: {}", reason);
    for (gloo::transport::UnboundBuffer* b : pending_) {
      b->abortWaitSend();
      b->abortWaitRecv();
    }
  }

  absl::Status Exchange(const std::vector<P2P>& ops) override {
    if (absl::Status e = error(); !e.ok()) return Poisoned(e);
    std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> bufs;
    for (const P2P& op : ops) {
      if (op.peer < 0 || op.peer >= size() || op.peer == rank()) {
        return absl::InvalidArgumentError(absl::StrCat("rank ", rank(), ": invalid peer ", op.peer));
      }
    }
    try {
      for (const P2P& op : ops) {
        bufs.push_back(Post(op.kind, op.data, op.bytes, op.peer, op.tag));
      }
      for (size_t i = 0; i < ops.size(); ++i) {
        absl::Status s = WaitOne(bufs[i].get(), ops[i].kind, ops[i].peer,
                                 absl::StrCat("tag ", ops[i].tag, ", ", ops[i].bytes, " bytes"));
        if (!s.ok()) {
          Forget(bufs);
          return s;
        }
      }
    } catch (const std::exception& e) {
      Forget(bufs);
      std::vector<int> peers;
      for (const P2P& op : ops) peers.push_back(op.peer);
      return Fail(absl::UnavailableError(absl::StrCat("rank ", rank(), ": transfer with rank(s) ",
                                                      absl::StrJoin(peers, ", "), " failed (peer gone?): ",
                                                      e.what())));
    }
    Forget(bufs);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<Transfer>> StartChain(void* data, size_t bytes, const std::vector<int>& chain,
                                                       uint32_t tag, size_t chunk_bytes) override;

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (absl::Status e = error(); !e.ok()) return Poisoned(e);
    try {
      gloo::BroadcastOptions opts(ctx_);
      opts.setOutput(static_cast<uint8_t*>(data), bytes);
      opts.setRoot(root);
      opts.setTimeout(timeout_);
      gloo::broadcast(opts);
    } catch (const std::exception& e) {
      return Fail(absl::UnavailableError(absl::StrCat("rank ", rank(), ": gloo broadcast from rank ", root,
                                                      " failed: ", e.what())));
    }
    return absl::OkStatus();
  }

  // Posts one send or receive and tracks it for Abort. Throws on Gloo errors.
  std::unique_ptr<gloo::transport::UnboundBuffer> Post(P2P::Kind kind, void* data, size_t bytes, int peer,
                                                       uint64_t slot) {
    auto b = ctx_->createUnboundBuffer(data, bytes);
    {
      wsync::MutexLock lock(&mu_);
      pending_.insert(b.get());
    }
    if (kind == P2P::Kind::kSend) {
      b->send(peer, slot);
    } else {
      b->recv(peer, slot);
    }
    return b;
  }

  // Waits for one posted buffer: OK, or the error that poisons us. Throws
  // on Gloo I/O errors other than a timeout.
  absl::Status WaitOne(gloo::transport::UnboundBuffer* b, P2P::Kind kind, int peer, const std::string& what) {
    bool done = false;
    try {
      done = kind == P2P::Kind::kSend ? b->waitSend(timeout_) : b->waitRecv(timeout_);
    } catch (const std::exception& e) {
      if (std::string(e.what()).find("Timed out") == std::string::npos) throw;
      return Fail(absl::DeadlineExceededError(absl::StrCat(
          "rank ", rank(), ": ", kind == P2P::Kind::kSend ? "send to" : "recv from", " rank ", peer, " (", what,
          ") did not complete within ", timeout_.count(), " ms (peer stopped?)")));
    }
    if (!done) {
      absl::Status e = error();
      return e.ok() ? Fail(absl::AbortedError(absl::StrCat("rank ", rank(), ": wait aborted"))) : e;
    }
    return absl::OkStatus();
  }

  void Forget(const std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>>& bufs) {
    wsync::MutexLock lock(&mu_);
    for (const auto& b : bufs) pending_.erase(b.get());
  }

  absl::Status Fail(absl::Status s) {
    wsync::MutexLock lock(&mu_);
    if (error_.ok()) {
      error_ = s;
      Logger("transport")->warn("communicator poisoned: {}", s.ToString());
    }
    return error_;
  }

 private:
  absl::Status Poisoned(const absl::Status& e) const {
    return absl::FailedPreconditionError(absl::StrCat(
        "communicator of rank ", ctx_->rank, " failed earlier and is not reused (", e.message(), ")"));
  }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::shared_ptr<gloo::transport::Device> dev_;
  std::chrono::milliseconds timeout_;
  mutable wsync::Mutex mu_;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  std::set<gloo::transport::UnboundBuffer*> pending_ ABSL_GUARDED_BY(mu_);
};

// One rank's part of a chain broadcast: chunk i travels under slot
// (tag << 24 | i), so the chunks of concurrent transfers never mix.
class GlooChain final : public Transfer {
 public:
  GlooChain(GlooCommunicator* comm, char* data, size_t bytes, int prev, int next, uint32_t tag, size_t chunk)
      : comm_(comm), data_(data), bytes_(bytes), prev_(prev), next_(next), tag_(tag), chunk_(chunk) {}

  ~GlooChain() override {
    comm_->Forget(recvs_);
    comm_->Forget(sends_);
  }

  size_t chunks() const { return bytes_ == 0 ? 1 : (bytes_ + chunk_ - 1) / chunk_; }
  size_t len(size_t i) const { return std::min(chunk_, bytes_ - std::min(bytes_, i * chunk_)); }
  uint64_t slot(size_t i) const { return (static_cast<uint64_t>(tag_) << 24) | i; }

  // Posts what can be posted now: the root's sends, the others' receives.
  void Post() {
    for (size_t i = 0; i < chunks(); ++i) {
      if (prev_ >= 0) {
        recvs_.push_back(comm_->Post(P2P::Kind::kRecv, data_ + i * chunk_, len(i), prev_, slot(i)));
      } else {
        sends_.push_back(comm_->Post(P2P::Kind::kSend, data_ + i * chunk_, len(i), next_, slot(i)));
      }
    }
  }

  absl::Status Wait() override {
    try {
      if (prev_ >= 0) {
        for (size_t i = 0; i < recvs_.size(); ++i) {
          absl::Status s = comm_->WaitOne(recvs_[i].get(), P2P::Kind::kRecv, prev_,
                                          absl::StrCat("tag ", tag_, " chunk ", i, " of ", chunks()));
          if (!s.ok()) return s;
          if (next_ >= 0) sends_.push_back(comm_->Post(P2P::Kind::kSend, data_ + i * chunk_, len(i), next_, slot(i)));
        }
      }
      for (size_t i = 0; i < sends_.size(); ++i) {
        absl::Status s = comm_->WaitOne(sends_[i].get(), P2P::Kind::kSend, next_,
                                        absl::StrCat("tag ", tag_, " chunk ", i, " of ", chunks()));
        if (!s.ok()) return s;
      }
    } catch (const std::exception& e) {
      return comm_->Fail(absl::UnavailableError(absl::StrCat(
          "rank ", comm_->rank(), ": chain transfer (tag ", tag_, ") with rank(s) ", prev_ >= 0 ? prev_ : next_,
          next_ >= 0 && prev_ >= 0 ? absl::StrCat(", ", next_) : "", " failed (peer gone?): ", e.what())));
    }
    return absl::OkStatus();
  }

 private:
  GlooCommunicator* comm_;
  char* data_;
  size_t bytes_;
  int prev_, next_;
  uint32_t tag_;
  size_t chunk_;
  std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> recvs_, sends_;
};

absl::StatusOr<std::unique_ptr<Transfer>> GlooCommunicator::StartChain(void* data, size_t bytes,
                                                                       const std::vector<int>& chain, uint32_t tag,
                                                                       size_t chunk_bytes) {
  if (absl::Status e = error(); !e.ok()) return Poisoned(e);
  if (absl::Status s = CheckChain(chain, rank(), size(), chunk_bytes); !s.ok()) return s;
  if (tag >= (1u << 24)) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank(), ": chain tag ", tag, " is not below 2^24"));
  }
  auto me = std::find(chain.begin(), chain.end(), rank());
  const size_t pos = me - chain.begin();
  auto t = std::make_unique<GlooChain>(this, static_cast<char*>(data), bytes, pos > 0 ? chain[pos - 1] : -1,
                                       pos + 1 < chain.size() ? chain[pos + 1] : -1, tag, chunk_bytes);
  try {
    t->Post();
  } catch (const std::exception& e) {
    return Fail(absl::UnavailableError(absl::StrCat("rank ", rank(), ": posting chain transfer (tag ", tag,
                                                    ") failed (peer gone?): ", e.what())));
  }
  return std::unique_ptr<Transfer>(std::move(t));
}

}  // namespace

std::unique_ptr<KvStore> KvStore::InMemory() { return std::make_unique<InMemoryStore>(); }

absl::StatusOr<std::unique_ptr<Communicator>> CreateGlooCommunicator(KvStore* store, const std::string& prefix,
                                                                     int rank, int size,
                                                                     const GlooOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", rank, " is outside a group of ", size));
  }
  try {
    gloo::transport::tcp::attr attr;
    attr.hostname = options.hostname;
    auto dev = gloo::transport::tcp::CreateDevice(attr);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->setTimeout(options.timeout);
    GlooStore base(store, options.timeout);
    gloo::rendezvous::PrefixStore prefixed(prefix, base);
    ctx->connectFullMesh(prefixed, dev);
    return std::unique_ptr<Communicator>(new GlooCommunicator(ctx, dev, options.timeout));
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("rank ", rank, " of ", size, " could not join gloo group '",
                                               prefix, "': ", e.what()));
  }
}

}  // namespace wsync::transport
