#include "daemon/memory/host_memory.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <string>

namespace wsync::memory {
namespace {

std::string MakeShm(size_t bytes) {
  static int n = 0;
  std::string name = "/wsync-test-" + std::to_string(getpid()) + "-" + std::to_string(n++);
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  REQUIRE(ftruncate(fd, static_cast<off_t>(bytes)) == 0);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  std::memset(p, 0x42, bytes);
  munmap(p, bytes);
  close(fd);
  return name;
}

size_t MapsMentioning(const std::string& name) {
  FILE* f = fopen("/proc/self/maps", "r");
  char line[1024];
  size_t n = 0;
  while (fgets(line, sizeof(line), f)) n += std::strstr(line, name.c_str() + 1) != nullptr;
  fclose(f);
  return n;
}

TEST_CASE("an object is mapped once per lease, bounds-checked, and unmapped with the lease") {
  std::string name = MakeShm(8192);
  {
    auto lease = HostLease::Create(getuid(), "client 'test'");
    auto a = lease->Resolve(name, 0, 4096, "buffer 'a'");
    auto b = lease->Resolve(name, 4096, 4096, "buffer 'b'");
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    CHECK(static_cast<char*>(b->ptr) - static_cast<char*>(a->ptr) == 4096);
    CHECK(*static_cast<unsigned char*>(b->ptr) == 0x42);
    CHECK(a->object == b->object);
    CHECK_THAT(a->object, Catch::StartsWith("shm:"));
    CHECK(lease->num_mappings() == 1);
    CHECK(lease->mapped_bytes() == 8192);
    CHECK(MapsMentioning(name) == 1);

    auto out = lease->Resolve(name, 4096, 4097, "buffer 'c'");
    CHECK(out.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(out.status().message() ==
          "buffer 'c': 4097 bytes at offset 4096 are outside shm object " + name + " (8192 bytes)");
    CHECK_FALSE(lease->Resolve(name, 1ull << 63, 1ull << 63, "buffer 'd'").ok());
  }
  CHECK(MapsMentioning(name) == 0);
  shm_unlink(name.c_str());
}

TEST_CASE("missing, malformed and foreign objects are refused with precise errors") {
  auto lease = HostLease::Create(getuid(), "client 'test'");
  auto r = lease->Resolve("/wsync-does-not-exist", 0, 1, "buffer 'x'");
  CHECK(r.status().code() == absl::StatusCode::kNotFound);
  CHECK(r.status().message() == "buffer 'x': shm object /wsync-does-not-exist does not exist");
  r = lease->Resolve("no-slash", 0, 1, "buffer 'x'");
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);

  std::string name = MakeShm(4096);
  auto other = HostLease::Create(static_cast<int64_t>(getuid()) + 1000, "client 'intruder'");
  r = other->Resolve(name, 0, 1, "buffer 'w'");
  CHECK(r.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK(r.status().message() == "buffer 'w': shm object " + name + " is owned by uid " +
                                    std::to_string(getuid()) + ", not by client 'intruder' (uid " +
                                    std::to_string(getuid() + 1000) + ")");
  auto tcp = HostLease::Create(-1, "client 'remote'");
  CHECK(tcp->Resolve(name, 0, 1, "buffer 'w'").status().code() ==
        absl::StatusCode::kPermissionDenied);
  shm_unlink(name.c_str());
}

TEST_CASE("daemon-owned buffers are zeroed") {
  auto b = HostBuffer::Allocate(1 << 20, "staging");
  REQUIRE(b.ok());
  CHECK(static_cast<unsigned char*>((*b)->data())[12345] == 0);
}

}  // namespace
}  // namespace wsync::memory
