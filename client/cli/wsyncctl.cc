#include "client/cli/wsyncctl.h"

#include <CLI/CLI.hpp>
#include <chrono>
#include <exception>
#include <map>
#include <string>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/convert/convert.h"
#include "client/cpp/connection.h"
#include "daemon/service/convert.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "wsync/v1/wsync.grpc.pb.h"

namespace wsync::cli {
namespace {

constexpr char kDescription[] =
    "wsyncctl: inspect and drive a wsync daemon (wsyncd).\n\n"
    "Talks to the local daemon's Unix socket (--socket) or to a daemon over TCP\n"
    "(--address host:port, with --tls-ca or --insecure).\n"
    "Exit codes: 0 ok, 1 the daemon reported an error or is not serving,\n"
    "2 bad command line, 3 no daemon answered.";

struct Global {
  client::ConnectOptions connect;
  bool json = false;
  int64_t timeout_ms = 5000;
};

std::string HumanBytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrCat(b, " B") : absl::StrFormat("%.1f %s", v, units[u]);
}

// A model's TENSORS column: "22", or "29 (7 FP8, channel scales)".
template <typename M>
std::string TensorsColumn(const M& m) {
  if (m.fp8_weights() == 0) return absl::StrCat(m.num_tensors());
  const char* scaling = m.fp8_scaling() == v1::FP8_SCALING_BLOCK     ? "block"
                        : m.fp8_scaling() == v1::FP8_SCALING_CHANNEL ? "channel"
                        : m.fp8_scaling() == v1::FP8_SCALING_TENSOR  ? "tensor"
                                                                     : "mixed";
  return absl::StrCat(m.num_tensors(), " (", m.fp8_weights(), " FP8, ", scaling, " scales)");
}

std::string HumanDuration(double s) {
  int64_t t = static_cast<int64_t>(s);
  if (t < 60) return absl::StrFormat("%.1fs", s);
  if (t < 3600) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  if (t < 86400) return absl::StrFormat("%dh%02dm", t / 3600, (t % 3600) / 60);
  return absl::StrFormat("%dd%02dh", t / 86400, (t % 86400) / 3600);
}

// Left-aligned columns, two spaces apart.
void PrintTable(std::ostream& out, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size(); ++i) {
      if (width.size() <= i) width.push_back(0);
      width[i] = std::max(width[i], r[i].size());
    }
  }
  for (const auto& r : rows) {
    std::string line = "  ";
    for (size_t i = 0; i < r.size(); ++i) {
      line += r[i];
      if (i + 1 < r.size()) line += std::string(width[i] - r[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out << line << "\n";
  }
}

std::chrono::system_clock::time_point Deadline(const Global& g) {
  return std::chrono::system_clock::now() + std::chrono::milliseconds(g.timeout_ms);
}

int ReportRpcError(const grpc::Status& s, const Global& g, const char* rpc, std::ostream& err) {
  err << "wsyncctl: " << rpc << " on " << client::TargetOf(g.connect) << " failed: "
      << s.error_message() << " (" << static_cast<int>(s.error_code()) << ")\n";
  return s.error_code() == grpc::StatusCode::UNAVAILABLE ? kUnreachable : kFailed;
}

void PrintStatus(const v1::GetStatusResponse& st, std::ostream& out) {
  out << "wsyncd " << st.daemon_id() << "  version " << st.version() << "  pid " << st.pid()
      << "  up " << HumanDuration(st.uptime_s()) << "  "
      << (st.serving() ? "SERVING" : "NOT_SERVING (draining)") << "\n";
  out << "build   " << st.build() << "\n";
  out << "\nENDPOINTS\n";
  std::vector<std::vector<std::string>> rows;
  for (const auto& e : st.endpoints()) {
    rows.push_back({e.kind(), e.address(), e.kind() == "tcp" ? (e.tls() ? "tls" : "plaintext") : ""});
  }
  PrintTable(out, rows);
  out << "\nGPUS\n";
  rows.clear();
  for (const auto& g : st.gpus()) rows.push_back({g});
  PrintTable(out, rows);

  out << "\nMODELS\n";
  if (st.models().empty()) {
    out << "  (none registered)\n";
  } else {
    rows = {{"MODEL", "TENSORS", "SIZE", "RANKS", "REPLICAS", "LAST SYNC"}};
    for (const auto& m : st.models()) {
      std::string replicas;
      for (const auto& r : m.replicas()) {
        absl::StrAppend(&replicas, replicas.empty() ? "" : ", ", r.replica_id(), "@v", r.version(),
                        r.poisoned() ? " POISONED" : "");
      }
      std::string last = m.has_last_sync()
                             ? absl::StrFormat("v%d in %.1f ms", m.last_sync().version(),
                                               m.last_sync().timings().total_ms())
                             : "-";
      rows.push_back({m.model_id(), TensorsColumn(m), HumanBytes(m.total_bytes()),
                      absl::StrCat(m.ranks_size()), replicas.empty() ? "-" : replicas, last});
    }
    PrintTable(out, rows);
  }

  out << "\nRANKS\n";
  rows = {{"MODEL", "ROLE", "REPLICA", "RANK", "CLIENT", "BUFFERS", "SIZE", "MODE"}};
  for (const auto& m : st.models()) {
    for (const auto& r : m.ranks()) {
      const auto& c = r.rank();
      rows.push_back({m.model_id(), r.role() == v1::SOURCE ? "source" : "target",
                      r.replica_id().empty() ? "-" : r.replica_id(),
                      service::FromProto(c).ToString(),
                      r.client_name(), absl::StrCat(r.num_buffers()), HumanBytes(r.bytes()),
                      r.role() == v1::SOURCE ? "-" : (r.update_mode() == v1::IN_PLACE ? "in_place" : "staged")});
    }
  }
  if (rows.size() == 1) {
    out << "  (none registered)\n";
  } else {
    PrintTable(out, rows);
  }

  out << "\nJOBS\n";
  if (st.jobs().empty()) {
    out << "  (none running)\n";
  } else {
    rows = {{"JOB", "MODEL", "VERSION", "PHASE", "PROGRESS", "ELAPSED"}};
    for (const auto& j : st.jobs()) {
      const auto& p = j.progress();
      rows.push_back({j.job_id(), j.model_id(), absl::StrCat(j.version()),
                      v1::SyncPhase_Name(p.phase()),
                      absl::StrCat(HumanBytes(p.bytes_done()), " / ", HumanBytes(p.bytes_total())),
                      absl::StrFormat("%.0f ms", j.elapsed_ms())});
    }
    PrintTable(out, rows);
  }

  out << "\nPEERS\n";
  if (st.peers().empty()) {
    out << "  (single node)\n";
  } else {
    rows = {{"DAEMON", "ADDRESS", "RELATION", "LAST SEEN", "STATE"}};
    for (const auto& p : st.peers()) {
      rows.push_back({p.daemon_id().empty() ? "?" : p.daemon_id(), p.address(), p.relation(),
                      p.daemon_id().empty() ? "-" : absl::StrFormat("%.0f ms ago", p.last_seen_ms()),
                      p.lost() ? "LOST" : (p.daemon_id().empty() ? "joining" : "ok")});
    }
    PrintTable(out, rows);
  }

  out << "\nSESSIONS\n";
  if (st.sessions().empty()) {
    out << "  (none attached)\n";
  } else {
    // Session ids are capabilities: the daemon shows only the caller's own
    // (every one to administrators).
    rows = {{"CLIENT", "PID", "UID", "SESSION"}};
    for (const auto& s : st.sessions()) {
      rows.push_back({s.client_name(), absl::StrCat(s.pid()), s.uid() < 0 ? "-" : absl::StrCat(s.uid()),
                      s.session_id().empty() ? "(not yours)" : s.session_id()});
    }
    PrintTable(out, rows);
  }
}

std::shared_ptr<grpc::Channel> ConnectOrReport(const Global& g, std::ostream& err, int* rc) {
  auto channel = client::Connect(g.connect);
  if (!channel.ok()) {
    err << "wsyncctl: " << channel.status().message() << "\n";
    *rc = channel.status().code() == absl::StatusCode::kUnavailable ? kUnreachable : kUsage;
    return nullptr;
  }
  return *channel;
}

std::string JsonOf(const google::protobuf::Message& m) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opts;
  opts.add_whitespace = true;
  opts.always_print_primitive_fields = true;
  opts.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, opts);
  return json;
}

