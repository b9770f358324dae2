#ifndef WSYNC_TESTS_TESTING_GPU_CHILD_H_
#define WSYNC_TESTS_TESTING_GPU_CHILD_H_

// GPU clients in child processes, for tests and benchmarks of colocated
// syncs. CUDA IPC handles cannot be opened by the process that made them,
// so the buffers a daemon syncs live in other processes: the test binary
// re-runs itself (/proc/self/exe --gpu-child ...) as a client that allocates
// a scenario's buffers on the GPU, fills them, registers them, and then
// answers read-back and refill requests on a pipe.

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/cpp/wsync_client.h"
#include "daemon/server/server.h"
#include "wsync/v1/wsync.pb.h"

namespace wsync::testing {

// One rank's registration; the child fills in every buffer's memory.
struct GpuRank {
  v1::RegisterShardsRequest request;
  // Each buffer's bytes for a given fill seed; an empty one means
  // sizes[i] bytes, all equal to the seed's low byte (set on the GPU).
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<uint64_t> sizes;
};

// What one child registers. `model`, when set, is registered first.
struct GpuScenario {
  std::optional<v1::RegisterModelRequest> model;
  std::vector<GpuRank> ranks;
};

// The request header of one rank of scenario `scenario` under the naming
// the GPU tests share: names starting with "trainer" register sources;
// others register replica "gen", in place for names starting with
// "gen-in_place", else staged.
v1::RegisterShardsRequest RankRequest(const std::string& model, const std::string& scenario, int tp, int tp_size);

// Builds a scenario by name for a fill seed; the parent and the child call
// the same function, so both know the layout and the bytes.
using GpuScenarioFn = std::function<GpuScenario(const std::string& name, uint64_t seed)>;

// In main(): if argv is a --gpu-child invocation, runs the child and
// returns its exit code; otherwise returns -1.
int MaybeRunGpuChild(int argc, char** argv, const GpuScenarioFn& scenarios);

// The parent's handle on a child. Not thread-safe.
class GpuChild {
 public:
  // Starts `/proc/self/exe --gpu-child` as client `client_name` of the
  // daemon at `socket` (it retries connecting for 30 s, so the daemon may
  // start after this), on CUDA device `device`, registering scenario
  // `scenario` filled with seed 1. Call before this process uses CUDA.
  static absl::StatusOr<std::unique_ptr<GpuChild>> Spawn(const std::string& socket, const std::string& client_name,
                                                         const std::string& scenario, int device = 0);
  // SIGKILLs the child if it still runs.
  ~GpuChild();

  // Waits until the child has registered everything (or failed: its error).
  absl::Status WaitRegistered();
  // The current bytes of buffer `buffer` of rank `rank`.
  absl::StatusOr<std::vector<uint8_t>> Read(int rank, int buffer);
  // Rewrites every buffer with the scenario's bytes for `seed`.
  absl::Status Fill(uint64_t seed);
  void Kill();
  pid_t pid() const { return pid_; }

 private:
  GpuChild() = default;
  absl::StatusOr<std::string> ReadLine();
  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
};

// A daemon in this process serving a trainer child and a generator child
// (scenarios `trainer` and `generator`), plus a client of its own that
// drives syncs. Not thread-safe.
class ColocatedDaemon {
 public:
  // Spawns both children, then starts the daemon (on a socket in a fresh
  // /tmp directory, other settings from `options`) and waits until both
  // children have registered. Call before this process forks anything else.
  static absl::StatusOr<std::unique_ptr<ColocatedDaemon>> Start(const std::string& trainer,
                                                                const std::string& generator,
                                                                server::Options options = {});
  // Stops the driver, kills the children, shuts the daemon down, removes
  // its directory.
  ~ColocatedDaemon();

  absl::StatusOr<v1::SyncResult> Sync(const std::string& model, uint64_t version, uint64_t bucket_bytes = 0);
  GpuChild& trainer() { return *trainer_; }
  GpuChild& generator() { return *generator_; }
  client::Client& driver() { return *driver_; }

 private:
  ColocatedDaemon() = default;
  std::string dir_;
  std::unique_ptr<GpuChild> trainer_, generator_;
  std::unique_ptr<server::Server> server_;
  std::unique_ptr<client::Client> driver_;
};

}  // namespace wsync::testing

#endif  // WSYNC_TESTS_TESTING_GPU_CHILD_H_
