#include "client/convert/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <nlohmann/json.hpp>

#include "client/convert/files.h"

#include "absl/strings/str_cat.h"

namespace wsync::convert {
namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // as the reference implementation

absl::StatusOr<layout::DType> FromName(const std::string& s) {
  if (s == "F32") return layout::DType::kF32;
  if (s == "BF16") return layout::DType::kBF16;
  if (s == "F16") return layout::DType::kF16;
  if (s == "F8_E4M3") return layout::DType::kF8E4M3;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype ", s, " is not supported (F32, BF16, F16, F8_E4M3)"));
}

}  // namespace

const char* SafetensorsDType(layout::DType t) {
  switch (t) {
    case layout::DType::kF32: return "F32";
    case layout::DType::kBF16: return "BF16";
    case layout::DType::kF16: return "F16";
    case layout::DType::kF8E4M3: return "F8_E4M3";
  }
  return "?";
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
  };
  uint64_t size = 0;
  auto fd = OpenRegularFile(path, &size);
  if (!fd.ok()) return fd.status();
  f->fd_ = *fd;
  f->size_ = static_cast<size_t>(size);
  if (f->size_ < 8) return bad(absl::StrCat("truncated: ", f->size_, " bytes, no header length"));
  f->map_ = mmap(nullptr, f->size_, PROT_READ, MAP_SHARED, f->fd_, 0);
  if (f->map_ == MAP_FAILED) {
    f->map_ = nullptr;
    return bad(absl::StrCat("mmap failed: ", std::strerror(errno)));
  }
  const unsigned char* p = static_cast<const unsigned char*>(f->map_);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | p[i];
  if (n > kMaxHeader) return bad(absl::StrCat("header length ", n, " exceeds the 100 MiB limit"));
  if (8 + n > f->size_) {
    return bad(absl::StrCat("truncated: header length ", n, " but the file has only ",
                            f->size_ - 8, " bytes after it"));
  }
  std::string header(reinterpret_cast<const char*>(p + 8), n);
  nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("corrupt header: not a JSON object");
  f->data_ = reinterpret_cast<const char*>(p) + 8 + n;
  const uint64_t data_len = f->size_ - 8 - n;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    if (name == "__metadata__") {
      if (!it->is_object()) return bad("__metadata__ must be an object of strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) return bad(absl::StrCat("__metadata__.", m.key(), " must be a string"));
        f->metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& e = *it;
    auto tbad = [&](const std::string& what) { return bad(absl::StrCat("tensor '", name, "': ", what)); };
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") ||
        !e.contains("data_offsets")) {
      return tbad("entry must have dtype, shape and data_offsets");
    }
    if (!e["dtype"].is_string()) return tbad("dtype must be a string");
    auto dt = FromName(e["dtype"].get<std::string>());
    if (!dt.ok()) return tbad(std::string(dt.status().message()));
    TensorInfo t;
    t.name = name;
    t.dtype = *dt;
    const auto& shape = e["shape"];
    if (!shape.is_array() || shape.size() > layout::kMaxDims) {
      return tbad(absl::StrCat("shape must be an array of at most ", layout::kMaxDims, " sizes"));
    }
    uint64_t elems = 1;
    for (const auto& d : shape) {
      if (!d.is_number_unsigned()) return tbad("shape entries must be non-negative integers");
      const uint64_t v = d.get<uint64_t>();
      if (v > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(elems, v, &elems) ||
          elems > layout::kMaxShapeBytes) {
        return tbad("shape holds more than 2^62 elements");
      }
      t.shape.d[t.shape.ndim++] = static_cast<int64_t>(v);
    }
    if (t.shape.ndim == 0) t.shape = layout::Shape::Of({1});  // scalar
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned()) {
      return tbad("data_offsets must be [begin, end]");
    }
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.begin > t.end || t.end > data_len) {
      return tbad(absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                               "] fall outside the data section (", data_len, " bytes)"));
    }
    const uint64_t want = elems * kernels::DTypeSize(t.dtype);
    if (t.end - t.begin != want) {
      return tbad(absl::StrCat("data_offsets span ", t.end - t.begin, " bytes but shape ",
                               t.shape.ToString(), " of ", e["dtype"].get<std::string>(),
                               " needs ", want));
    }
    f->index_[name] = f->tensors_.size();
    f->tensors_.push_back(t);
  }
  // Exact coverage: sorted by offset, each tensor starts where the last ended.
  std::vector<const TensorInfo*> order;
  for (const auto& t : f->tensors_) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t at = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const TensorInfo* t = order[i];
    if (t->begin < at) {
      return bad(absl::StrCat("tensors '", order[i - 1]->name, "' [", order[i - 1]->begin, ", ",
                              order[i - 1]->end, ") and '", t->name, "' [", t->begin, ", ", t->end,
                              ") have overlapping data offsets"));
    }
    if (t->begin > at) {
      return bad(absl::StrCat("bytes [", at, ", ", t->begin, ") of the data section belong to no "
                              "tensor (before '", t->name, "')"));
    }
    at = t->end;
  }
  if (at != data_len) {
    return bad(absl::StrCat("bytes [", at, ", ", data_len, ") at the end belong to no tensor"));
  }
  return f;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, size_);
  if (fd_ >= 0) close(fd_);
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