int RunStatus(const Global& g, std::ostream& out, std::ostream& err) {
  int rc = kOk;
  auto channel = ConnectOrReport(g, err, &rc);
  if (!channel) return rc;
  auto stub = v1::Wsync::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(g));
  v1::GetStatusResponse response;
  grpc::Status s = stub->GetStatus(&ctx, v1::GetStatusRequest(), &response);
  if (!s.ok()) return ReportRpcError(s, g, "GetStatus", err);
  if (g.json) {
    out << JsonOf(response);
  } else {
    PrintStatus(response, out);
  }
  return kOk;
}

int RunHealth(const Global& g, const std::string& service, std::ostream& out, std::ostream& err) {
  int rc = kOk;
  auto channel = ConnectOrReport(g, err, &rc);
  if (!channel) return rc;
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(g));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status s = stub->Check(&ctx, request, &response);
  if (!s.ok()) return ReportRpcError(s, g, "health check", err);
  std::string name = grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status());
  if (g.json) {
    out << "{\"target\": \"" << client::TargetOf(g.connect) << "\", \"service\": \"" << service
        << "\", \"status\": \"" << name << "\"}\n";
  } else {
    out << name << "\n";
  }
  return response.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kOk : kFailed;
}

int RunConvert(const convert::ConvertOptions& o, bool json, std::ostream& out, std::ostream& err) {
  auto report = convert::Convert(o);
  if (!report.ok()) {
    err << "wsyncctl convert: " << report.status().message() << "\n";
    return kFailed;
  }
  const double mib = report->bytes_written / double(1 << 20);
  if (json) {
    out << absl::StrFormat(
        "{\"tensors\": %d, \"files\": %d, \"bytes_read\": %d, \"bytes_written\": %d, "
        "\"seconds\": %.3f, \"peak_rss_kib\": %d, \"lora_merged\": %d}\n",
        report->tensors_written, report->files_written, report->bytes_read, report->bytes_written,
        report->seconds, report->peak_rss_kib, report->lora_merged);
  } else {
    out << absl::StrFormat(
        "converted %s -> %s: %d tensors in %d files, %.1f MiB written in %.2f s (%.0f MiB/s), "
        "peak RSS %.1f MiB%s\n",
        o.from.ToString(), o.to.ToString(), report->tensors_written, report->files_written, mib,
        report->seconds, mib / std::max(report->seconds, 1e-9), report->peak_rss_kib / 1024.0,
        report->lora_merged ? absl::StrCat(", LoRA ", o.lora_mode, " on ", report->lora_merged,
                                           " tensors")
                            : "");
  }
  return kOk;
}

