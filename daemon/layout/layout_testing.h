#ifndef WSYNC_DAEMON_LAYOUT_LAYOUT_TESTING_H_
#define WSYNC_DAEMON_LAYOUT_LAYOUT_TESTING_H_

// Test helpers that work independently of the planner: they place canonical
// data into shards element by element, pairing the row-major enumeration of
// a piece's canonical box with that of its shard box.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "daemon/layout/planner.h"
#include "daemon/layout/types.h"

namespace wsync::layout::testing {

// fp32 values of every canonical tensor, indexed like the model.
using CanonicalData = std::vector<std::vector<float>>;

// Random values m/64 with |m| <= 127: exact in fp32, bf16 and fp16, so any
// chain of casts is lossless and results can be compared bit for bit.
CanonicalData RandomCanonical(const ModelSpec& model, std::mt19937& rng);

// The bytes of `shard` (its dtype), filled from canonical data; padding is 0.
std::vector<uint8_t> Materialize(const ModelSpec& model, const ShardSpec& shard,
                                 const CanonicalData& data);

// Buffers of every shard of every endpoint.
using Buffers = std::vector<std::vector<std::vector<uint8_t>>>;

Buffers MaterializeAll(const ModelSpec& model, const std::vector<Endpoint>& endpoints,
                       const CanonicalData& data);

// Buffers of the right sizes, every byte set to `fill`.
Buffers Garbage(const std::vector<Endpoint>& endpoints, uint8_t fill);

// Runs `plan` on host buffers with the CPU kernels (fills, then copies).
void Execute(const Plan& plan, const std::vector<Endpoint>& sources, Buffers& src,
             const std::vector<Endpoint>& targets, Buffers& dst, int threads = 1);

// Canonical data read back from whole-tensor shards (the hf recipe).
CanonicalData ReadBack(const ModelSpec& model, const std::vector<ShardSpec>& shards,
                       const std::vector<std::vector<uint8_t>>& buffers);

// A PEFT-convention LoRA adapter by canonical tensor names: base W is
// [out, in], A is [rank, in], B is [out, rank].
struct NamedAdapter {
  std::string base, a, b;
  double scaling = 1.0;
};

// `data` with W + scaling * B @ A for every adapter, by naive loops in
// double. With RandomCanonical values and small ranks every step is exact,
// so the result is the true merge, independent of any kernel.
CanonicalData MergeLoraNaive(const ModelSpec& model, const CanonicalData& data,
                             const std::vector<NamedAdapter>& adapters);

// Scaled FP8 of the whole 2-d canonical `tensor` of `data` (fp32 values)
// by the kernels' CPU reference, the specification: e4m3fn bytes row-major,
// and one scale_inv per block of `block_rows` x `block_cols` (the last ones
// smaller), [ceil(rows/block_rows), ceil(cols/block_cols)] row-major.
void Fp8Reference(const ModelSpec& model, const CanonicalData& data, int32_t tensor, std::vector<uint8_t>* q,
                  std::vector<float>* scales, int64_t block_rows = 128, int64_t block_cols = 128);

}  // namespace wsync::layout::testing

#endif  // WSYNC_DAEMON_LAYOUT_LAYOUT_TESTING_H_
