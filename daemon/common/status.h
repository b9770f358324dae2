#ifndef WSYNC_DAEMON_COMMON_STATUS_H_
#define WSYNC_DAEMON_COMMON_STATUS_H_

// Status helpers: early return on error, and one way to add context.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

// Evaluates `expr` (an absl::Status) and returns it from the enclosing
// function (returning absl::Status or absl::StatusOr) unless it is OK.
#define WSYNC_RETURN_IF_ERROR(expr)                                  \
  do {                                                               \
    if (absl::Status wsync_status_ = (expr); !wsync_status_.ok()) { \
      return wsync_status_;                                          \
    }                                                                \
  } while (0)

namespace wsync {

// `s` with `context` and ": " before its message, same code; OK stays OK.
// Annotate(NotFound("no tensor 'x'"), "model 'm'") is
// NotFound("model 'm': no tensor 'x'").
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

}  // namespace wsync

#endif  // WSYNC_DAEMON_COMMON_STATUS_H_
