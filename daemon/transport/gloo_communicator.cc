#include <exception>
#include <map>

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

namespace wsync::transport {
namespace {

class InMemoryStore final : public KvStore {
 public:
  absl::Status Set(const std::string& key, const std::string& value) override {
    absl::MutexLock lock(&mu_);
    kv_[key] = value;
    return absl::OkStatus();
  }
  absl::StatusOr<std::string> Get(const std::string& key, std::chrono::milliseconds timeout) override {
    absl::MutexLock lock(&mu_);
    auto has = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return kv_.count(key) > 0; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&has), absl::FromChrono(timeout))) {
      return absl::DeadlineExceededError(absl::StrCat("rendezvous key '", key, "' did not appear within ",
                                                      timeout.count(), " ms"));
    }
    return kv_[key];
  }

 private:
  absl::Mutex mu_;
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
  absl::Status error() const override { return error_; }

  absl::Status Exchange(const std::vector<P2P>& ops) override {
    if (!error_.ok()) return Poisoned();
    std::vector<std::unique_ptr<gloo::transport::UnboundBuffer>> bufs;
    try {
      for (const P2P& op : ops) {
        if (op.peer < 0 || op.peer >= size() || op.peer == rank()) {
          return absl::InvalidArgumentError(absl::StrCat("rank ", rank(), ": invalid peer ", op.peer));
        }
        bufs.push_back(ctx_->createUnboundBuffer(op.data, op.bytes));
        if (op.kind == P2P::Kind::kSend) {
          bufs.back()->send(op.peer, op.tag);
        } else {
          bufs.back()->recv(op.peer, op.tag);
        }
      }
      const auto deadline = std::chrono::steady_clock::now() + timeout_;
      std::vector<std::string> late;
      for (size_t i = 0; i < ops.size(); ++i) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        const auto wait = std::max(left, std::chrono::milliseconds(1));
        bool done = false;
        try {
          done = ops[i].kind == P2P::Kind::kSend ? bufs[i]->waitSend(wait) : bufs[i]->waitRecv(wait);
        } catch (const std::exception& e) {
          if (std::string(e.what()).find("Timed out") == std::string::npos) throw;
        }
        if (!done) {
          late.push_back(absl::StrCat(ops[i].kind == P2P::Kind::kSend ? "send to" : "recv from", " rank ",
                                      ops[i].peer, " (tag ", ops[i].tag, ", ", ops[i].bytes, " bytes)"));
        }
      }
      if (!late.empty()) {
        return Fail(absl::DeadlineExceededError(absl::StrCat("rank ", rank(), ": ", absl::StrJoin(late, "; "),
                                                             " did not complete within ", timeout_.count(), " ms")));
      }
    } catch (const std::exception& e) {
      std::vector<int> peers;
      for (const P2P& op : ops) peers.push_back(op.peer);
      return Fail(absl::UnavailableError(absl::StrCat("rank ", rank(), ": transfer with rank(s) ",
                                                      absl::StrJoin(peers, ", "), " failed (peer gone?): ",
                                                      e.what())));
    }
    return absl::OkStatus();
  }

  absl::Status Broadcast(void* data, size_t bytes, int root) override {
    if (!error_.ok()) return Poisoned();
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

 private:
  absl::Status Fail(absl::Status s) {
    error_ = s;
    Logger("transport")->warn("communicator poisoned: {}", s.ToString());
    return s;
  }
  absl::Status Poisoned() const {
    return absl::FailedPreconditionError(absl::StrCat(
        "communicator of rank ", ctx_->rank, " failed earlier and is not reused (", error_.message(), ")"));
  }

  std::shared_ptr<gloo::rendezvous::Context> ctx_;
  std::shared_ptr<gloo::transport::Device> dev_;
  std::chrono::milliseconds timeout_;
  absl::Status error_;
};

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
