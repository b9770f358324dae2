#ifndef WSYNC_DAEMON_COMMON_BUILD_INFO_H_
#define WSYNC_DAEMON_COMMON_BUILD_INFO_H_

#include <string>

namespace wsync {

// The wsync release, e.g. "0.1.0".
const char* Version();

// One line describing this build: compiler, optimization, CUDA support.
std::string BuildDescription();

// Whether this binary was built with CUDA support.
bool BuiltWithCuda();

}  // namespace wsync

#endif  // WSYNC_DAEMON_COMMON_BUILD_INFO_H_
