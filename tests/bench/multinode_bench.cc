// Multi-node sync benchmark on loopback: real wsyncd processes (a trainer
// daemon and up to four generator daemons, one replica each) sync a dense
// bf16 model over Gloo, against raw Gloo broadcasts of the same bytes
// between plain processes in the same run. Prints ratios; asserts nothing.
//
//   bazel run //tests/bench:multinode_bench [-- --layers 4 --replicas 1,2,4]
//   bazel run //tests/bench:multinode_bench -- --netns 2gbit   (as root)
//
// On plain loopback every process shares this machine's cores and one
// loopback device, so fan-out costs CPU and bandwidth that separate nodes
// would not share. With --netns each "node" (the trainer daemon, each
// generator daemon, each raw Gloo rank) runs in a network namespace of its
// own with a link shaped to the given rate (tests/bench/netns.sh), which
// models nodes that each have their own NIC.
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/cpp/wsync_client.h"
#include "daemon/layout/model_config.h"
#include "daemon/layout/recipe.h"
#include "daemon/service/convert.h"
#include "tests/testing/model_proto.h"
#include "tests/testing/process.h"

using namespace wsync;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "multinode_bench: %s\n", what.c_str());
  std::exit(1);
}

struct Flags {
  int layers = 4;
  int hidden = 2048;
  int iters = 3;
  uint64_t bucket_mib = 64;
  std::vector<int> replicas = {1, 2, 4};
  int copy_threads = 1;
  std::string netns_rate;  // "" = plain loopback
  std::string wsyncd, netns_script;
};

// Node i of the run: the trainer is node 0, generator replica i node i + 1.
std::string Host(const Flags& f, int node) {
  return f.netns_rate.empty() ? "127.0.0.1" : absl::StrCat("10.77.0.", node + 1);
}
std::vector<std::string> OnNode(const Flags& f, int node, std::vector<std::string> argv) {
  if (f.netns_rate.empty()) return argv;
  argv.insert(argv.begin(), {"ip", "netns", "exec", absl::StrCat("wsnode", node)});
  return argv;
}

// ------------------------------------------------------------ raw Gloo

// One process of a raw broadcast group: rendezvous through files in `dir`,
// then `iters` rounds of [barrier, broadcast `bytes` from rank 0 in
// `bucket`-sized messages, barrier]. Returns the best round time.
double RawRank(const std::string& host, const std::string& dir, int rank, int size, uint64_t bytes, uint64_t bucket,
               int iters) {
  gloo::transport::tcp::attr attr;
  attr.hostname = host;
  auto dev = gloo::transport::tcp::CreateDevice(attr);
  gloo::rendezvous::FileStore store(dir);
  auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
  ctx->setTimeout(std::chrono::seconds(120));
  ctx->connectFullMesh(store, dev);
  std::vector<uint8_t> buf(bytes, rank == 0 ? 1 : 0);
  double best = 1e30;
  for (int it = 0; it < iters; ++it) {
    gloo::BarrierOptions b(ctx);
    gloo::barrier(b);
    const double t0 = Now();
    for (uint64_t off = 0; off < bytes; off += bucket) {
      gloo::BroadcastOptions o(ctx);
      o.setOutput(buf.data() + off, std::min(bucket, bytes - off));
      o.setRoot(0);
      gloo::broadcast(o);
    }
    gloo::BarrierOptions b2(ctx);
    gloo::barrier(b2);
    best = std::min(best, Now() - t0);
  }
  return best;
}

// Raw broadcast from rank 0 to `receivers` ranks, each a process of its
// own on its node (this binary re-run with --raw-child). Rank 0 prints its
// best time.
double RawBroadcast(const Flags& f, const char* self, int receivers, uint64_t bytes, uint64_t bucket) {
  const std::string dir = testing::MakeTempDir();
  std::vector<std::unique_ptr<testing::Process>> kids;
  for (int r = 0; r <= receivers; ++r) {
    kids.push_back(std::make_unique<testing::Process>(OnNode(
        f, r, {self, "--raw-child", Host(f, r), dir, std::to_string(r), std::to_string(receivers + 1),
               std::to_string(bytes), std::to_string(bucket), std::to_string(f.iters)})));
  }
  for (auto& k : kids) {
    if (k->Wait(600000) != 0) Die(absl::StrCat("raw gloo child failed: ", k->Stderr()));
  }
  double t = 0;
  if (!absl::SimpleAtod(absl::StripAsciiWhitespace(kids[0]->Stdout()), &t)) Die("raw gloo rank 0 printed no time");
  return t;
}

