#ifndef WSYNC_DAEMON_SERVER_OPTIONS_H_
#define WSYNC_DAEMON_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/common/logging.h"

namespace wsync::server {

// Everything wsyncd can be told. Every field is a command-line flag and the
// same key in the TOML file given by --config (flags win over the file).
struct Options {
  // TOML file with the same keys as the flags; "" = none.
  std::string config;
  // Unix socket for local clients. Its directory is created 0750, the
  // socket is made 0660. "" = no Unix socket (then --listen is required).
  std::string socket = "/run/wsync/wsyncd.sock";
  // Group that owns the socket (name or numeric gid); "" = the daemon's.
  std::string socket_group;
  // TCP endpoint "host:port" (port 0 picks a free port); "" = none.
  std::string listen;
  // Allow plaintext TCP. Required for --listen without TLS.
  bool insecure = false;
  // PEM files for TLS on --listen. With tls_client_ca, clients must present
  // a certificate signed by it (mTLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Identity shown in status and to peers; "" = the host name.
  std::string daemon_id;
  // Multi-node. Peers talk over --listen (mTLS when TLS and a client CA are
  // configured, plaintext only with --insecure). Coordinators to join at
  // start (host:port, comma-separated); ranks registered with a coordinator
  // join it too.
  std::string peers;
  // host:port other daemons reach this one at; "" = --listen's host (the
  // host name when it is 0.0.0.0 or [::]) and its bound port.
  std::string advertise;
  // Interface the Gloo data plane binds; "" = the advertised host.
  std::string data_host;
  // Prometheus metrics over plaintext HTTP at http://host:port/metrics
  // (port 0 picks a free port); "" = off.
  std::string metrics_listen;
  int64_t heartbeat_ms = 1000;
  int64_t peer_timeout_ms = 10000;
  // On SIGTERM/SIGINT, how long in-flight calls may take to finish.
  int64_t grace_period_ms = 10000;
  // Largest gRPC message accepted or sent.
  int64_t max_message_bytes = 64 << 20;
  // Sync defaults: deadline when a request sets none, how long targets get
  // to acknowledge a pause, bucket size, and CPU threads for host copies.
  int64_t sync_deadline_ms = 600000;
  int64_t pause_timeout_ms = 10000;
  int64_t bucket_mib = 64;
  int copy_threads = 2;
  // Authorization (docs/security.md). Members of this group (name or gid)
  // are administrators, like the daemon's own uid; "" = none.
  std::string admin_group;
  // Let anonymous callers (TCP without a client certificate) register, sync,
  // cancel and unregister. Off: they may only read health and status.
  bool allow_anonymous_writes = false;
  // Identities (certificate CN or DNS/URI SAN) of the daemons allowed on the
  // peer service over mTLS, comma-separated. With --insecure peers are not
  // authenticated at all.
  std::string peer_identities;
  // What one request may make the daemon hold.
  int64_t max_tensors_per_model = 1 << 20;
  int64_t max_name_bytes = 1024;
  int64_t max_kv_value_bytes = 1 << 20;
  // Fault injection (tests only): delay after every sync bucket.
  int64_t fault_bucket_delay_ms = 0;
  // Fault injection (tests only): corrupt received multi-node wire bucket N.
  int64_t fault_corrupt_wire = -1;
  // Tests only: multi-node parts treat host-memory ranks as GPU ranks run
  // by a host context (the host-staged GPU path without a GPU).
  bool test_stand_in_gpu = false;
  bool test_stand_in_nccl = false;
  LogOptions log;
};

// The outcome of parsing a command line.
struct CommandLine {
  Options options;
  // --help or --version was given: print `output` and exit 0.
  bool exit_early = false;
  std::string output;
};

// Parses flags and the --config file. Unknown flags or config keys, bad
// values and bad combinations (ValidateOptions) are INVALID_ARGUMENT naming
// the flag or key. Never exits the process.
absl::StatusOr<CommandLine> ParseCommandLine(int argc, const char* const argv[]);

// Rejects options that cannot work together: TCP without TLS or
// --insecure, half-configured TLS, TLS flags without --listen, no endpoint
// at all, a socket path too long for sun_path, non-positive limits.
absl::Status ValidateOptions(const Options& options);

}  // namespace wsync::server

#endif  // WSYNC_DAEMON_SERVER_OPTIONS_H_
