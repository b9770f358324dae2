#include "client/cpp/wsync_client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "daemon/service/status_mapping.h"

namespace wsync::client {
namespace {

using service::FromGrpcStatus;

struct Mapping {
  std::string name;
  void* addr = nullptr;
  uint64_t size = 0;
  bool owned = false;
};

class ClientImpl final : public Client {
 public:
  ClientImpl(std::shared_ptr<grpc::Channel> channel, std::function<void(const v1::PauseRequested&)> on_pause)
      : stub_(v1::Wsync::NewStub(channel)), on_pause_(std::move(on_pause)) {}

  ~ClientImpl() override {
    if (stream_) {
      {
        std::lock_guard<std::mutex> lock(write_mu_);
        stream_->WritesDone();
      }
      ctx_.TryCancel();
      if (reader_.joinable()) reader_.join();
      (void)stream_->Finish();
    }
    for (Mapping& m : maps_) {
      munmap(m.addr, m.size);
      if (m.owned) shm_unlink(m.name.c_str());
    }
  }

  absl::Status Start(const std::string& name) {
    stream_ = stub_->Attach(&ctx_);
    v1::AttachRequest hello;
    hello.mutable_hello()->set_client_name(name);
    hello.mutable_hello()->set_pid(getpid());
    if (!stream_->Write(hello)) return FromGrpcStatus(stream_->Finish());
    v1::AttachEvent first;
    if (!stream_->Read(&first) || !first.has_attached()) {
      return FromGrpcStatus(stream_->Finish());
    }
    session_ = first.attached().session_id();
    reader_ = std::thread([this] { ReadEvents(); });
    return absl::OkStatus();
  }

  const std::string& session_id() const override { return session_; }

  absl::StatusOr<ShmBuffer> Allocate(uint64_t nbytes) override {
    static std::atomic<int> counter{0};
    std::string name = absl::StrCat("/wsync-", getpid(), "-", counter++, "-", std::random_device()());
    int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) return absl::InternalError(absl::StrCat("shm_open ", name, ": ", std::strerror(errno)));
    if (ftruncate(fd, static_cast<off_t>(nbytes)) != 0) {
      close(fd);
      shm_unlink(name.c_str());
      return absl::ResourceExhaustedError(absl::StrCat("cannot size ", name, " to ", nbytes, " bytes"));
    }
    return MapFd(fd, name, 0, nbytes, nbytes, /*owned=*/true);
  }

  absl::StatusOr<ShmBuffer> WrapShm(const std::string& name, uint64_t offset, uint64_t nbytes) override {
    int fd = shm_open(name.c_str(), O_RDWR, 0);
    if (fd < 0) return absl::NotFoundError(absl::StrCat("shm object ", name, ": ", std::strerror(errno)));
    struct stat st;
    fstat(fd, &st);
    if (offset + nbytes > static_cast<uint64_t>(st.st_size)) {
      close(fd);
      return absl::InvalidArgumentError(
          absl::StrCat("[", offset, ", ", offset + nbytes, ") is outside ", name, " (", st.st_size, " bytes)"));
    }
    return MapFd(fd, name, offset, nbytes, st.st_size, /*owned=*/false);
  }

  absl::StatusOr<v1::RegisterModelResponse> RegisterModel(v1::RegisterModelRequest req) override {
    req.set_session_id(session_);
    grpc::ClientContext ctx;
    v1::RegisterModelResponse resp;
    if (grpc::Status s = stub_->RegisterModel(&ctx, req, &resp); !s.ok()) return FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::RegisterShardsResponse> RegisterShards(v1::RegisterShardsRequest req) override {
    req.set_session_id(session_);
    grpc::ClientContext ctx;
    v1::RegisterShardsResponse resp;
    if (grpc::Status s = stub_->RegisterShards(&ctx, req, &resp); !s.ok()) return FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::SyncResult> Sync(const v1::SyncRequest& req,
                                      const std::function<void(const v1::ProgressUpdate&)>& progress) override {
    grpc::ClientContext ctx;
    auto reader = stub_->Sync(&ctx, req);
    v1::SyncProgress msg;
    v1::SyncResult result;
    while (reader->Read(&msg)) {
      if (msg.has_progress() && progress) progress(msg.progress());
      if (msg.has_result()) result = msg.result();
    }
    if (grpc::Status s = reader->Finish(); !s.ok()) return FromGrpcStatus(s);
    return result;
  }

  absl::StatusOr<v1::WaitVersionResponse> WaitVersion(const std::string& model, const std::string& replica,
                                                      uint64_t min_version, uint64_t timeout_ms) override {
    grpc::ClientContext ctx;
    v1::WaitVersionRequest req;
    req.set_model_id(model);
    req.set_replica_id(replica);
    req.set_min_version(min_version);
    req.set_timeout_ms(timeout_ms);
    v1::WaitVersionResponse resp;
    if (grpc::Status s = stub_->WaitVersion(&ctx, req, &resp); !s.ok()) return FromGrpcStatus(s);
    return resp;
  }

  absl::StatusOr<v1::GetStatusResponse> GetStatus() override {
    grpc::ClientContext ctx;
    v1::GetStatusResponse resp;
    if (grpc::Status s = stub_->GetStatus(&ctx, v1::GetStatusRequest(), &resp); !s.ok()) return FromGrpcStatus(s);
    return resp;
  }

 private:
  absl::StatusOr<ShmBuffer> MapFd(int fd, const std::string& name, uint64_t offset, uint64_t nbytes,
                                  uint64_t size, bool owned) {
    void* addr = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (addr == MAP_FAILED) return absl::ResourceExhaustedError(absl::StrCat("mmap ", name));
    std::lock_guard<std::mutex> lock(maps_mu_);
    maps_.push_back({name, addr, size, owned});
    return ShmBuffer{name, offset, nbytes, static_cast<char*>(addr) + offset};
  }

  void ReadEvents() {
    v1::AttachEvent ev;
    while (stream_->Read(&ev)) {
      if (!ev.has_pause_requested()) continue;
      const auto& p = ev.pause_requested();
      if (on_pause_) on_pause_(p);
      v1::AttachRequest ack;
      ack.mutable_pause_ack()->set_model_id(p.model_id());
      ack.mutable_pause_ack()->set_replica_id(p.replica_id());
      ack.mutable_pause_ack()->set_version(p.version());
      std::lock_guard<std::mutex> lock(write_mu_);
      stream_->Write(ack);
    }
  }

  std::unique_ptr<v1::Wsync::Stub> stub_;
  std::function<void(const v1::PauseRequested&)> on_pause_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AttachRequest, v1::AttachEvent>> stream_;
  std::mutex write_mu_;
  std::thread reader_;
  std::string session_;
  std::mutex maps_mu_;
  std::vector<Mapping> maps_;
};

}  // namespace

v1::MemoryRef ShmBuffer::Ref() const {
  v1::MemoryRef r;
  r.mutable_host_shm()->set_name(shm_name);
  r.set_offset(offset);
  r.set_nbytes(nbytes);
  return r;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Attach(const ConnectOptions& options,
                                                       const std::string& client_name,
                                                       std::function<void(const v1::PauseRequested&)> on_pause) {
  auto channel = Connect(options);
  if (!channel.ok()) return channel.status();
  auto c = std::make_unique<ClientImpl>(*channel, std::move(on_pause));
  if (absl::Status s = c->Start(client_name); !s.ok()) return s;
  return std::unique_ptr<Client>(std::move(c));
}

}  // namespace wsync::client
