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
  // The daemon bounds the tensor count before generating (--max-tensors-per-model).
  const int64_t experts = config->num_experts > 0 ? config->num_experts : 0;
  if (config->num_hidden_layers * (16 + 3 * experts) > 4096) return 0;
  auto tensors = wsync::layout::CanonicalTensors(*config, wsync::layout::DType::kBF16);
  if (!tensors.ok()) return 0;
  (void)wsync::layout::ModelSpec::Create(*tensors);
  return 0;
}
