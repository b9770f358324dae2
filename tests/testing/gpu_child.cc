#include "tests/testing/gpu_child.h"

#include <cuda_runtime_api.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "client/cpp/cuda_memory.h"
#include "client/cpp/wsync_client.h"

namespace wsync::testing {
namespace {

bool WriteAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = write(fd, c, n);
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

uint64_t Size(const GpuRank& r, size_t i) { return r.bytes[i].empty() ? r.sizes.at(i) : r.bytes[i].size(); }

void Reply(const std::string& line) {
  std::string l = line + "\n";
  WriteAll(1, l.data(), l.size());
}

// The child: stdin carries commands, stdout replies.
int RunChild(const std::string& socket, const std::string& name, const std::string& scenario, int device,
             const GpuScenarioFn& scenarios) {
  auto fail = [](const std::string& why) {
    Reply("err " + why);
    return 1;
  };
  if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return fail(absl::StrCat("cudaSetDevice(", device, "): ", cudaGetErrorString(e)));
  }
  GpuScenario sc = scenarios(scenario, 1);
  // One allocation per rank, carved into 256-byte aligned buffers, so that
  // registrations exercise offsets from the allocation base.
  std::vector<std::vector<char*>> ptrs(sc.ranks.size());
  for (size_t r = 0; r < sc.ranks.size(); ++r) {
    uint64_t total = 0;
    std::vector<uint64_t> offs;
    for (size_t i = 0; i < sc.ranks[r].bytes.size(); ++i) {
      offs.push_back(total);
      total += (Size(sc.ranks[r], i) + 255) / 256 * 256;
    }
    char* base = nullptr;
    if (cudaError_t e = cudaMalloc(reinterpret_cast<void**>(&base), total + 256); e != cudaSuccess) {
      return fail(absl::StrCat("cudaMalloc(", total + 256, " bytes) for rank ", r, ": ", cudaGetErrorString(e)));
    }
    for (size_t i = 0; i < offs.size(); ++i) ptrs[r].push_back(base + 256 + offs[i]);
  }
  auto fill = [&](const GpuScenario& s, uint64_t seed) {
    for (size_t r = 0; r < s.ranks.size(); ++r) {
      for (size_t i = 0; i < s.ranks[r].bytes.size(); ++i) {
        const auto& b = s.ranks[r].bytes[i];
        cudaError_t e = b.empty() ? cudaMemset(ptrs[r][i], static_cast<int>(seed & 0xff), Size(s.ranks[r], i))
                                  : cudaMemcpy(ptrs[r][i], b.data(), b.size(), cudaMemcpyHostToDevice);
        if (e != cudaSuccess) return false;
      }
    }
    return cudaDeviceSynchronize() == cudaSuccess;
  };
  if (!fill(sc, 1)) return fail("filling the buffers failed");
  client::ConnectOptions co;
  co.socket = socket;
  absl::StatusOr<std::unique_ptr<client::Client>> c = absl::UnavailableError("not tried");
  for (int i = 0; i < 300 && !c.ok(); ++i) {
    c = client::Client::Attach(co, name);
    if (!c.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!c.ok()) return fail(c.status().ToString());
  if (sc.model) {
    auto m = (*c)->RegisterModel(*sc.model);
    if (!m.ok()) return fail(m.status().ToString());
  }
  for (size_t r = 0; r < sc.ranks.size(); ++r) {
    v1::RegisterShardsRequest req = sc.ranks[r].request;
    for (int i = 0; i < req.buffers_size(); ++i) {
      auto ref = client::CudaMemoryRef(ptrs[r][i], Size(sc.ranks[r], i));
      if (!ref.ok()) return fail(ref.status().ToString());
      *req.mutable_buffers(i)->mutable_memory() = *ref;
    }
    // A generator may come up before the trainer has registered the model:
    // it waits for the model as an engine's start-up would.
    auto s = (*c)->RegisterShards(req);
    for (int i = 0; i < 600 && !s.ok() && s.status().code() == absl::StatusCode::kNotFound; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      s = (*c)->RegisterShards(req);
    }
    if (!s.ok()) return fail(s.status().ToString());
  }
  Reply("ok");
  char line[256];
  FILE* in = fdopen(0, "r");
  while (fgets(line, sizeof(line), in) != nullptr) {
    std::vector<std::string> w = absl::StrSplit(absl::string_view(line), ' ', absl::SkipWhitespace());
    for (auto& x : w) absl::StripTrailingAsciiWhitespace(&x);
    if (w.empty()) continue;
    if (w[0] == "read" && w.size() == 3) {
      int r = 0, i = 0;
      if (!absl::SimpleAtoi(w[1], &r) || !absl::SimpleAtoi(w[2], &i) || r < 0 || r >= (int)ptrs.size() || i < 0 ||
          i >= (int)ptrs[r].size()) {
        Reply("err bad read");
        continue;
      }
      std::vector<uint8_t> host(Size(sc.ranks[r], i));
      if (cudaMemcpy(host.data(), ptrs[r][i], host.size(), cudaMemcpyDeviceToHost) != cudaSuccess) {
        Reply("err cudaMemcpy");
        continue;
      }
      Reply(absl::StrCat("data ", host.size()));
      WriteAll(1, host.data(), host.size());
    } else if (w[0] == "fill" && w.size() == 2) {
      uint64_t seed = 0;
      if (!absl::SimpleAtoi(w[1], &seed)) {
        Reply("err bad fill");
        continue;
      }
      Reply(fill(scenarios(scenario, seed), seed) ? "ok" : "err fill failed");
    } else if (w[0] == "quit") {
      break;
    }
  }
  (*c).reset();
  return 0;
}

}  // namespace

v1::RegisterShardsRequest RankRequest(const std::string& model, const std::string& scenario, int tp, int tp_size) {
  v1::RegisterShardsRequest req;
  const bool trainer = scenario.rfind("trainer", 0) == 0;
  req.set_model_id(model);
  req.set_role(trainer ? v1::SOURCE : v1::TARGET);
  if (!trainer) {
    req.set_replica_id("gen");
    req.set_update_mode(scenario.rfind("gen-in_place", 0) == 0 ? v1::IN_PLACE : v1::STAGED);
  }
  req.mutable_rank()->set_tp(tp);
  req.mutable_rank()->set_tp_size(tp_size);
  return req;
}

int MaybeRunGpuChild(int argc, char** argv, const GpuScenarioFn& scenarios) {
  if (argc != 6 || std::string(argv[1]) != "--gpu-child") return -1;
  int device = 0;
  if (!absl::SimpleAtoi(argv[5], &device)) return 2;
  return RunChild(argv[2], argv[3], argv[4], device, scenarios);
}

absl::StatusOr<std::unique_ptr<GpuChild>> GpuChild::Spawn(const std::string& socket, const std::string& client_name,
                                                          const std::string& scenario, int device) {
  int to[2], from[2];
  if (pipe(to) != 0 || pipe(from) != 0) return absl::InternalError("pipe failed");
  const std::string dev = std::to_string(device);
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[1]);
    close(from[0]);
    execl("/proc/self/exe", "gpu-child", "--gpu-child", socket.c_str(), client_name.c_str(), scenario.c_str(),
          dev.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  std::unique_ptr<GpuChild> c(new GpuChild);
  c->pid_ = pid;
  c->to_ = to[1];
  c->from_ = from[0];
  return c;
}

GpuChild::~GpuChild() {
  Kill();
  if (to_ >= 0) close(to_);
  if (from_ >= 0) close(from_);
}

void GpuChild::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

absl::StatusOr<std::string> GpuChild::ReadLine() {
  std::string line;
  char ch;
  while (true) {
    ssize_t r = read(from_, &ch, 1);
    if (r <= 0) return absl::UnavailableError("the GPU child exited");
    if (ch == '\n') return line;
    line.push_back(ch);
  }
}

absl::Status GpuChild::WaitRegistered() {
  auto l = ReadLine();
  if (!l.ok()) return l.status();
  if (*l != "ok") return absl::InternalError(absl::StrCat("GPU child: ", *l));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> GpuChild::Read(int rank, int buffer) {
  std::string cmd = absl::StrCat("read ", rank, " ", buffer, "\n");
  if (!WriteAll(to_, cmd.data(), cmd.size())) return absl::UnavailableError("the GPU child exited");
  auto l = ReadLine();
  if (!l.ok()) return l.status();
  uint64_t n = 0;
  if (l->rfind("data ", 0) != 0 || !absl::SimpleAtoi(l->substr(5), &n)) {
    return absl::InternalError(absl::StrCat("GPU child: ", *l));
  }
  std::vector<uint8_t> out(n);
  if (!ReadAll(from_, out.data(), n)) return absl::UnavailableError("the GPU child exited");
  return out;
}

absl::Status GpuChild::Fill(uint64_t seed) {
  std::string cmd = absl::StrCat("fill ", seed, "\n");
  if (!WriteAll(to_, cmd.data(), cmd.size())) return absl::UnavailableError("the GPU child exited");
  auto l = ReadLine();
  if (!l.ok()) return l.status();
  if (*l != "ok") return absl::InternalError(absl::StrCat("GPU child: ", *l));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ColocatedDaemon>> ColocatedDaemon::Start(const std::string& trainer,
                                                                        const std::string& generator,
                                                                        server::Options options) {
  char dir[] = "/tmp/wsync-gpu-XXXXXX";
  if (mkdtemp(dir) == nullptr) return absl::InternalError("mkdtemp failed");
  options.socket = std::string(dir) + "/wsyncd.sock";
  std::unique_ptr<ColocatedDaemon> d(new ColocatedDaemon);
  d->dir_ = dir;
  // Children first: they exec a fresh image, the daemon comes up meanwhile.
  auto t = GpuChild::Spawn(options.socket, "trainer", trainer);
  if (!t.ok()) return t.status();
  d->trainer_ = std::move(*t);
  auto g = GpuChild::Spawn(options.socket, "generator", generator);
  if (!g.ok()) return g.status();
  d->generator_ = std::move(*g);
  auto s = server::Server::Start(options);
  if (!s.ok()) return s.status();
  d->server_ = std::move(*s);
  if (absl::Status st = d->trainer_->WaitRegistered(); !st.ok()) return st;
  if (absl::Status st = d->generator_->WaitRegistered(); !st.ok()) return st;
  client::ConnectOptions co;
  co.socket = options.socket;
  auto c = client::Client::Attach(co, "driver");
  if (!c.ok()) return c.status();
  d->driver_ = std::move(*c);
  return d;
}

ColocatedDaemon::~ColocatedDaemon() {
  driver_.reset();
  trainer_.reset();
  generator_.reset();
  if (server_) server_->Shutdown();
  server_.reset();
  unlink((dir_ + "/wsyncd.sock").c_str());
  rmdir(dir_.c_str());
}

absl::StatusOr<v1::SyncResult> ColocatedDaemon::Sync(const std::string& model, uint64_t version,
                                                     uint64_t bucket_bytes) {
  v1::SyncRequest req;
  req.set_model_id(model);
  req.set_version(version);
  req.set_max_bucket_bytes(bucket_bytes);
  return driver_->Sync(req, nullptr);
}

}  // namespace wsync::testing