struct SyncCmd {
  std::string model, lora = "none";
  uint64_t version = 0, deadline_ms = 0, bucket_mib = 0;
  std::vector<std::string> replicas;
  bool no_progress = false;
};

int RunSync(const Global& g, const SyncCmd& c, std::ostream& out, std::ostream& err) {
  int rc = kOk;
  auto channel = ConnectOrReport(g, err, &rc);
  if (!channel) return rc;
  auto stub = v1::Wsync::NewStub(channel);
  v1::SyncRequest req;
  req.set_model_id(c.model);
  req.set_version(c.version);
  req.set_deadline_ms(c.deadline_ms);
  req.set_max_bucket_bytes(c.bucket_mib << 20);
  for (const auto& r : c.replicas) req.add_target_replicas(r);
  const std::map<std::string, v1::LoraMode> modes = {
      {"none", v1::NONE}, {"merge", v1::MERGE}, {"adapter_only", v1::ADAPTER_ONLY}, {"unmerge", v1::UNMERGE}};
  req.mutable_lora()->set_mode(modes.at(c.lora));
  grpc::ClientContext ctx;
  auto reader = stub->Sync(&ctx, req);
  v1::SyncProgress msg;
  v1::SyncResult result;
  bool bar = false;
  while (reader->Read(&msg)) {
    if (msg.has_progress() && !c.no_progress && !g.json) {
      const auto& p = msg.progress();
      const double frac = p.bytes_total() ? double(p.bytes_done()) / p.bytes_total() : 1.0;
      const int width = 30, done = static_cast<int>(frac * width);
      err << "\r[" << std::string(done, '#') << std::string(width - done, '.') << "] "
          << absl::StrFormat("%5.1f%% %s/%s %8.1f MiB/s %-12s", 100 * frac, HumanBytes(p.bytes_done()),
                             HumanBytes(p.bytes_total()), p.rate_bytes_per_s() / (1 << 20),
                             v1::SyncPhase_Name(p.phase()))
          << std::flush;
      bar = true;
    }
    if (msg.has_result()) result = msg.result();
  }
  if (bar) err << "\n";
  grpc::Status s = reader->Finish();
  if (!s.ok()) return ReportRpcError(s, g, "Sync", err);
  if (g.json) {
    out << JsonOf(result);
    return kOk;
  }
  const auto& t = result.timings();
  out << absl::StrFormat(
      "model %s version %d committed on %s\n  %s in %d buckets over %s, digest %s, plan %s\n"
      "  total %.1f ms: plan %.1f, transfer %.1f, verify %.1f, commit %.1f\n",
      result.model_id(), result.version(), absl::StrJoin(result.replicas(), ", "),
      HumanBytes(result.bytes()), result.buckets(), result.path(), result.digest(), result.plan_hash(), t.total_ms(),
      t.plan_ms(), t.transfer_ms(), t.verify_ms(), t.commit_ms());
  if (result.fp8_pieces() > 0) {
    out << absl::StrFormat("  FP8: %d pieces quantized, %d read straight from one source, %d assembled in fp32 first\n",
                           result.fp8_pieces(), result.fp8_pieces() - result.fp8_assembled(), result.fp8_assembled());
  }
  return kOk;
}