// ------------------------------------------------------------ wsync

struct Daemon {
  std::unique_ptr<testing::Process> proc;
  std::string socket, address;

  std::unique_ptr<client::Client> Attach(const std::string& name) {
    client::ConnectOptions o;
    o.socket = socket;
    auto c = client::Client::Attach(o, name, nullptr);
    if (!c.ok()) Die(c.status().ToString());
    return std::move(*c);
  }
};

std::unique_ptr<Daemon> StartDaemon(const Flags& f, const std::string& dir, int node, const std::string& id,
                                    const std::string& coordinator) {
  auto d = std::make_unique<Daemon>();
  d->socket = dir + "/" + id + ".sock";
  std::vector<std::string> argv = {f.wsyncd, "--socket", d->socket, "--daemon-id", id, "--listen",
                                   Host(f, node) + ":0", "--data-host", Host(f, node), "--insecure",
                                   "--log-level", "warn", "--copy-threads", std::to_string(f.copy_threads)};
  if (!coordinator.empty()) argv.insert(argv.end(), {"--peers", coordinator});
  d->proc = std::make_unique<testing::Process>(OnNode(f, node, argv));
  client::ConnectOptions o;
  o.socket = d->socket;
  o.connect_timeout_ms = 200;
  if (!testing::WaitFor([&] { return !d->proc->Running() || client::Connect(o).ok(); }, 30000) ||
      !d->proc->Running()) {
    Die(absl::StrCat("wsyncd ", id, " did not start: ", d->proc->Stderr()));
  }
  auto st = d->Attach("probe")->GetStatus();
  if (!st.ok()) Die(st.status().ToString());
  for (const auto& e : st->endpoints()) {
    if (e.kind() == "tcp") d->address = e.address();
  }
  return d;
}

// One TP=1 rank of `recipe` on `daemon`, in bf16 shared memory.
struct Rank {
  std::unique_ptr<client::Client> client;
  std::vector<client::ShmBuffer> bufs;
};

Rank Register(Daemon& d, const layout::ModelSpec& spec, const layout::ModelConfig& cfg, bool source,
              const std::string& replica, const std::string& coordinator) {
  Rank r;
  r.client = d.Attach(source ? "trainer" : replica);
  v1::RegisterModelRequest m = testing::ModelRequest("bench", cfg);
  m.set_session_id(r.client->session_id());
  if (auto s = r.client->RegisterModel(m); !s.ok()) Die(s.status().ToString());
  layout::RankCoords one;
  const std::string recipe = source ? "megatron" : "vllm";
  auto shards = layout::BuildShards(spec, cfg, recipe, {}, one, layout::DType::kBF16);
  if (!shards.ok()) Die(shards.status().ToString());
  v1::RegisterShardsRequest req;
  req.set_session_id(r.client->session_id());
  req.set_model_id("bench");
  req.set_role(source ? v1::SOURCE : v1::TARGET);
  req.set_replica_id(replica);
  req.mutable_rank()->set_tp_size(1);
  req.mutable_rank()->set_pp_size(1);
  req.mutable_recipe()->set_name(recipe);
  req.set_coordinator(coordinator);
  for (const layout::ShardSpec& s : *shards) {
    const uint64_t bytes = s.shape.NumElements() * 2;
    auto b = r.client->Allocate(bytes);
    if (!b.ok()) Die(b.status().ToString());
    std::memset(b->data, source ? 0x3c : 0, bytes);
    v1::BufferSpec* bs = req.add_buffers();
    service::ToProto(s, {}, bs);
    bs->clear_pieces();  // the recipe's
    *bs->mutable_memory() = b->Ref();
    r.bufs.push_back(*b);
  }
  if (auto s = r.client->RegisterShards(req); !s.ok()) Die(s.status().ToString());
  return r;
}

