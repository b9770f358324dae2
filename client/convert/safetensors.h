#ifndef WSYNC_CLIENT_CONVERT_SAFETENSORS_H_
#define WSYNC_CLIENT_CONVERT_SAFETENSORS_H_

// The safetensors file format, read and written to its specification:
//
//   [8 bytes: N, little-endian u64][N bytes: JSON header][data]
//
// The header maps each tensor name to {"dtype", "shape", "data_offsets":
// [begin, end]} (byte offsets into the data section) and may hold a
// "__metadata__" object of string -> string. The data section must be
// covered exactly: no tensor may overlap another, and no byte may be left
// unindexed. Supported dtypes: F32, BF16, F16, F8_E4M3.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/layout/types.h"

namespace wsync::convert {

struct TensorInfo {
  std::string name;
  layout::DType dtype = layout::DType::kF32;
  layout::Shape shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data section
};

// A safetensors file mapped read-only. Thread-safe once opened.
class SafetensorsFile {
 public:
  // Maps `path` and validates its header. INVALID_ARGUMENT naming the file
  // (and the tensor) for a truncated file, a header longer than the file, a
  // header that is not a JSON object, a malformed entry, an unsupported
  // dtype, offsets outside the data section or not matching the shape,
  // overlapping offsets, or unindexed bytes; NOT_FOUND if it cannot be
  // opened.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor called `name`, or null.
  const TensorInfo* Find(const std::string& name) const;
  // Pointer to a tensor's first byte.
  const void* Data(const TensorInfo& t) const { return data_ + t.begin; }
  // Drops this process's mapped pages (they stay in the page cache), so
  // that reading a large file does not grow the resident set.
  void ReleasePages() const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  int fd_ = -1;
  void* map_ = nullptr;
  size_t size_ = 0;
  const char* data_ = nullptr;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Writes a safetensors file whose layout is fixed up front, then filled in
// any order with Write. The file is created under a fresh name beside
// `path` (CreateTemporaryBeside: O_EXCL, no symlink followed), allocated in
// full at once (a full disk fails at Create), and renamed to `path` by
// Commit, so an interrupted or failed conversion never leaves a file that
// looks complete. Not thread-safe.
class SafetensorsWriter {
 public:
  // `tensors` in file order (offsets are assigned here); the header is
  // padded with spaces to a multiple of 8 bytes.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const std::vector<TensorInfo>& tensors,
      const std::map<std::string, std::string>& metadata);
  ~SafetensorsWriter();  // removes the temporary file if not committed

  // Assigned layout (with offsets).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // Writes `n` bytes at byte `offset` of tensor #index.
  absl::Status Write(size_t index, uint64_t offset, const void* bytes, size_t n);
  // fsyncs, closes and renames the file into place.
  absl::Status Commit();

 private:
  SafetensorsWriter() = default;
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t data_start_ = 0;
  bool committed_ = false;
  std::vector<TensorInfo> tensors_;
};

// "F32", "BF16", "F16", "F8_E4M3".
const char* SafetensorsDType(layout::DType t);

}  // namespace wsync::convert

#endif  // WSYNC_CLIENT_CONVERT_SAFETENSORS_H_
