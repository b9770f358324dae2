// Fuzz target: RegisterModel, RegisterShards and Sync requests as protobuf
// bytes (the first byte picks which), through the public service's checks
// (request limits, the proto conversion) and into a real in-process core,
// whose validation must refuse them cleanly. A model with a config is
// registered up front so that shard registrations reach the recipe and
// piece checks.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "daemon/common/logging.h"
#include "daemon/core/core.h"
#include "daemon/core/pause_acker.h"
#include "daemon/service/convert.h"
#include "daemon/service/request_limits.h"
#include "wsync/v1/wsync.pb.h"

namespace {

using wsync::core::Caller;

struct World {
  std::unique_ptr<wsync::core::Core> core;
  std::string session;
  std::unique_ptr<wsync::core::PauseAcker> sink;
  Caller me = Caller::Local(getuid(), getgid(), getpid(), false);

  World() {
    wsync::LogOptions log;
    log.level = "off";
    (void)wsync::ConfigureLogging(log);
    wsync::core::CoreOptions o;
    o.daemon_id = "fuzz";
    o.limits.max_tensors_per_model = 4096;
    core = wsync::core::Core::Create(o);
    sink = std::make_unique<wsync::core::PauseAcker>(core.get(), &session);
    session = *core->OpenSession({"fuzz", getpid(), me}, sink.get());
    wsync::core::RegisterModelArgs m;
    m.caller = me;
    m.session_id = session;
    m.model_id = "m";
    m.has_config = true;
    m.config.family = "qwen3_moe";
    m.config.hidden_size = 16;
    m.config.num_attention_heads = 4;
    m.config.num_key_value_heads = 2;
    m.config.head_dim = 4;
    m.config.intermediate_size = 32;
    m.config.moe_intermediate_size = 8;
    m.config.num_experts = 4;
    m.config.vocab_size = 64;
    m.config.num_hidden_layers = 2;
    (void)core->RegisterModel(m);
    // Two real shm objects of this process: every shm name in a request is
    // pointed at one of them, so that registrations get past the name
    // lookup and into bounds, overlap and reservation checks, without ever
    // touching another process's memory.
    for (std::string* name : {&shm[0], &shm[1]}) {
      *name = "/wsync-fuzz-" + std::to_string(getpid()) + "-" + std::to_string(name - shm);
      int fd = shm_open(name->c_str(), O_CREAT | O_RDWR, 0600);
      if (fd < 0 || ftruncate(fd, 1 << 16) != 0) std::abort();
      close(fd);
    }
    // libFuzzer ends with exit(): the objects go with the process.
    static const std::string* names = shm;
    std::atexit([] {
      for (int i = 0; i < 2; ++i) shm_unlink(names[i].c_str());
    });
  }
  std::string shm[2];
};

// The core's arguments for a request the service layer would pass on (parsed,
// within the request limits, converted), from `w`'s caller and session.
template <typename Request>
auto Accepted(const std::string& bytes, World* w)
    -> std::optional<typename decltype(wsync::service::FromProto(std::declval<Request>()))::value_type> {
  Request req;
  if (!req.ParseFromString(bytes) || !wsync::service::CheckRequestLimits(req, 1024, 4096).ok()) return std::nullopt;
  auto args = wsync::service::FromProto(req);
  if (!args.ok()) return std::nullopt;
  args->caller = w->me;
  if constexpr (!std::is_same_v<Request, wsync::v1::SyncRequest>) args->session_id = w->session;
  return *std::move(args);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();
  if (size < 1) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0] % 3) {
    case 0:
      if (auto args = Accepted<wsync::v1::RegisterModelRequest>(bytes, w); args && args->model_id != "m") {
        if (w->core->RegisterModel(*args).ok()) {
          (void)w->core->Unregister(w->me, args->model_id, "", nullptr, nullptr);
        }
      }
      break;
    case 1:
      if (auto args = Accepted<wsync::v1::RegisterShardsRequest>(bytes, w)) {
        args->coordinator.clear();
        for (auto& b : args->buffers) b.shm_name = w->shm[b.shm_name.size() % 2];
        if (w->core->RegisterShards(*args).ok()) {  // leave the model as it was: drop just this rank
          (void)w->core->Unregister(w->me, args->model_id, args->replica_id, &args->role, &args->rank);
        }
      }
      break;
    case 2:
      if (auto args = Accepted<wsync::v1::SyncRequest>(bytes, w)) {
        args->deadline_ms = 1000;
        (void)w->core->Sync(*args, nullptr, nullptr);
      }
      break;
  }
  return 0;
}
