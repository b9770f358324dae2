// Fuzz target: a Hugging Face config.json, parsed, normalized and (when it is
// a model the planner accepts) turned into canonical tensors, as the daemon
// and the converter do.
#include <cstdint>
#include <string>

#include "daemon/layout/model_config.h"
#include "daemon/layout/types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = wsync::layout::ParseHfConfig(text);
  if (!config.ok()) return 0;
  // As the daemon does (--max-tensors-per-model), with a small limit.
  auto tensors = wsync::layout::CanonicalTensors(*config, wsync::layout::DType::kBF16, /*max_tensors=*/4096);
  if (!tensors.ok()) return 0;
  (void)wsync::layout::ModelSpec::Create(*tensors);
  return 0;
}
