// Probe (not part of the build): how fast 256-thread blocks stream-read a
// float tensor the size of L3's float x at N = 256 (51.4 MB), by
//   1. register loads, K float4 a lane per round (K = 2, 4, 8, 16), each
//      round's loads issued together and consumed before the next;
//   2. the same, two rounds in flight (the next round's loads issued
//      before this round's are consumed);
//   3. linear bulk copies (cp.async.bulk) of S bytes into NB shared-memory
//      buffers, thread 0 refilling a buffer once the block has read it;
//   4. 2-D tensor-map tile copies (cp.async.bulk.tensor) of the tensor as
//      [rows, 256 floats], a box of R rows, into NB buffers, the same way;
// one block an SM, against a many-block kernel (the x packing's shape:
// 8-warp blocks, 2 float4 a lane, as many blocks as the data needs); then
// 1 and 2 on fewer blocks (the rate of part of the SMs), and P blocks
// reading while the other SMs write a tensor of the same size (the rate of
// two streams on disjoint SMs). Each block sums what it reads (checked
// against the host's sum, so no load can be dropped; the write-only row
// reads nothing and so prints SUM WRONG). Prints the median of 20
// launches. Results: benchmarks/NOTES-gpu.md, session 21 (S21-1, S21-2).
//
// nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 --expt-relaxed-constexpr -o stream_probe stream_probe.cu
#include <cuda.h>
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#include "probe_util.cuh"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>


constexpr int kThreads = 256;

__device__ __forceinline__ void bulk_copy(uint32_t dst, const void* src, uint32_t bytes,
                                          uint32_t bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::
          "r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
}
__device__ __forceinline__ void tile_copy_2d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                             uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
      "l"(map), "r"(c0), "r"(c1), "r"(bar)
      : "memory");
}
__device__ __forceinline__ float sum4(float4 v) { return (v.x + v.y) + (v.z + v.w); }

// Block-wide sum into out[blockIdx.x].
__device__ void block_sum(float s, float* out) {
  __shared__ float part[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int i = 0; i < kThreads / 32; ++i) t += part[i];
    out[blockIdx.x] = t;
  }
}

// 1, 2: rounds of K float4 a lane over the block's strided share of the
// n4 float4s (round r of block b: float4s (r grid + b) K 256 + ...).
template <int K, bool TWO>
__global__ void __launch_bounds__(kThreads, 1) regs_kernel(const float4* x, long long n4, float* out) {
  const long long per_round = (long long)K * kThreads;
  const long long rounds = (n4 + per_round - 1) / per_round;
  float s = 0.f;
  float4 v[K], w[K];
  auto load = [&](float4 (&d)[K], long long r) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const long long i = r * per_round + k * kThreads + threadIdx.x;
      d[k] = (r < rounds && i < n4) ? __ldcs(x + i) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
  };
  long long r = blockIdx.x;
  if (TWO) load(v, r);
  for (; r < rounds; r += gridDim.x) {
    if (TWO) {
      load(w, r + gridDim.x);
#pragma unroll
      for (int k = 0; k < K; ++k) s += sum4(v[k]);
#pragma unroll
      for (int k = 0; k < K; ++k) v[k] = w[k];
    } else {
      load(v, r);
#pragma unroll
      for (int k = 0; k < K; ++k) s += sum4(v[k]);
    }
  }
  block_sum(s, out);
}

// The many-block reference: block b reads float4s b 512 .. b 512 + 511
// (two a lane), as the x packing does.
__global__ void __launch_bounds__(kThreads) many_kernel(const float4* x, long long n4, float* out) {
  const long long i0 = (long long)blockIdx.x * 2 * kThreads + threadIdx.x;
  float4 a = i0 < n4 ? __ldcs(x + i0) : make_float4(0.f, 0.f, 0.f, 0.f);
  float4 b = i0 + kThreads < n4 ? __ldcs(x + i0 + kThreads) : make_float4(0.f, 0.f, 0.f, 0.f);
  block_sum(sum4(a) + sum4(b), out);
}