int RunWait(const Global& g, const std::string& model, const std::string& replica, uint64_t version,
            uint64_t timeout_ms, std::ostream& out, std::ostream& err) {
  int rc = kOk;
  auto channel = ConnectOrReport(g, err, &rc);
  if (!channel) return rc;
  auto stub = v1::Wsync::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms + g.timeout_ms));
  v1::WaitVersionRequest req;
  req.set_model_id(model);
  req.set_replica_id(replica);
  req.set_min_version(version);
  req.set_timeout_ms(timeout_ms);
  v1::WaitVersionResponse resp;
  grpc::Status s = stub->WaitVersion(&ctx, req, &resp);
  if (!s.ok()) return ReportRpcError(s, g, "WaitVersion", err);
  if (g.json) {
    out << JsonOf(resp);
  } else {
    out << "model " << model << " replica " << replica << " at version " << resp.version() << " (digest "
        << resp.digest() << ")\n";
  }
  return kOk;
}

int RunCancel(const Global& g, const std::string& model, uint64_t version, std::ostream& out,
              std::ostream& err) {
  int rc = kOk;
  auto channel = ConnectOrReport(g, err, &rc);
  if (!channel) return rc;
  auto stub = v1::Wsync::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(g));
  v1::CancelSyncRequest req;
  req.set_model_id(model);
  req.set_version(version);
  v1::CancelSyncResponse resp;
  grpc::Status s = stub->CancelSync(&ctx, req, &resp);
  if (!s.ok()) return ReportRpcError(s, g, "CancelSync", err);
  out << "cancel requested for job " << resp.job_id() << "\n";
  return kOk;
}

