#ifndef WSYNC_CLIENT_CLI_WSYNCCTL_H_
#define WSYNC_CLIENT_CLI_WSYNCCTL_H_

#include <ostream>

namespace wsync::cli {

// Exit codes of wsyncctl.
enum ExitCode {
  kOk = 0,
  kFailed = 1,       // The daemon answered with an error, or is not healthy.
  kUsage = 2,        // Bad command line.
  kUnreachable = 3,  // No daemon answered at the socket or address.
};

// Runs wsyncctl with `argv`, writing results to `out` and diagnostics to
// `err`. Returns the process exit code. Never throws.
int RunWsyncctl(int argc, const char* const argv[], std::ostream& out, std::ostream& err);

}  // namespace wsync::cli

#endif  // WSYNC_CLIENT_CLI_WSYNCCTL_H_
