// Helpers shared by the standalone probes in this folder (ws_probe.cu,
// stream_probe.cu, pdl_probe.cu, wgmma_probe.cu), which are built alone
// with nvcc and so cannot include fast_conv.cuh (it needs the library's
// headers and build flags). Device helpers need sm_90 (mbarrier tx counts).
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cuda_runtime.h>

// A CUDA runtime call, checked: on an error, where and what, then exit.
#define CK(x)                                                                       \
  do {                                                                              \
    cudaError_t e_ = (x);                                                           \
    if (e_ != cudaSuccess) {                                                        \
      std::printf("%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                 \
    }                                                                               \
  } while (0)

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return (uint32_t)__cvta_generic_to_shared(p);
}
// A wgmma matrix descriptor, K-major without swizzle (as fast_conv.cuh's
// wg_desc): LBO the byte step between a K step's two core matrices, SBO
// the step between 8-row groups.
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}
// mbarriers in shared memory (addresses from smem_u32).
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// An arrival that also expects `bytes` of asynchronous copies.
__device__ __forceinline__ void mbar_expect(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n .reg .pred p;\n"
      "PROBE_WAIT_%=:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
      " @!p bra PROBE_WAIT_%=;\n}\n" ::"r"(bar),
      "r"(parity)
      : "memory");
}
// The global nanosecond timer (steps of ~0.25 us on the H100, S26-11).
__device__ __forceinline__ unsigned long long gtimer() {
  unsigned long long v;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v)::"memory");
  return v;
}

// The current device: its SM count and the shared memory a block may opt
// into; prints its name and those two numbers.
struct ProbeDevice {
  int sms, optin;
};
inline ProbeDevice probe_device() {
  int dev = 0;
  ProbeDevice d{};
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaDeviceGetAttribute(&d.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, dev));
  std::printf("%s, %d SMs, %d bytes of shared memory a block\n", prop.name, d.sms, d.optin);
  return d;
}
