// Fuzz target: the text of a sharded checkpoint's wsync_layout.json.
#include <cstdint>
#include <string>

#include "client/convert/convert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)wsync::convert::ValidateLayoutManifest("wsync_layout.json", text);
  return 0;
}
