#ifndef WSYNC_CLIENT_CPP_CONNECTION_H_
#define WSYNC_CLIENT_CPP_CONNECTION_H_

#include <cstdint>
#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "absl/status/statusor.h"

namespace wsync::client {

// Which daemon to talk to, and how.
struct ConnectOptions {
  // Unix socket of the local daemon. Used when `address` is empty.
  std::string socket = "/run/wsync/wsyncd.sock";
  // TCP "host:port" of a daemon; overrides `socket`.
  std::string address;
  // TCP: plaintext, or TLS with this CA bundle (and, for mTLS, a client
  // certificate and key). Plaintext needs `insecure`.
  bool insecure = false;
  std::string tls_ca;
  std::string tls_cert;
  std::string tls_key;
  // How long to wait for the connection.
  int64_t connect_timeout_ms = 3000;
};

// The gRPC target string for `options`, e.g. "unix:/run/wsync/wsyncd.sock".
std::string TargetOf(const ConnectOptions& options);

// Opens a channel and waits until it is connected. UNAVAILABLE, naming the
// socket or address tried, when no daemon answers within the timeout;
// INVALID_ARGUMENT for inconsistent TLS options or unreadable PEM files.
absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const ConnectOptions& options);

}  // namespace wsync::client

#endif  // WSYNC_CLIENT_CPP_CONNECTION_H_
