// Fuzz target: a safetensors file (header and data) as SafetensorsFile::Open
// reads it from disk. Whatever it accepts, every tensor's bytes must lie in
// the file.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "client/convert/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = [] {
    char dir[] = "/tmp/wsync-fuzz-XXXXXX";
    if (mkdtemp(dir) == nullptr) std::abort();
    return std::string(dir) + "/in.safetensors";
  }();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || write(fd, data, size) != static_cast<ssize_t>(size)) std::abort();
  close(fd);
  auto f = wsync::convert::SafetensorsFile::Open(path);
  if (!f.ok()) return 0;
  volatile uint8_t sink = 0;
  for (const auto& t : (*f)->tensors()) {
    const uint8_t* p = static_cast<const uint8_t*>((*f)->Data(t));
    if (t.end > t.begin) sink = sink + p[0] + p[t.end - t.begin - 1];
  }
  return 0;
}
