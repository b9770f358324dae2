#include "client/cpp/connection.h"

#include <sys/stat.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/str_cat.h"

namespace wsync::client {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string TargetOf(const ConnectOptions& options) {
  if (!options.address.empty()) return options.address;
  return "unix:" + options.socket;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const ConnectOptions& options) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  const bool tcp = !options.address.empty();
  if (!tcp) {
    creds = grpc::InsecureChannelCredentials();  // Unix socket: protected by file permissions.
  } else if (!options.tls_ca.empty() || !options.tls_cert.empty()) {
    if (options.tls_cert.empty() != options.tls_key.empty()) {
      return absl::InvalidArgumentError("a TLS client certificate needs both cert and key");
    }
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      auto ca = ReadPem(options.tls_ca, "TLS CA bundle");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
    }
    if (!options.tls_cert.empty()) {
      auto cert = ReadPem(options.tls_cert, "TLS certificate");
      if (!cert.ok()) return cert.status();
      auto key = ReadPem(options.tls_key, "TLS key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *cert;
      ssl.pem_private_key = *key;
    }
    creds = grpc::SslCredentials(ssl);
  } else if (options.insecure) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "connecting to ", options.address,
        " over TCP needs TLS (a CA bundle) or an explicit insecure (plaintext) choice"));
  }

  if (!tcp) {
    struct stat st;
    if (stat(options.socket.c_str(), &st) != 0) {
      return absl::UnavailableError(absl::StrCat(
          "no wsyncd socket at ", options.socket,
          " (is the daemon running? choose another with --socket or --address)"));
    }
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel(TargetOf(options), creds, args);
  auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(options.connect_timeout_ms);
  if (!channel->WaitForConnected(deadline)) {
    return absl::UnavailableError(absl::StrCat(
        "no wsyncd answered at ", TargetOf(options), " within ", options.connect_timeout_ms,
        " ms (is the daemon running? choose another with --socket or --address)"));
  }
  return channel;
}

}  // namespace wsync::client