int RunModels(const Global& g, std::ostream& out, std::ostream& err) {
  int rc = kOk;
  auto channel = ConnectOrReport(g, err, &rc);
  if (!channel) return rc;
  auto stub = v1::Wsync::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(g));
  v1::ListModelsResponse resp;
  grpc::Status s = stub->ListModels(&ctx, v1::ListModelsRequest(), &resp);
  if (!s.ok()) return ReportRpcError(s, g, "ListModels", err);
  if (g.json) {
    out << JsonOf(resp);
    return kOk;
  }
  if (resp.models().empty()) {
    out << "(no models registered)\n";
    return kOk;
  }
  std::vector<std::vector<std::string>> rows = {{"MODEL", "TENSORS", "SIZE", "SOURCE RANKS", "REPLICAS"}};
  for (const auto& m : resp.models()) {
    std::string reps;
    for (const auto& r : m.replicas()) {
      absl::StrAppend(&reps, reps.empty() ? "" : ", ", r.replica_id(), "@v", r.version(),
                      r.poisoned() ? " POISONED" : "");
    }
    rows.push_back({m.model_id(), TensorsColumn(m), HumanBytes(m.total_bytes()),
                    absl::StrCat(m.num_source_ranks()), reps.empty() ? "-" : reps});
  }
  PrintTable(out, rows);
  return kOk;
}

}  // namespace

