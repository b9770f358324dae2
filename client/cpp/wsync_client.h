#ifndef WSYNC_CLIENT_CPP_WSYNC_CLIENT_H_
#define WSYNC_CLIENT_CPP_WSYNC_CLIENT_H_

// C++ client of a local wsyncd: one attached session, host buffers in POSIX
// shared memory, registration, syncs with progress, and version waits.
//
//   auto c = wsync::client::Client::Attach({.socket = "/run/wsync/wsyncd.sock"}, "trainer-0");
//   auto buf = (*c)->Allocate(4096 * 4096 * 2);             // or WrapShm(name, size)
//   (*c)->RegisterShards(args-with-buf);                     // pieces or a recipe
//   (*c)->Sync(model, version, {}, [](const v1::ProgressUpdate& p) { ... });

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cpp/connection.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync::client {

// A range of host shared memory the client can register.
struct ShmBuffer {
  std::string shm_name;  // "/wsync-..."
  uint64_t offset = 0;
  uint64_t nbytes = 0;
  void* data = nullptr;  // mapped in this process
  // A MemoryRef for a BufferSpec.
  v1::MemoryRef Ref() const;
};

// Thread-safe, except that Close() must not race other calls.
class Client {
 public:
  // Connects and attaches as `client_name`. Pause requests are acknowledged
  // by a background thread after `on_pause` (optional) returns.
  static absl::StatusOr<std::unique_ptr<Client>> Attach(
      const ConnectOptions& options, const std::string& client_name,
      std::function<void(const v1::PauseRequested&)> on_pause = nullptr);

  // Closes the session (the daemon releases its registrations) and frees
  // shared memory this client allocated.
  virtual ~Client() = default;

  virtual const std::string& session_id() const = 0;

  // New shared memory of `nbytes` bytes, zeroed, mapped here.
  virtual absl::StatusOr<ShmBuffer> Allocate(uint64_t nbytes) = 0;
  // Existing shared memory owned by the caller (maps it here too).
  virtual absl::StatusOr<ShmBuffer> WrapShm(const std::string& shm_name, uint64_t offset,
                                            uint64_t nbytes) = 0;

  // The RPCs, with the session id filled in. Errors are the daemon's.
  virtual absl::StatusOr<v1::RegisterModelResponse> RegisterModel(v1::RegisterModelRequest req) = 0;
  virtual absl::StatusOr<v1::RegisterShardsResponse> RegisterShards(v1::RegisterShardsRequest req) = 0;
  virtual absl::StatusOr<v1::SyncResult> Sync(
      const v1::SyncRequest& req, const std::function<void(const v1::ProgressUpdate&)>& progress) = 0;
  virtual absl::StatusOr<v1::WaitVersionResponse> WaitVersion(const std::string& model,
                                                              const std::string& replica,
                                                              uint64_t min_version,
                                                              uint64_t timeout_ms) = 0;
  virtual absl::StatusOr<v1::GetStatusResponse> GetStatus() = 0;
};

}  // namespace wsync::client

#endif  // WSYNC_CLIENT_CPP_WSYNC_CLIENT_H_