// 3, 4: NB buffers of `bytes` each; chunk c (of `bytes`, the last one
// shorter) goes to block c % grid. Thread 0 issues, every thread reads the
// landed buffer, the block meets, thread 0 refills it with the block's next
// chunk. tile: a 2-D tensor map of rows x 256 floats, `bytes` = R rows.
template <bool TILE>
__global__ void __launch_bounds__(kThreads, 1)
    staged_kernel(const float* x, long long nbytes, int nb, uint32_t bytes, float* out,
                  const __grid_constant__ CUtensorMap map) {
  extern __shared__ __align__(1024) unsigned char buf[];
  __shared__ __align__(8) unsigned long long bars[16];
  const long long nchunks = (nbytes + bytes - 1) / bytes;
  const uint32_t base = smem_u32(buf);
  auto issue = [&](int b, long long c) {
    const long long off = c * bytes;
    const uint32_t n = (uint32_t)std::min<long long>(bytes, nbytes - off);
    mbar_expect(smem_u32(&bars[b]), TILE ? bytes : n);  // (a tile box is whole: zeros past the end)
    if (TILE)
      tile_copy_2d(base + b * bytes, &map, 0, (int)(off / 1024), smem_u32(&bars[b]));
    else
      bulk_copy(base + b * bytes, reinterpret_cast<const char*>(x) + off, n, smem_u32(&bars[b]));
  };
  if (threadIdx.x == 0) {
    for (int b = 0; b < nb; ++b) mbar_init(smem_u32(&bars[b]), 1);
    for (int b = 0; b < nb; ++b) {
      const long long c = blockIdx.x + (long long)b * gridDim.x;
      if (c < nchunks) issue(b, c);
    }
  }
  __syncthreads();
  float s = 0.f;
  int it = 0;
  for (long long c = blockIdx.x; c < nchunks; c += gridDim.x, ++it) {
    const int b = it % nb;
    mbar_wait(smem_u32(&bars[b]), (uint32_t)(it / nb) & 1u);
    const long long off = c * bytes;
    const int n4 = (int)(std::min<long long>(bytes, nbytes - off) / 16);
    const float4* p = reinterpret_cast<const float4*>(buf + b * bytes);
    for (int i = threadIdx.x; i < n4; i += kThreads) s += sum4(p[i]);
    __syncthreads();
    if (threadIdx.x == 0) {
      asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
      const long long cn = c + (long long)nb * gridDim.x;
      if (cn < nchunks) issue(b, cn);
    }
  }
  block_sum(s, out);
}

// Split: blocks < P read x (K float4 a lane a round, strided over the P
// readers), the others write y (8 float4 a lane a round, strided over the
// writers), concurrently: the rate of one read and one write stream on
// disjoint SMs.
template <int K>
__global__ void __launch_bounds__(kThreads, 1)
    split_kernel(const float4* x, long long n4, float4* y, long long m4, int P, float* out) {
  float s = 0.f;
  if ((int)blockIdx.x < P) {
    const long long per_round = (long long)K * kThreads;
    const long long rounds = (n4 + per_round - 1) / per_round;
    for (long long r = blockIdx.x; r < rounds; r += P) {
      float4 v[K];
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const long long i = r * per_round + k * kThreads + threadIdx.x;
        v[k] = i < n4 ? __ldcs(x + i) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int k = 0; k < K; ++k) s += sum4(v[k]);
    }
  } else {
    const int W = gridDim.x - P, b = blockIdx.x - P;
    const long long per_round = 8LL * kThreads;
    const long long rounds = (m4 + per_round - 1) / per_round;
    const float4 z = make_float4(1.f, 2.f, 3.f, (float)b);
    for (long long r = b; r < rounds; r += W) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const long long i = r * per_round + k * kThreads + threadIdx.x;
        if (i < m4) __stcs(y + i, z);
      }
    }
  }
  block_sum(s, out);
}

PFN_cuTensorMapEncodeTiled_v12000 encoder() {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult q;
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                       &q) != cudaSuccess ||
      q != cudaDriverEntryPointSuccess)
    return nullptr;
  return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
}

