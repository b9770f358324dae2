#ifndef WSYNC_KERNELS_CUDA_TESTING_H_
#define WSYNC_KERNELS_CUDA_TESTING_H_

// Helpers for the Catch2 GPU tests: a CUDA call that must succeed, and
// copies between host vectors and device memory.

#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <vector>

#include "kernels/cuda_status.h"

// Fails the test, with the CUDA error, if `expr` does not return cudaSuccess.
#define CUDA_REQUIRE(expr)                                           \
  do {                                                               \
    absl::Status _s = ::wsync::kernels::CudaStatus((expr), #expr); \
    INFO(_s.ToString());                                             \
    REQUIRE(_s.ok());                                                \
  } while (0)

namespace wsync::kernels {

// A device copy of `v` (cudaFree it).
template <typename T>
T* ToDevice(const std::vector<T>& v) {
  void* p = nullptr;
  CUDA_REQUIRE(cudaMalloc(&p, std::max<size_t>(1, v.size() * sizeof(T))));
  CUDA_REQUIRE(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
  return static_cast<T*>(p);
}

// `n` elements at device address `d`.
template <typename T>
std::vector<T> ToHost(const T* d, size_t n) {
  std::vector<T> v(n);
  CUDA_REQUIRE(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return v;
}

}  // namespace wsync::kernels

#endif  // WSYNC_KERNELS_CUDA_TESTING_H_
