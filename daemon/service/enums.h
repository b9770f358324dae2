#ifndef WSYNC_DAEMON_SERVICE_ENUMS_H_
#define WSYNC_DAEMON_SERVICE_ENUMS_H_

// The one conversion of each wsync.v1 enum to its core type and back, used
// by the public and the peer services alike. FromProto never guesses: a
// value outside the enum (a newer client, garbage bytes) is INVALID_ARGUMENT
// naming `field`; an UNSPECIFIED value takes the default the proto documents,
// or is an error where the field is required.

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/core/core.h"
#include "daemon/layout/types.h"
#include "wsync/v1/types.pb.h"

namespace wsync::service {

// ROLE_UNSPECIFIED is an error.
absl::StatusOr<core::Role> RoleFromProto(v1::Role r, const std::string& field);
v1::Role ToProto(core::Role r);

// UNSPECIFIED = STAGED.
absl::StatusOr<core::UpdateMode> UpdateModeFromProto(v1::UpdateMode m, const std::string& field);
v1::UpdateMode ToProto(core::UpdateMode m);

// UNSPECIFIED = NONE.
absl::StatusOr<core::LoraMode> LoraModeFromProto(v1::LoraMode m, const std::string& field);
v1::LoraMode ToProto(core::LoraMode m);

// UNSPECIFIED = PEFT.
absl::StatusOr<core::LoraConvention> LoraConventionFromProto(v1::LoraConvention c, const std::string& field);
v1::LoraConvention ToProto(core::LoraConvention c);

// UNSPECIFIED = no FP8 scales (nullopt).
absl::StatusOr<std::optional<layout::Fp8Scaling>> Fp8ScalingFromProto(v1::Fp8Scaling s, const std::string& field);
v1::Fp8Scaling ToProto(const std::optional<layout::Fp8Scaling>& s);

// DTYPE_UNSPECIFIED is an error.
absl::StatusOr<layout::DType> DTypeFromProto(v1::DType d, const std::string& field);
v1::DType ToProto(layout::DType d);

}  // namespace wsync::service

#endif  // WSYNC_DAEMON_SERVICE_ENUMS_H_
