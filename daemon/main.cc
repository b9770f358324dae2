// wsyncd: the wsync weight-sync daemon. Everything lives in
// //daemon/server; this file only wires flags, start and signals.
#include <cstdio>

#include "daemon/server/options.h"
#include "daemon/server/server.h"
#include "daemon/server/signals.h"

int main(int argc, char** argv) {
  wsync::server::BlockHandledSignals();
  auto cmdline = wsync::server::ParseCommandLine(argc, argv);
  if (!cmdline.ok()) {
    std::fprintf(stderr, "wsyncd: %s\nRun 'wsyncd --help' for the flags.\n",
                 std::string(cmdline.status().message()).c_str());
    return 2;
  }
  if (cmdline->exit_early) {
    std::fputs(cmdline->output.c_str(), stdout);
    return 0;
  }
  auto server = wsync::server::Server::Start(cmdline->options);
  if (!server.ok()) {
    std::fprintf(stderr, "wsyncd: %s\n", server.status().ToString().c_str());
    return 1;
  }
  return wsync::server::ServeUntilSignal(server->get(), argc, argv);
}
