#ifndef WSYNC_CLIENT_CONVERT_FILES_H_
#define WSYNC_CLIENT_CONVERT_FILES_H_

// How the converter touches the file system, which may be shared with other
// users: inputs must be regular files (a FIFO or device is refused, never
// waited on), and outputs are created under fresh, unguessable names with
// O_EXCL (mkstemp) in the output directory and renamed into place, so that
// no symlink or existing file planted there is followed or written through.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace wsync::convert {

// Opens `path` for reading: O_NONBLOCK (a FIFO cannot block the open), then
// INVALID_ARGUMENT unless it is a regular file (a symlink to one is fine).
// Returns the descriptor; *size gets its size.
absl::StatusOr<int> OpenRegularFile(const std::string& path, uint64_t* size);

// The whole of a regular file of at most `max_bytes`.
absl::StatusOr<std::string> ReadRegularFile(const std::string& path, uint64_t max_bytes = 256ull << 20);

// A new file "<path>.XXXXXX" (mkstemp, mode 0644 after the umask), for
// writing and then renaming over `path`. *tmp gets its name.
absl::StatusOr<int> CreateTemporaryBeside(const std::string& path, std::string* tmp);

// Writes `text` to a temporary file beside `path`, fsyncs it and renames it
// over `path` (which, if it is a symlink, is replaced, not followed).
absl::Status WriteFileAtomically(const std::string& path, const std::string& text);

// Whether two paths name the same directory (same device and inode).
bool SameDirectory(const std::string& a, const std::string& b);

}  // namespace wsync::convert

#endif  // WSYNC_CLIENT_CONVERT_FILES_H_