int RunWsyncctl(int argc, const char* const argv[], std::ostream& out, std::ostream& err) {
  Global g;
  std::string service;
  CLI::App app(kDescription, "wsyncctl");
  app.require_subcommand(1);
  app.add_option("--socket", g.connect.socket, "Unix socket of the local daemon")
      ->capture_default_str();
  app.add_option("--address", g.connect.address, "TCP host:port of a daemon (overrides --socket)");
  app.add_flag("--insecure", g.connect.insecure, "plaintext TCP with --address");
  app.add_option("--tls-ca", g.connect.tls_ca, "PEM CA bundle to verify the daemon (TCP)");
  app.add_option("--tls-cert", g.connect.tls_cert, "PEM client certificate (mTLS)");
  app.add_option("--tls-key", g.connect.tls_key, "PEM client key (mTLS)");
  app.add_option("--timeout-ms", g.timeout_ms, "deadline for connecting and for each call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--json", g.json, "print JSON instead of human-readable text");

  CLI::App* status = app.add_subcommand(
      "status", "daemon identity, endpoints, GPUs, models, ranks, versions, jobs and sessions");
  CLI::App* health = app.add_subcommand(
      "health", "grpc.health.v1 check; prints SERVING or NOT_SERVING, exit 0 only if SERVING");
  health->add_option("--service", service,
                     "service to check: \"\" (the whole daemon), wsync.v1.Wsync or wsync.v1.WsyncPeer");
  SyncCmd sync;
  CLI::App* sync_cmd = app.add_subcommand("sync", "sync a model version to its replicas, with a progress bar");
  sync_cmd->add_option("model", sync.model, "model id")->required();
  sync_cmd->add_option("version", sync.version, "version (monotonic; equal to the committed one = retry)")
      ->required();
  sync_cmd->add_option("--lora", sync.lora, "none, merge, adapter_only or unmerge")
      ->capture_default_str()
      ->check(CLI::IsMember({"none", "merge", "adapter_only", "unmerge"}));
  sync_cmd->add_option("--replica", sync.replicas, "target replica (repeatable; default: all)");
  sync_cmd->add_option("--deadline-ms", sync.deadline_ms, "sync deadline (0 = the daemon's default)");
  sync_cmd->add_option("--bucket-mib", sync.bucket_mib, "bucket size (0 = the daemon's default)");
  sync_cmd->add_flag("--no-progress", sync.no_progress, "no progress bar");
  std::string wait_model, wait_replica;
  uint64_t wait_version = 0, wait_timeout = 60000;
  CLI::App* wait_cmd = app.add_subcommand("wait", "wait until a replica has committed a version");
  wait_cmd->add_option("model", wait_model, "model id")->required();
  wait_cmd->add_option("replica", wait_replica, "replica id")->required();
  wait_cmd->add_option("version", wait_version, "minimum version")->required();
  wait_cmd->add_option("--wait-ms", wait_timeout, "how long to wait")->capture_default_str();
  std::string cancel_model;
  uint64_t cancel_version = 0;
  CLI::App* cancel_cmd = app.add_subcommand("cancel", "cancel the running sync of a model");
  cancel_cmd->add_option("model", cancel_model, "model id")->required();
  cancel_cmd->add_option("--version", cancel_version, "only if this version is the one running");
  CLI::App* models_cmd = app.add_subcommand("models", "registered models, their sources and replica versions");
  convert::ConvertOptions conv;
  std::string from_text, to_text;
  uint64_t bucket_mib = 64;
  double max_shard_gib = 5;
  CLI::App* conv_cmd = app.add_subcommand(
      "convert",
      "reshard a safetensors checkpoint between layouts, offline (no daemon): e.g.\n"
      "  wsyncctl convert --model-config config.json --from megatron:tp=2,pp=2 --to hf --in A --out B");
  conv_cmd->add_option("--model-config", conv.model_config, "the model's Hugging Face config.json")
      ->required();
  conv_cmd->add_option("--from", from_text,
                       "input layout: hf, megatron:tp=N,cp=N,dp=N,pp=N,ep=N,etp=N, vllm:tp=N,dp=N,pp=N,ep=TPxDP, "
                       "fsdp:dp=N; processes are numbered as the engine numbers them, and other key=value "
                       "items are recipe options (docs/convert.md)")
      ->required();
  conv_cmd->add_option("--to", to_text, "output layout, same syntax as --from")->required();
  conv_cmd->add_option("--in", conv.in_dir, "input directory")->required();
  conv_cmd->add_option("--out", conv.out_dir, "output directory (created if missing)")->required();
  conv_cmd->add_option("--dtype", conv.dtype,
                       "output dtype: fp32, bf16 or fp16 (default: the input's); fp8: a block-FP8 checkpoint "
                       "(--to hf: linear weights of decoder layers in float8_e4m3fn with one fp32 weight_scale_inv "
                       "per 128x128 block, the rest bf16); a block-FP8 input is dequantized to fp32/bf16/fp16");
  conv_cmd->add_option("--lora", conv.lora_dir,
                       "PEFT adapter directory (adapter_config.json, adapter_model.safetensors)");
  conv_cmd->add_option("--lora-mode", conv.lora_mode, "merge (W + s*B@A) or unmerge (W - s*B@A)")
      ->capture_default_str();
  conv_cmd->add_option("--bucket-mib", bucket_mib, "output is produced in pieces of this size")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  conv_cmd->add_option("--threads", conv.threads, "CPU threads for copying")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  conv_cmd->add_option("--max-shard-gib", max_shard_gib, "hf output: largest file before splitting")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  conv_cmd->add_flag("--quiet", conv.quiet, "do not list files as they are written");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return kOk;
  } catch (const CLI::ParseError& e) {
    std::string help = e.get_exit_code() == 0 ? app.help() : "";
    if (e.get_exit_code() == 0) {
      out << help;
      return kOk;
    }
    err << "wsyncctl: " << e.what() << "\nRun 'wsyncctl --help' for usage.\n";
    return kUsage;
  } catch (const std::exception& e) {
    err << "wsyncctl: " << e.what() << "\n";
    return kUsage;
  }
  g.connect.connect_timeout_ms = g.timeout_ms;
  if (*status) return RunStatus(g, out, err);
  if (*health) return RunHealth(g, service, out, err);
  if (*sync_cmd) return RunSync(g, sync, out, err);
  if (*wait_cmd) return RunWait(g, wait_model, wait_replica, wait_version, wait_timeout, out, err);
  if (*cancel_cmd) return RunCancel(g, cancel_model, cancel_version, out, err);
  if (*models_cmd) return RunModels(g, out, err);
  if (*conv_cmd) {
    auto from = convert::ParseLayoutSpec(from_text);
    auto to = convert::ParseLayoutSpec(to_text);
    if (!from.ok() || !to.ok()) {
      err << "wsyncctl convert: " << (from.ok() ? to.status() : from.status()).message() << "\n";
      return kUsage;
    }
    conv.from = *from;
    conv.to = *to;
    conv.bucket_bytes = bucket_mib << 20;
    conv.max_shard_bytes = static_cast<uint64_t>(max_shard_gib * (1ull << 30));
    return RunConvert(conv, g.json, out, err);
  }
  err << "wsyncctl: no command\n";
  return kUsage;
}

}  // namespace wsync::cli
