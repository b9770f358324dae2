#ifndef WSYNC_DAEMON_CORE_MODES_H_
#define WSYNC_DAEMON_CORE_MODES_H_

// The modes a sync runs in, shared by the core and its parts.

namespace wsync::core {

enum class Role { kSource, kTarget };
// Staged: targets are written in daemon staging memory, copied to live
// memory at commit. In place: live memory is written while paused.
enum class UpdateMode { kStaged, kInPlace };
// What a sync does with LoRA adapters (docs/api.md): none; merge W + s*B@A
// as W moves; adapter_only: only A and B move, targets rebuild from their
// pristine base; unmerge: targets subtract s*B@A from their live weights.
enum class LoraMode { kNone, kMerge, kAdapterOnly, kUnmerge };
enum class LoraConvention { kPeft, kDeepSpeed };

// Whether W's bytes move in `mode` (none, merge).
inline bool MovesWeights(LoraMode mode) { return mode == LoraMode::kNone || mode == LoraMode::kMerge; }

}  // namespace wsync::core

#endif  // WSYNC_DAEMON_CORE_MODES_H_
