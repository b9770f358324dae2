#include "daemon/server/options.h"

#include <sys/un.h>

#include <CLI/CLI.hpp>
#include <exception>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "daemon/common/build_info.h"
#include "daemon/common/status.h"

namespace wsync::server {
namespace {

constexpr char kDescription[] =
    "wsyncd: the wsync weight-sync daemon. One runs per GPU node. Trainer and generator\n"
    "processes register their weight buffers with it and call it over gRPC (Unix socket,\n"
    "or TCP with --listen); wsyncctl inspects and drives it.\n\n"
    "Every flag can also be set in a TOML file given by --config, with the same key\n"
    "(e.g. `log-level = \"debug\"`); flags override the file. Unknown flags or keys are\n"
    "errors. Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP re-reads the log settings\n"
    "(log-level, log-levels, log-format) from the --config file.";

void AddFlags(CLI::App& app, Options& o, std::string& log_format) {
  app.set_config("--config", "", "TOML file with the same keys as these flags");
  app.add_option("--socket", o.socket,
                 "Unix socket for local clients (directory made 0750, socket 0660); "
                 "empty to disable")
      ->capture_default_str();
  app.add_option("--socket-group", o.socket_group,
                 "group owning the socket (name or gid); default: the daemon's group");
  app.add_option("--listen", o.listen,
                 "TCP endpoint host:port (port 0 picks one); needs TLS or --insecure");
  app.add_flag("--insecure", o.insecure, "allow plaintext TCP on --listen");
  app.add_option("--tls-cert", o.tls_cert, "PEM server certificate for --listen");
  app.add_option("--tls-key", o.tls_key, "PEM private key for --tls-cert");
  app.add_option("--tls-client-ca", o.tls_client_ca,
                 "PEM CA bundle; when set, TCP clients must present a certificate it signed");
  app.add_option("--daemon-id", o.daemon_id, "identity in status and to peers (default: hostname)");
  app.add_option("--peers", o.peers,
                 "coordinators to join at start, host:port[,host:port...] (needs --listen)");
  app.add_option("--advertise", o.advertise,
                 "host:port peers reach this daemon at (default: --listen's host and bound port)");
  app.add_option("--metrics-listen", o.metrics_listen,
                 "serve Prometheus metrics at http://host:port/metrics, plaintext (port 0 picks one; "
                 "bind a private interface: it shows what status shows anyone)");
  app.add_option("--data-host", o.data_host,
                 "interface the Gloo data plane binds (default: the advertised host)");
  app.add_option("--heartbeat-ms", o.heartbeat_ms, "interval of heartbeats to coordinators")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--peer-timeout-ms", o.peer_timeout_ms,
                 "a peer silent this long is dropped and its syncs abort")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--grace-period-ms", o.grace_period_ms,
                 "on SIGTERM, how long in-flight calls may take to finish")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--max-message-bytes", o.max_message_bytes, "largest gRPC message accepted")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--sync-deadline-ms", o.sync_deadline_ms,
                 "deadline of a sync whose request sets none")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--pause-timeout-ms", o.pause_timeout_ms,
                 "how long target clients get to acknowledge a pause before the sync fails")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--bucket-mib", o.bucket_mib, "default sync bucket size")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--copy-threads", o.copy_threads, "CPU threads for host-memory copies")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  app.add_option("--admin-group", o.admin_group,
                 "members of this group (name or gid) are administrators, like the daemon's own uid: they may "
                 "act on every model and see every session (docs/security.md)");
  app.add_flag("--allow-anonymous-writes", o.allow_anonymous_writes,
               "let TCP callers without a client certificate register, sync, cancel and unregister (default: "
               "they may only read health and status)");
  app.add_option("--peer-identities", o.peer_identities,
                 "comma-separated certificate names (CN or SAN) of the daemons allowed on the peer service over "
                 "mTLS; other callers are refused");
  app.add_option("--max-tensors-per-model", o.max_tensors_per_model,
                 "most canonical tensors one model may declare or its config may generate")
      ->capture_default_str();
  app.add_option("--max-name-bytes", o.max_name_bytes,
                 "longest id or name (model, replica, tensor, buffer, client, recipe option) a request may carry")
      ->capture_default_str();
  app.add_option("--max-kv-value-bytes", o.max_kv_value_bytes,
                 "largest value a peer may store in the rendezvous store")
      ->capture_default_str();
  app.add_option("--fault-bucket-delay-ms", o.fault_bucket_delay_ms,
                 "fault injection for tests: sleep after every sync bucket (0 = off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--fault-corrupt-wire", o.fault_corrupt_wire,
                 "fault injection for tests: flip a byte of multi-node wire bucket N on receipt (-1 = off)")
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40));
  app.add_flag("--test-stand-in-gpu", o.test_stand_in_gpu,
               "for tests: multi-node syncs treat this daemon's host-memory ranks as GPU ranks, run on the host "
               "(exercises the host-staged GPU path without a GPU)");
  app.add_flag("--test-stand-in-nccl", o.test_stand_in_nccl,
               "for tests: as --test-stand-in-gpu, and this daemon claims NCCL with a GPU of its own, so that "
               "multi-node syncs choose the NCCL path (wire buffers on the GPU), whose communicators are then "
               "built over Gloo (exercises the NCCL path's choice and device wire buffers without a GPU)");
  app.add_option("--log-level", o.log.level,
                 "trace, debug, info, warn, error, critical or off")
      ->capture_default_str();
  app.add_option("--log-levels", o.log.levels,
                 "per-component overrides, e.g. core=debug,service=warn");
  app.add_option("--log-format", log_format, "text or json (one JSON object per line)")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
}

}  // namespace

absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const argv[]) {
  CommandLine result;
  std::string log_format = "text";
  CLI::App app(kDescription, "wsyncd");
  app.set_version_flag("--version", absl::StrCat("wsyncd ", Version(), " (", BuildDescription(), ")"));
  app.allow_config_extras(CLI::config_extras_mode::error);
  AddFlags(app, result.options, log_format);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    result.exit_early = true;
    result.output = app.help();
    return result;
  } catch (const CLI::CallForVersion&) {
    result.exit_early = true;
    result.output = app.version() + "\n";
    return result;
  } catch (const CLI::ConfigError& e) {
    std::string file;
    if (auto* config = app.get_config_ptr(); config != nullptr && config->count() > 0) {
      file = absl::StrCat(" ", config->as<std::string>());
    }
    absl::string_view what = e.what();
    if (absl::ConsumePrefix(&what, "INI was not able to parse ")) {
      return absl::InvalidArgumentError(
          absl::StrCat("config file", file, ": unknown key '", what,
                       "' (keys are the long flag names without '--'; see --help)"));
    }
    return absl::InvalidArgumentError(absl::StrCat("config file", file, ": ", e.what()));
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(e.what());
  }
  if (auto* config = app.get_config_ptr(); config != nullptr && config->count() > 0) {
    result.options.config = config->as<std::string>();
  }
  result.options.log.format = log_format == "json" ? LogFormat::kJson : LogFormat::kText;
  WSYNC_RETURN_IF_ERROR(ValidateOptions(result.options));
  return result;
}

absl::Status ValidateOptions(const Options& o) {
  if (o.socket.empty() && o.listen.empty()) {
    return absl::InvalidArgumentError(
        "nothing to listen on: --socket is empty and --listen is not set");
  }
  if (!o.socket.empty()) {
    if (o.socket[0] != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("--socket must be an absolute path, got '", o.socket, "'"));
    }
    if (o.socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return absl::InvalidArgumentError(absl::StrCat("--socket path is ", o.socket.size(),
                                                     " bytes; a Unix socket path must be under ",
                                                     sizeof(sockaddr_un{}.sun_path), ": ", o.socket));
    }
  } else if (!o.socket_group.empty()) {
    return absl::InvalidArgumentError("--socket-group needs a --socket");
  }
  const bool any_tls = !o.tls_cert.empty() || !o.tls_key.empty() || !o.tls_client_ca.empty();
  if (o.listen.empty()) {
    if (any_tls) return absl::InvalidArgumentError("--tls-* flags apply only to --listen, which is not set");
    if (o.insecure) return absl::InvalidArgumentError("--insecure applies only to --listen, which is not set");
  } else {
    if (o.listen.find(':') == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("--listen must be host:port, got '", o.listen, "'"));
    }
    if (o.tls_cert.empty() != o.tls_key.empty()) {
      return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
    }
    if (!o.tls_client_ca.empty() && o.tls_cert.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    if (o.tls_cert.empty() && !o.insecure) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen ", o.listen,
          " would accept plaintext TCP: give --tls-cert and --tls-key, or pass --insecure"));
    }
    if (!o.tls_cert.empty() && o.insecure) {
      return absl::InvalidArgumentError("--insecure contradicts --tls-cert; choose one");
    }
  }
  if (!o.metrics_listen.empty() && o.metrics_listen.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-listen must be host:port, got '", o.metrics_listen, "'"));
  }
  if (o.grace_period_ms < 0) {
    return absl::InvalidArgumentError("--grace-period-ms must be >= 0");
  }
  if ((!o.peers.empty() || !o.advertise.empty()) && o.listen.empty()) {
    return absl::InvalidArgumentError("--peers and --advertise need --listen (peers talk over TCP)");
  }
  if (!o.peers.empty() && !o.insecure && o.tls_client_ca.empty()) {
    return absl::InvalidArgumentError(
        "--peers needs mTLS between daemons (--tls-cert, --tls-key and --tls-client-ca) or an explicit --insecure");
  }
  if (o.heartbeat_ms <= 0 || o.peer_timeout_ms <= o.heartbeat_ms) {
    return absl::InvalidArgumentError("--peer-timeout-ms must exceed --heartbeat-ms, and both must be positive");
  }
  if (o.max_tensors_per_model < 1 || o.max_name_bytes < 16 || o.max_kv_value_bytes < 1024) {
    return absl::InvalidArgumentError(
        "--max-tensors-per-model must be >= 1, --max-name-bytes >= 16 and --max-kv-value-bytes >= 1024");
  }
  if (!o.peer_identities.empty() && (o.tls_client_ca.empty() || o.listen.empty())) {
    return absl::InvalidArgumentError("--peer-identities needs mTLS on --listen (--tls-client-ca)");
  }
  if (o.max_message_bytes <= 0 || o.max_message_bytes > (int64_t{1} << 31) - 1) {
    return absl::InvalidArgumentError("--max-message-bytes must be in [1, 2^31-1]");
  }
  return ValidateLogOptions(o.log);
}

}  // namespace wsync::server
