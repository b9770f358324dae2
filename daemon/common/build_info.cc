#include "daemon/common/build_info.h"

#include "absl/strings/str_cat.h"

namespace wsync {

const char* Version() { return "0.1.0"; }

bool BuiltWithCuda() {
#ifdef WSYNC_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string BuildDescription() {
  return absl::StrCat("gcc ", __VERSION__,
#ifdef NDEBUG
                      ", opt",
#else
                      ", debug",
#endif
                      BuiltWithCuda() ? ", cuda" : ", no cuda");
}

}  // namespace wsync