Flags Parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die(a + " needs a value");
      return argv[++i];
    };
    if (a == "--layers") {
      f.layers = std::atoi(next().c_str());
    } else if (a == "--hidden") {
      f.hidden = std::atoi(next().c_str());
    } else if (a == "--iters") {
      f.iters = std::atoi(next().c_str());
    } else if (a == "--bucket-mib") {
      f.bucket_mib = std::strtoull(next().c_str(), nullptr, 10);
    } else if (a == "--wsyncd") {
      f.wsyncd = next();
    } else if (a == "--copy-threads") {
      f.copy_threads = std::atoi(next().c_str());
    } else if (a == "--netns") {
      f.netns_rate = next();
    } else if (a == "--replicas") {
      f.replicas.clear();
      for (absl::string_view p : absl::StrSplit(next(), ',')) {
        int k = 0;
        if (!absl::SimpleAtoi(p, &k) || k < 1 || k > 8) Die("--replicas takes counts from 1 to 8, e.g. 1,2,4");
        f.replicas.push_back(k);
      }
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "multinode_bench: wsync multi-node syncs over Gloo on loopback against raw Gloo broadcasts.\n"
          "  --layers N       decoder layers of the llama-style model (default 4)\n"
          "  --hidden N       hidden size; MLP is 2.75x, vocab 32000 (default 2048)\n"
          "  --replicas LIST  generator replicas per run, one daemon each (default 1,2,4)\n"
          "  --iters N        timed rounds per point; the best is kept (default 3)\n"
          "  --bucket-mib N   bucket size for both wsync and raw Gloo (default 64)\n"
          "  --copy-threads N wsyncd --copy-threads (default 1: the daemons share this machine)\n"
          "  --netns RATE     one network namespace per node, links shaped to RATE (e.g. 2gbit);\n"
          "                   needs root and iproute2 (tests/bench/netns.sh)\n"
          "  --wsyncd PATH    the daemon binary (default: from runfiles)\n");
      std::exit(0);
    } else {
      Die("unknown flag " + a + " (see --help)");
    }
  }
  if (f.layers < 1 || f.hidden < 64 || f.hidden % 64 || f.iters < 1 || f.bucket_mib < 1 || f.copy_threads < 1) {
    Die("need --layers >= 1, --hidden a multiple of 64, --iters >= 1, --bucket-mib >= 1, --copy-threads >= 1");
  }
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 9 && std::string(argv[1]) == "--raw-child") {
    const double t = RawRank(argv[2], argv[3], std::atoi(argv[4]), std::atoi(argv[5]),
                             std::strtoull(argv[6], nullptr, 10), std::strtoull(argv[7], nullptr, 10),
                             std::atoi(argv[8]));
    std::printf("%.9f\n", t);
    return 0;
  }
  Flags f = Parse(argc, argv);
  // Runfiles beside the binary (bazel-bin), else the test environment's.
  auto runfile = [&](const std::string& rel) {
    const std::string beside = std::string(argv[0]) + ".runfiles/wsync/" + rel;
    return access(beside.c_str(), F_OK) == 0 ? beside : testing::Runfile(rel);
  };
  if (f.wsyncd.empty()) f.wsyncd = runfile("daemon/wsyncd");
  const int max_k = *std::max_element(f.replicas.begin(), f.replicas.end());
  static std::string netns_down;
  if (!f.netns_rate.empty()) {
    f.netns_script = runfile("tests/bench/netns.sh");
    auto up = testing::Run({"bash", f.netns_script, "up", std::to_string(max_k + 1), f.netns_rate});
    if (up.exit_code != 0) Die("netns.sh up failed (root and iproute2 needed): " + up.out + up.err);
    netns_down = f.netns_script + " down " + std::to_string(max_k + 1);
    std::atexit([] { (void)std::system(("bash " + netns_down).c_str()); });
  }
  const std::string config_json = absl::StrCat(
      R"({"model_type": "llama", "hidden_size": )", f.hidden, R"(, "intermediate_size": )", f.hidden * 11 / 4,
      R"(, "num_attention_heads": )", f.hidden / 64, R"(, "num_key_value_heads": )", f.hidden / 256 ? f.hidden / 256 : 1,
      R"(, "num_hidden_layers": )", f.layers, R"(, "vocab_size": 32000, "tie_word_embeddings": false})");
  auto cfg = layout::ParseHfConfig(config_json);
  if (!cfg.ok()) Die(cfg.status().ToString());
  if (auto s = layout::NormalizeConfig(&*cfg); !s.ok()) Die(s.ToString());
  auto tensors = layout::CanonicalTensors(*cfg, layout::DType::kBF16);
  if (!tensors.ok()) Die(tensors.status().ToString());
  auto spec = layout::ModelSpec::Create(*tensors);
  if (!spec.ok()) Die(spec.status().ToString());
  const uint64_t bytes = spec->TotalBytes();
  const uint64_t bucket = f.bucket_mib << 20;
  std::printf("model: llama-style, %d layers, hidden %d, %zu tensors, %.1f MiB bf16; bucket %llu MiB; best of %d\n",
              f.layers, f.hidden, static_cast<size_t>(spec->size()), bytes / 1048576.0,
              static_cast<unsigned long long>(f.bucket_mib), f.iters);
  std::printf("nodes: %s; wsyncd --copy-threads %d; %ld cores\n",
              f.netns_rate.empty() ? "processes on loopback"
                                   : absl::StrCat("network namespaces, links shaped to ", f.netns_rate).c_str(),
              f.copy_threads, sysconf(_SC_NPROCESSORS_ONLN));

  // Raw Gloo first, before any daemon runs.
  std::vector<double> raw;
  for (int k : f.replicas) raw.push_back(RawBroadcast(f, argv[0], k, bytes, bucket));

  const std::string dir = testing::MakeTempDir();
  auto t0 = StartDaemon(f, dir, 0, "t0", "");
  std::vector<std::unique_ptr<Daemon>> gens;
  for (int i = 0; i < max_k; ++i) gens.push_back(StartDaemon(f, dir, i + 1, absl::StrCat("g", i), t0->address));
  std::vector<Rank> ranks;
  ranks.push_back(Register(*t0, *spec, *cfg, true, "", t0->address));
  for (int i = 0; i < max_k; ++i) {
    ranks.push_back(Register(*gens[i], *spec, *cfg, false, absl::StrCat("gen-", i), t0->address));
  }
  auto driver = t0->Attach("bench-driver");
  uint64_t version = 0;
  struct Point {
    int k;
    double raw, total, transfer;
  };
  std::vector<Point> points;
  for (size_t pi = 0; pi < f.replicas.size(); ++pi) {
    const int k = f.replicas[pi];
    v1::SyncRequest req;
    req.set_model_id("bench");
    req.set_max_bucket_bytes(bucket);
    req.set_deadline_ms(600000);
    for (int i = 0; i < k; ++i) req.add_target_replicas(absl::StrCat("gen-", i));
    double best_total = 1e30, best_transfer = 1e30;
    for (int it = 0; it <= f.iters; ++it) {  // round 0 builds the communicator
      req.set_version(++version);
      const double start = Now();
      auto r = driver->Sync(req, nullptr);
      const double wall = Now() - start;
      if (!r.ok()) Die(absl::StrCat("sync to ", k, " replica(s) failed: ", r.status().ToString()));
      if (it == 0) continue;
      best_total = std::min(best_total, wall);
      best_transfer = std::min(best_transfer, r->timings().transfer_ms() / 1000.0);
    }
    points.push_back({k, raw[pi], best_total, best_transfer});
  }

  std::printf("\n%-9s %-12s %-12s %-14s %-16s %-16s\n", "replicas", "raw gloo", "wsync sync", "wsync transfer",
              "sync/raw thrpt", "transfer/raw");
  for (const Point& p : points) {
    std::printf("%-9d %8.1f ms  %8.1f ms  %10.1f ms   %12.0f%%    %12.0f%%\n", p.k, p.raw * 1e3, p.total * 1e3,
                p.transfer * 1e3, 100 * p.raw / p.total, 100 * p.raw / p.transfer);
  }
  std::printf("  (throughput ratio = raw time / wsync time for the same %.1f MiB; target >= 80%%)\n",
              bytes / 1048576.0);
  const Point& one = points.front();
  std::printf("\nfan-out against %d replica(s):\n", one.k);
  for (const Point& p : points) {
    std::printf("  %d replica(s): wsync sync %+.0f%%, raw gloo %+.0f%%\n", p.k, 100 * (p.total / one.total - 1),
                100 * (p.raw / one.raw - 1));
  }
  std::printf("  (target: 1 -> 4 replicas adds at most 30%%)\n");
  return 0;
}