int main(int argc, char** argv) {
  const long long nfloat = argc > 1 ? std::atoll(argv[1]) : 256LL * 14 * 14 * 256;  // L3, N = 256
  const long long nbytes = nfloat * 4, n4 = nfloat / 4;
  int dev = 0, sms = 0, optin = 0;
  CK(cudaGetDevice(&dev));
  CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  std::vector<float> h(nfloat);
  srand(1);
  for (auto& v : h) v = (float)(rand() % 17) - 8.f;  // small integers: exact sums in any order
  double want = 0;
  for (float v : h) want += v;
  float *x, *out;
  CK(cudaMalloc(&x, nbytes));
  CK(cudaMalloc(&out, sizeof(float) * 200000));
  CK(cudaMemcpy(x, h.data(), nbytes, cudaMemcpyHostToDevice));
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  std::printf("stream_probe: %.1f MB float, %d SMs, one 256-thread block an SM unless noted\n",
              nbytes / 1e6, sms);

  auto run = [&](const char* name, int grid, auto&& launch) {
    std::vector<float> ms;
    for (int r = 0; r < 22; ++r) {
      CK(cudaMemset(out, 0, sizeof(float) * grid));
      CK(cudaEventRecord(e0));
      launch();
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      CK(cudaGetLastError());
      float t = 0;
      CK(cudaEventElapsedTime(&t, e0, e1));
      if (r >= 2) ms.push_back(t);
    }
    std::vector<float> part(grid);
    CK(cudaMemcpy(part.data(), out, sizeof(float) * grid, cudaMemcpyDeviceToHost));
    double got = 0;
    for (float v : part) got += v;
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("  %-40s %7.1f us  %6.0f GB/s  %s\n", name, med * 1e3, nbytes / (med * 1e-3) / 1e9,
                std::fabs(got - want) < 0.5 ? "" : "SUM WRONG");
  };

  const int many = (int)((n4 + 2 * kThreads - 1) / (2 * kThreads));
  run("many blocks, 2 float4 a lane", many, [&] { many_kernel<<<many, kThreads>>>(reinterpret_cast<const float4*>(x), n4, out); });
#define REGS(K, TWO, NAME)                                                                  \
  run(NAME, sms,                                                                            \
      [&] { regs_kernel<K, TWO><<<sms, kThreads>>>(reinterpret_cast<const float4*>(x), n4, out); })
  REGS(2, false, "regs, 2 float4 a lane");
  REGS(4, false, "regs, 4 float4 a lane");
  REGS(8, false, "regs, 8 float4 a lane");
  REGS(16, false, "regs, 16 float4 a lane");
  REGS(4, true, "regs, 4 float4 a lane, two rounds in flight");
  REGS(8, true, "regs, 8 float4 a lane, two rounds in flight");
#undef REGS
  // Fewer blocks: the per-SM rate.
  for (int g : {16, 33, 44, 66, 99}) {
    char name[96];
    std::snprintf(name, sizeof name, "regs, 16 float4 a lane, %d blocks", g);
    run(name, g, [&] { regs_kernel<16, false><<<g, kThreads>>>(reinterpret_cast<const float4*>(x), n4, out); });
    std::snprintf(name, sizeof name, "regs, 8 float4 a lane x2, %d blocks", g);
    run(name, g, [&] { regs_kernel<8, true><<<g, kThreads>>>(reinterpret_cast<const float4*>(x), n4, out); });
  }
  {
    float4* y;
    CK(cudaMalloc(&y, nbytes));
    // write only (all SMs), then read P SMs + write the rest concurrently
    // (the time is for both streams: the GB/s column counts x's bytes only)
    run("write only, 132 writers (x bytes)", sms, [&] {
      split_kernel<16><<<sms, kThreads>>>(reinterpret_cast<const float4*>(x), n4, y, n4, 0, out); });
    for (int P : {22, 33, 44, 55, 66}) {
      char name[96];
      std::snprintf(name, sizeof name, "split: %d readers + %d writers", P, sms - P);
      run(name, sms, [&] {
        split_kernel<16><<<sms, kThreads>>>(reinterpret_cast<const float4*>(x), n4, y, n4, P, out); });
    }
    CK(cudaFree(y));
  }

  CUtensorMap map{};
  const PFN_cuTensorMapEncodeTiled_v12000 enc = encoder();
  for (int tile = 0; tile < 2; ++tile) {
    for (uint32_t kb : {16u, 32u, 64u}) {
      for (int nb : {2, 3, 4, 6}) {
        const uint32_t bytes = kb * 1024;
        const size_t smem = (size_t)nb * bytes;
        if (smem + 1024 > (size_t)optin || nb > 16) continue;
        if (tile) {
          if (enc == nullptr) continue;
          // rows of 256 floats (1 KB); box: 256 floats x bytes / 1 KB rows (<= 256)
          const cuuint64_t dims[2] = {256, (cuuint64_t)(nbytes / 1024)};
          const cuuint64_t strides[1] = {1024};
          const cuuint32_t box[2] = {256, bytes / 1024}, es[2] = {1, 1};
          if (box[1] > 256 ||
              enc(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 2, x, dims, strides, box, es,
                  CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
                  CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                  CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
            continue;
        }
        auto kern = tile ? staged_kernel<true> : staged_kernel<false>;
        CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        char name[96];
        std::snprintf(name, sizeof name, "%s %u KB x %d buffers", tile ? "tensor-map tiles" : "bulk copies",
                      kb, nb);
        run(name, sms, [&] { kern<<<sms, kThreads, smem>>>(x, nbytes, nb, bytes, out, map); });
      }
    }
  }
  return 0;
}
