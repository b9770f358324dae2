#ifndef WSYNC_DAEMON_SERVER_SIGNALS_H_
#define WSYNC_DAEMON_SERVER_SIGNALS_H_

#include "daemon/server/server.h"

namespace wsync::server {

// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread, and so in every
// thread started after it. Call first thing in main, before any thread.
void BlockHandledSignals();

// Serves until SIGTERM or SIGINT, then shuts `server` down and returns the
// exit code (0). SIGHUP re-parses the command line (argc/argv, including
// the --config file) and applies its log settings; a second SIGTERM while
// draining is logged and otherwise ignored.
int ServeUntilSignal(Server* server, int argc, const char* const argv[]);

}  // namespace wsync::server

#endif  // WSYNC_DAEMON_SERVER_SIGNALS_H_
