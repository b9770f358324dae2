#include "daemon/service/enums.h"

#include "absl/strings/str_cat.h"

namespace wsync::service {
namespace {

template <typename E>
absl::Status Unknown(const std::string& field, const char* what, E value, const char* allowed) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": unknown ", what, " value ", static_cast<int>(value),
                                                 " (expected ", allowed, ")"));
}

}  // namespace

absl::StatusOr<core::Role> RoleFromProto(v1::Role r, const std::string& field) {
  switch (r) {
    case v1::SOURCE: return core::Role::kSource;
    case v1::TARGET: return core::Role::kTarget;
    case v1::ROLE_UNSPECIFIED:
      return absl::InvalidArgumentError(absl::StrCat(field, ": role must be SOURCE or TARGET"));
    default: return Unknown(field, "role", r, "SOURCE or TARGET");
  }
}

v1::Role ToProto(core::Role r) { return r == core::Role::kSource ? v1::SOURCE : v1::TARGET; }

absl::StatusOr<core::UpdateMode> UpdateModeFromProto(v1::UpdateMode m, const std::string& field) {
  switch (m) {
    case v1::UPDATE_MODE_UNSPECIFIED:
    case v1::STAGED: return core::UpdateMode::kStaged;
    case v1::IN_PLACE: return core::UpdateMode::kInPlace;
    default: return Unknown(field, "update_mode", m, "STAGED or IN_PLACE");
  }
}

v1::UpdateMode ToProto(core::UpdateMode m) { return m == core::UpdateMode::kInPlace ? v1::IN_PLACE : v1::STAGED; }

absl::StatusOr<core::LoraMode> LoraModeFromProto(v1::LoraMode m, const std::string& field) {
  switch (m) {
    case v1::LORA_MODE_UNSPECIFIED:
    case v1::NONE: return core::LoraMode::kNone;
    case v1::MERGE: return core::LoraMode::kMerge;
    case v1::ADAPTER_ONLY: return core::LoraMode::kAdapterOnly;
    case v1::UNMERGE: return core::LoraMode::kUnmerge;
    default: return Unknown(field, "LoRA mode", m, "NONE, MERGE, ADAPTER_ONLY or UNMERGE");
  }
}

v1::LoraMode ToProto(core::LoraMode m) {
  switch (m) {
    case core::LoraMode::kNone: return v1::NONE;
    case core::LoraMode::kMerge: return v1::MERGE;
    case core::LoraMode::kAdapterOnly: return v1::ADAPTER_ONLY;
    case core::LoraMode::kUnmerge: return v1::UNMERGE;
  }
  return v1::LORA_MODE_UNSPECIFIED;
}

absl::StatusOr<core::LoraConvention> LoraConventionFromProto(v1::LoraConvention c, const std::string& field) {
  switch (c) {
    case v1::LORA_CONVENTION_UNSPECIFIED:
    case v1::PEFT: return core::LoraConvention::kPeft;
    case v1::DEEPSPEED: return core::LoraConvention::kDeepSpeed;
    default: return Unknown(field, "LoRA convention", c, "PEFT or DEEPSPEED");
  }
}

v1::LoraConvention ToProto(core::LoraConvention c) {
  return c == core::LoraConvention::kDeepSpeed ? v1::DEEPSPEED : v1::PEFT;
}

absl::StatusOr<layout::DType> DTypeFromProto(v1::DType d, const std::string& field) {
  switch (d) {
    case v1::FLOAT32: return layout::DType::kF32;
    case v1::BFLOAT16: return layout::DType::kBF16;
    case v1::FLOAT16: return layout::DType::kF16;
    case v1::FLOAT8_E4M3: return layout::DType::kF8E4M3;
    case v1::DTYPE_UNSPECIFIED: return absl::InvalidArgumentError(absl::StrCat(field, ": dtype must be set"));
    default: return Unknown(field, "dtype", d, "FLOAT32, BFLOAT16, FLOAT16 or FLOAT8_E4M3");
  }
}

v1::DType ToProto(layout::DType d) {
  switch (d) {
    case layout::DType::kF32: return v1::FLOAT32;
    case layout::DType::kBF16: return v1::BFLOAT16;
    case layout::DType::kF16: return v1::FLOAT16;
    case layout::DType::kF8E4M3: return v1::FLOAT8_E4M3;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<std::optional<layout::Fp8Scaling>> Fp8ScalingFromProto(v1::Fp8Scaling s, const std::string& field) {
  switch (s) {
    case v1::FP8_SCALING_UNSPECIFIED: return std::optional<layout::Fp8Scaling>();
    case v1::FP8_SCALING_BLOCK: return layout::Fp8Scaling::kBlock;
    case v1::FP8_SCALING_CHANNEL: return layout::Fp8Scaling::kChannel;
    case v1::FP8_SCALING_TENSOR: return layout::Fp8Scaling::kTensor;
    default: return Unknown(field, "FP8 scaling", s, "BLOCK, CHANNEL or TENSOR");
  }
}

v1::Fp8Scaling ToProto(const std::optional<layout::Fp8Scaling>& s) {
  if (!s) return v1::FP8_SCALING_UNSPECIFIED;
  switch (*s) {
    case layout::Fp8Scaling::kBlock: return v1::FP8_SCALING_BLOCK;
    case layout::Fp8Scaling::kChannel: return v1::FP8_SCALING_CHANNEL;
    case layout::Fp8Scaling::kTensor: return v1::FP8_SCALING_TENSOR;
  }
  return v1::FP8_SCALING_UNSPECIFIED;
}

}  // namespace wsync::service
