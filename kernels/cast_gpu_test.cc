// GPU test: the CUDA cast matches the CPU reference bit for bit.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cast.h"
#include "kernels/cast_ref.h"
#include "kernels/cuda_status.h"
#include "kernels/device_info.h"
#include "kernels/dtype.h"

namespace wsync::kernels {
namespace {

#define CUDA_REQUIRE(expr)                                 \
  do {                                                     \
    absl::Status _s = CudaStatus((expr), #expr);           \
    INFO(_s.ToString());                                   \
    REQUIRE(_s.ok());                                      \
  } while (0)

std::vector<float> RandomInputs(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> bits;
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = BitsF32(bits(rng));  // every pattern, NaN and Inf too
  const uint32_t specials[] = {0x7f800000u, 0xff800000u, 0x7fa00000u, 0x7f7fffffu,
                               0x3f808000u, 0x3f818000u, 0x80000000u, 0x00008000u};
  for (size_t i = 0; i < n && i < 8; ++i) v[i] = BitsF32(specials[i]);
  return v;
}

TEST_CASE("a GPU is visible", "[gpu]") {
  auto gpus = ListGpus();
  INFO(gpus.status().ToString());
  REQUIRE(gpus.ok());
  REQUIRE(!gpus->empty());
  for (const GpuInfo& g : *gpus) {
    INFO(Describe(g));
    CHECK(g.uuid.rfind("GPU-", 0) == 0);
  }
}

TEST_CASE("CUDA fp32->bf16 cast matches the CPU reference", "[gpu]") {
  // Odd sizes and misaligned starts exercise the vector and scalar paths.
  const size_t sizes[] = {1, 3, 4, 1023, 4096 + 7, (1u << 20) + 5};
  const size_t shifts[] = {0, 1, 3};
  for (size_t n : sizes) {
    for (size_t shift : shifts) {
      std::vector<float> in = RandomInputs(n, static_cast<uint32_t>(n * 7 + shift));
      std::vector<uint16_t> want(n), got(n);
      CastF32ToBf16Ref(in.data(), want.data(), n);

      float* d_in = nullptr;
      uint16_t* d_out = nullptr;
      CUDA_REQUIRE(cudaMalloc(reinterpret_cast<void**>(&d_in), (n + shift) * sizeof(float)));
      CUDA_REQUIRE(cudaMalloc(reinterpret_cast<void**>(&d_out), (n + shift) * sizeof(uint16_t)));
      CUDA_REQUIRE(cudaMemcpy(d_in + shift, in.data(), n * sizeof(float), cudaMemcpyHostToDevice));
      CUDA_REQUIRE(LaunchCastF32ToBf16(d_in + shift, d_out + shift, n, nullptr));
      CUDA_REQUIRE(cudaDeviceSynchronize());
      CUDA_REQUIRE(cudaMemcpy(got.data(), d_out + shift, n * sizeof(uint16_t),
                              cudaMemcpyDeviceToHost));
      CUDA_REQUIRE(cudaFree(d_in));
      CUDA_REQUIRE(cudaFree(d_out));
      INFO("n=" << n << " shift=" << shift);
      size_t mismatches = 0;
      for (size_t i = 0; i < n; ++i) mismatches += got[i] != want[i];
      CHECK(mismatches == 0);
    }
  }
}

}  // namespace
}  // namespace wsync::kernels
