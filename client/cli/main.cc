// wsyncctl: inspects and drives wsync daemons. See client/cli/wsyncctl.h.
#include <iostream>

#include "client/cli/wsyncctl.h"

int main(int argc, char** argv) { return wsync::cli::RunWsyncctl(argc, argv, std::cout, std::cerr); }