void SafetensorsFile::ReleasePages() const {
  if (map_ != nullptr) madvise(map_, size_, MADV_DONTNEED);
}

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const std::vector<TensorInfo>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->path_ = path;
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    j["__metadata__"] = m;
  }
  uint64_t at = 0;
  for (TensorInfo t : tensors) {
    uint64_t bytes = t.shape.NumElements() * kernels::DTypeSize(t.dtype);
    t.begin = at;
    t.end = at + bytes;
    at = t.end;
    nlohmann::ordered_json e;
    e["dtype"] = SafetensorsDType(t.dtype);
    std::vector<int64_t> shape(t.shape.d, t.shape.d + t.shape.ndim);
    e["shape"] = shape;
    e["data_offsets"] = {t.begin, t.end};
    j[t.name] = e;
    w->tensors_.push_back(t);
  }
  std::string header = j.dump();
  while (header.size() % 8 != 0) header.push_back(' ');
  auto fd = CreateTemporaryBeside(path, &w->tmp_);
  if (!fd.ok()) return fd.status();
  w->fd_ = *fd;
  unsigned char len[8];
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
  w->data_start_ = 8 + n;
  // The whole file's blocks are allocated now, so that a full disk fails
  // here and not halfway through the data.
  const off_t total = static_cast<off_t>(w->data_start_ + at);
  int err = posix_fallocate(w->fd_, 0, total);
  if (err == EOPNOTSUPP || err == ENOSYS || err == EINVAL) err = ftruncate(w->fd_, total) == 0 ? 0 : errno;
  if (err != 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate ", total, " bytes for ", w->tmp_, ": ", std::strerror(err)));
  }
  if (pwrite(w->fd_, len, 8, 0) != 8 || pwrite(w->fd_, header.data(), n, 8) != static_cast<ssize_t>(n)) {
    return absl::InternalError(absl::StrCat("writing ", w->tmp_, ": ", std::strerror(errno)));
  }
  return w;
}

absl::Status SafetensorsWriter::Write(size_t index, uint64_t offset, const void* bytes, size_t n) {
  const TensorInfo& t = tensors_.at(index);
  if (offset > t.end - t.begin || n > t.end - t.begin - offset) {
    return absl::InternalError(absl::StrCat("write past the end of tensor '", t.name, "'"));
  }
  const char* p = static_cast<const char*>(bytes);
  uint64_t pos = data_start_ + t.begin + offset;
  while (n > 0) {
    ssize_t w = pwrite(fd_, p, n, static_cast<off_t>(pos));
    if (w < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(absl::StrCat("writing ", tmp_, ": ", std::strerror(errno)));
    }
    p += w;
    pos += static_cast<uint64_t>(w);
    n -= static_cast<size_t>(w);
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Commit() {
  if (fsync(fd_) != 0 || close(fd_) != 0) {
    fd_ = -1;
    return absl::InternalError(absl::StrCat("closing ", tmp_, ": ", std::strerror(errno)));
  }
  fd_ = -1;
  if (rename(tmp_.c_str(), path_.c_str()) != 0) {
    return absl::InternalError(
        absl::StrCat("renaming ", tmp_, " to ", path_, ": ", std::strerror(errno)));
  }
  committed_ = true;
  return absl::OkStatus();
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) close(fd_);
  if (!committed_) unlink(tmp_.c_str());
}

}  // namespace wsync::convert
