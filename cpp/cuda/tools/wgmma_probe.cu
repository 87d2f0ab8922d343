// Probe (not part of the build): wgmma.mma_async .b1 on sm_90a.
// 1. correctness of A-from-registers (ldmatrix fragments as for
//    mma.sync m16n8k256) x B from shared memory (no-swizzle K-major
//    core matrices) against a host popcount GEMM, for both readings of
//    the descriptor's LBO / SBO;
// 2. throughput of m64n128k256 / m64n256k256 (A in registers) against
//    mma.sync m16n8k256, in binary MACs per second.
// 3. (session 11; first run session 12) the ping-pong kernel's K step as it issues
//    it: two m64n128k256 (two 64-row halves, A in registers) over B in
//    128-byte swizzled K blocks of 16 KB, optionally two m64n8k256 for X1,
//    four A buffers loaded two steps ahead (wait 2), one warpgroup per SM
//    (the other waits in the kernel): ns per K step and MAC/s, against
//    variants without X1, with one half only, and with unswizzled B.
//    In the kernel (S11-10, L4) a step took ~267 ns with 3 buffers.
// 4. (session 12) A from shared memory (SS): correctness for separate and
//    overlapping core matrices (LBO of one 16-byte unit), and a K loop
//    that issues a tile's steps back to back (ns per step).
// 5. (session 13, written and compiled, not yet run; PROBE_SW64=1 runs it
//    alone) A from shared memory in the K-major 64-byte-swizzle layout:
//    pixel-major rows of 64 bytes (C = 512: 4 chunks), chunk c of row r at
//    16 (c ^ ((r >> 1) & 3)) (the pattern a SWIZZLE_64B tensor-map box of
//    64-byte inner rows writes; here written by hand), read from a start
//    shifted by dx rows (a tap's shift) and 32 bytes per K step half: for
//    which descriptor base offsets (bits 49-51) is m64n128k256 exact?
// nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -o wgmma_probe wgmma_probe.cu
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>
#include <cuda_runtime.h>
#include "probe_util.cuh"

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }

#define R8(i) "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), "+r"(d[i + 6]), "+r"(d[i + 7])
// m64n128k256, A registers, 64 accumulators
__device__ __forceinline__ void wgmma128(int (&d)[64], const uint32_t (&a)[4], uint64_t bdesc) {
  asm volatile(
      "{\n"
      "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "{%64,%65,%66,%67}, %68, 1;\n"
      "}\n"
      : R8(0), R8(8), R8(16), R8(24), R8(32), R8(40), R8(48), R8(56)
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc));
}
__device__ __forceinline__ void wgmma8(int (&d)[4], const uint32_t (&a)[4], uint64_t bdesc) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc {%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc));
}
// A from shared memory too (SS): acc = 0 overwrites d (the first K step).
__device__ __forceinline__ void wgmma128ss(int (&d)[64], uint64_t adesc, uint64_t bdesc, int acc) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"
      "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"
      "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"
      "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, "
      "%64, %65, p;\n"
      "}\n"
      : R8(0), R8(8), R8(16), R8(24), R8(32), R8(40), R8(48), R8(56)
      : "l"(adesc), "l"(bdesc), "r"(acc));
}
__device__ __forceinline__ void wgmma8ss(int (&d)[4], uint64_t adesc, uint64_t bdesc, int acc) {
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %6, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc {%0,%1,%2,%3}, %4, %5, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "l"(adesc), "l"(bdesc), "r"(acc));
}
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

// The check kernels' B (K-major core matrices: [16 groups][kc chunks][8
// rows], from B's [128][kc] row-major chunks) and their result (thread
// (warp, gq, tq)'s accumulators into C [64][128]).
__device__ void load_b_core(uint4* bs, const uint4* B, int kc) {
  for (int q = threadIdx.x; q < 128 * kc; q += 128) {
    const int n = q / kc, c = q % kc;
    bs[((n >> 3) * kc + c) * 8 + (n & 7)] = B[q];
  }
}
__device__ void store_c(int* C, const int (&d)[64]) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, gq = lane >> 2, tq = lane & 3;
  for (int j = 0; j < 16; ++j)
    for (int v = 0; v < 4; ++v) {
      const int r = warp * 16 + gq + 8 * (v >> 1), c = 8 * j + 2 * tq + (v & 1);
      C[r * 128 + c] = d[4 * j + v];
    }
}

// A: [64][K/8] bytes row-major (K bits per row), B: [128][K/8] bytes (row n = column n).
// ksteps = K / 256. C: [64][128] int.
__global__ void check_kernel(const uint4* A, const uint4* B, int* C, int ksteps, int variant) {
  extern __shared__ __align__(128) unsigned char sm[];
  uint4* as = (uint4*)sm;                      // [64][2 ksteps] chunks: row-major
  uint4* bs = (uint4*)(sm + 64 * 2 * ksteps * 16);  // core-matrix: [16 groups][2 ksteps chunks][8 rows]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int kc = 2 * ksteps;
  for (int q = tid; q < 64 * kc; q += 128) as[q] = A[q];
  load_b_core(bs, B, kc);
  __syncthreads();
  int d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0;
  const uint32_t lbo = variant ? 8 * 16 * kc : 128, sbo = variant ? 128 : 8 * 16 * kc;
  for (int i = 0; i < ksteps; ++i) {
    uint32_t a[4];
    const int row = warp * 16 + (lane & 15), chunk = 2 * i + (lane >> 4);
    ldsm4(a, smem_u32(as + row * kc + chunk));
    wg_fence();
    wgmma128(d, a, wg_desc(smem_u32(bs + 2 * i * 8), lbo, sbo));
    wg_commit();
    wg_wait<0>();
  }
  store_c(C, d);
}

// throughput: every warpgroup loops `iters` wgmmas on fixed A registers and B in smem
template <int NN>
__global__ void tput_wgmma(int* out, int iters) {
  extern __shared__ __align__(128) unsigned char sm[];
  const int tid = threadIdx.x;
  for (int q = tid; q < 256 * 32 / 4; q += blockDim.x) ((uint32_t*)sm)[q] = q * 2654435761u;
  __syncthreads();
  int d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0;
  uint32_t a[4] = {tid * 7u, tid * 13u, tid * 17u, tid * 19u};
  const uint64_t desc = wg_desc(smem_u32(sm), 128, 256);
  wg_fence();
  for (int i = 0; i < iters; ++i) {
    wgmma128(d, a, desc);
    if (NN == 256) wgmma128(d, a, desc + (uint64_t)((128 * 256 / 8 / 16) & 0x3FFF) * 0);  // same shape twice = n256 work
    wg_commit();
    wg_wait<1>();
  }
  wg_wait<0>();
  int s = 0;
  for (int i = 0; i < 64; ++i) s += d[i];
  out[blockIdx.x * blockDim.x + tid] = s;
}
__global__ void tput_mma(int* out, int iters) {
  int d[8][4] = {};
  const uint32_t a[4] = {threadIdx.x * 7u, threadIdx.x * 13u, threadIdx.x * 17u, threadIdx.x * 19u};
  uint32_t b0 = threadIdx.x * 3u, b1 = threadIdx.x * 5u;
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int k = 0; k < 8; ++k)
      asm volatile(
          "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
          "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
          : "+r"(d[k][0]), "+r"(d[k][1]), "+r"(d[k][2]), "+r"(d[k][3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  int s = 0;
  for (int k = 0; k < 8; ++k) s += d[k][0] + d[k][1] + d[k][2] + d[k][3];
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

// The kernel's K-loop pattern: per step ldmatrix of the next A (double
// buffered), fence, m64n128 (+ m64n8 when X1), commit, wait 1; `steps` K steps
// per "tile", then wait 0 (as at a tile's end).
template <bool X1>
__global__ void tput_rs_loop(int* out, int tiles, int steps) {
  extern __shared__ __align__(128) unsigned char sm[];
  const int tid = threadIdx.x, lane = tid & 31;
  for (int q = tid; q < 48 * 1024 / 4; q += blockDim.x) ((uint32_t*)sm)[q] = q * 2654435761u;
  __syncthreads();
  int d[64], x1[4] = {0, 0, 0, 0};
  for (int i = 0; i < 64; ++i) d[i] = 0;
  const uint32_t abase = smem_u32(sm + 16384) + (lane & 15) * 32 + (lane >> 4) * 16 + (tid >> 5) * 512;
  const uint64_t desc = wg_desc(smem_u32(sm), 128, 256 * 2);
  const uint64_t ones = wg_desc(smem_u32(sm + 40000), 128, 256);
  for (int t = 0; t < tiles; ++t) {
    uint32_t a0[4], a1[4];
    ldsm4(a0, abase);
    for (int i = 0; i < steps; i += 2) {
      wg_fence();
      wgmma128(d, a0, desc + 16 * (i & 3));
      if (X1) wgmma8(x1, a0, ones);
      wg_commit();
      wg_wait<1>();
      ldsm4(a1, abase + 1024 * ((i + 1) & 7));
      wg_fence();
      wgmma128(d, a1, desc + 16 * ((i + 1) & 3));
      if (X1) wgmma8(x1, a1, ones);
      wg_commit();
      wg_wait<1>();
      ldsm4(a0, abase + 1024 * ((i + 2) & 7));
    }
    wg_wait<0>();
  }
  int s = x1[0];
  for (int i = 0; i < 64; ++i) s += d[i];
  out[blockIdx.x * blockDim.x + tid] = s;
}

// The ping-pong kernel's K loop (fast_conv.cuh, WG): per step i, two
// m64n128 (HALVES = 2) on A buffer i % 4 and B at K block i / 4 (+32 bytes
// per step inside it, 128-byte swizzle, SBO 1024) or, SWZ = false, B without
// swizzle (core matrices, LBO 128, SBO 256 per K step); X1: two m64n8 on
// all-ones B; then wait 2 and ldmatrix of step i + 2. `steps` steps per
// tile, `tiles` tiles; one block of 128 threads per SM.
template <bool X1, int HALVES, bool SWZ>
__global__ void tput_kernel_loop(int* out, int tiles, int steps) {
  extern __shared__ __align__(128) unsigned char sm[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int q = tid; q < 161 * 1024 / 4; q += blockDim.x) ((uint32_t*)sm)[q] = q * 2654435761u;
  __syncthreads();
  const uint32_t base = (smem_u32(sm) + 1023u) & ~1023u;  // swizzle atoms: 1024-aligned
  const uint32_t bbase = base;                // 5 K blocks of 16 KB (80 KB)
  const uint32_t abase = base + 81920;        // slots: 2 halves x 64 rows x 16 chunks (32 KB)
  const uint32_t ones = base + 155648;
  const uint32_t arow0 = abase + (16 * warp + (lane & 15)) * 256 + (lane >> 4) * 16;
  const uint32_t arow1 = arow0 + 64 * 256;
  const uint64_t bdesc = SWZ ? (wg_desc(bbase, 16, 1024) | (1ull << 62)) : wg_desc(bbase, 128, 256);
  const uint64_t x1d = wg_desc(ones, 128, 256);
  int d0[64], d1[64], x0[4] = {0, 0, 0, 0}, x1v[4] = {0, 0, 0, 0};
  for (int i = 0; i < 64; ++i) d0[i] = d1[i] = 0;
  for (int t = 0; t < tiles; ++t) {
    uint32_t af[4][2][4];
    ldsm4(af[0][0], arow0);
    ldsm4(af[0][1], arow1);
    ldsm4(af[1][0], arow0 + 32);
    ldsm4(af[1][1], arow1 + 32);
    auto step = [&](int i, auto bc) {
      constexpr int B = decltype(bc)::value;
      wg_fence();
      const uint64_t bd = SWZ ? bdesc + (uint64_t)(((i >> 2) % 5) * 1024 + 2 * (i & 3))
                              : bdesc + (uint64_t)((i % 20) * 16);
      wgmma128(d0, af[B][0], bd);
      if (HALVES == 2) wgmma128(d1, af[B][1], bd);
      if (X1) {
        wgmma8(x0, af[B][0], x1d);
        if (HALVES == 2) wgmma8(x1v, af[B][1], x1d);
      }
      wg_commit();
      if (i + 2 < steps) {
        wg_wait<2>();
        ldsm4(af[(B + 2) % 4][0], arow0 + 32 * ((i + 2) & 7));
        if (HALVES == 2) ldsm4(af[(B + 2) % 4][1], arow1 + 32 * ((i + 2) & 7));
      }
    };
    for (int i = 0; i < steps; i += 4) {
      step(i, std::integral_constant<int, 0>{});
      if (i + 1 < steps) step(i + 1, std::integral_constant<int, 1>{});
      if (i + 2 < steps) step(i + 2, std::integral_constant<int, 2>{});
      if (i + 3 < steps) step(i + 3, std::integral_constant<int, 3>{});
    }
    wg_wait<0>();
  }
  int s = x0[0] + x1v[0];
  for (int i = 0; i < 64; ++i) s += d0[i] + d1[i];
  out[blockIdx.x * blockDim.x + tid] = s;
}

// SS check: S (nunits 16-byte units) in shared memory; logical A chunk
// (row r, K chunk 2 i + h) is unit (r >> 3) sbo + (r & 7) + i step + h lbo
// (units), read by an A descriptor (start i step, LBO lbo, SBO sbo); B as in
// check_kernel variant 0. C: [64][128].
__global__ void check_ss_kernel(const uint4* S, int nunits, const uint4* B, int* C, int ksteps, int lbo,
                                int sbo, int step) {
  extern __shared__ __align__(128) unsigned char sm[];
  uint4* ss = (uint4*)sm;
  uint4* bs = (uint4*)(sm + ((nunits * 16 + 127) & ~127));
  const int kc = 2 * ksteps;
  for (int q = threadIdx.x; q < nunits; q += 128) ss[q] = S[q];
  load_b_core(bs, B, kc);
  __syncthreads();
  int d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0;
  wg_fence();
  for (int i = 0; i < ksteps; ++i)
    wgmma128ss(d, wg_desc(smem_u32(ss + i * step), lbo * 16, sbo * 16),
               wg_desc(smem_u32(bs + 2 * i * 8), 128, 8 * 16 * kc), i);
  wg_commit();
  wg_wait<0>();
  store_c(C, d);
}

// Part 5: rows of 64 bytes, the 64-byte swizzle by hand (the 1024-aligned
// base), one K step (its 32-byte half s of each row) from row dx on, base
// offset bo; B as in check_ss_kernel (kc = 2). C: [64][128].
__global__ void check_sw64_kernel(const uint4* A, const uint4* B, int* C, int dx, int s, int bo) {
  extern __shared__ __align__(128) unsigned char sm[];
  const uint32_t pad = ((smem_u32(sm) + 1023u) & ~1023u) - smem_u32(sm);
  unsigned char* as = sm + pad;          // 72 rows x 64 bytes (4608: a multiple of 128)
  uint4* bs = (uint4*)(as + 72 * 64);    // B core matrices
  for (int q = threadIdx.x; q < 72 * 4; q += 128) {
    const int r = q >> 2, c = q & 3;
    *(uint4*)(as + r * 64 + ((c ^ ((r >> 1) & 3)) << 4)) = A[q];
  }
  load_b_core(bs, B, 2);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  int d[64];
  for (int i = 0; i < 64; ++i) d[i] = 0;
  wg_fence();
  // K-major, 64-byte swizzle (bits 62-63 = 2), SBO 512 (8 rows of 64
  // bytes), LBO unused (1), base offset bo.
  const uint64_t ad = wg_desc(smem_u32(as) + dx * 64 + s * 32, 16, 512) | (2ull << 62) |
                      ((uint64_t)(bo & 7) << 49);
  wgmma128ss(d, ad, wg_desc(smem_u32(bs), 128, 8 * 16 * 2), 0);
  wg_commit();
  wg_wait<0>();
  store_c(C, d);
}

// SS K loop: per tile, `steps` K steps each of HALVES m64n128 (A and B by
// descriptor; + m64n8 X1 each) issued back to back, one commit, wait 0.
// WGS warpgroups per block (each its own accumulators, A of its own).
template <bool X1, int HALVES>
__global__ void tput_ss_loop(int* out, int tiles, int steps) {
  extern __shared__ __align__(128) unsigned char sm[];
  const int tid = threadIdx.x, wg = tid >> 7;
  for (int q = tid; q < 200 * 1024 / 4; q += blockDim.x) ((uint32_t*)sm)[q] = q * 2654435761u;
  __syncthreads();
  const uint32_t base = (smem_u32(sm) + 1023u) & ~1023u;
  const uint32_t bbase = base;                      // 80 KB of B, 128-byte swizzle
  const uint32_t abase = base + 81920 + wg * 40960;  // per warpgroup: 2 halves x 20 KB
  const uint64_t bdesc = wg_desc(bbase, 16, 1024) | (1ull << 62);
  const uint64_t ones = wg_desc(base + 81920 + 2 * 40960, 128, 256);
  int d0[64], d1[64], x0[4] = {0, 0, 0, 0}, x1v[4] = {0, 0, 0, 0};
  for (int i = 0; i < 64; ++i) d0[i] = d1[i] = 0;
  for (int t = 0; t < tiles; ++t) {
    wg_fence();
    for (int i = 0; i < steps; ++i) {
      // A of step i: 16 groups x ~1.2 KB (SBO 1280), chunks 16 bytes apart
      const uint64_t ad = wg_desc(abase + 32 * i, 16, 1280);
      const uint64_t bd = bdesc + (uint64_t)(((i >> 2) % 5) * 1024 + 2 * (i & 3));
      wgmma128ss(d0, ad, bd, i | t);
      if (HALVES == 2) wgmma128ss(d1, ad + (20480 >> 4), bd, i | t);
      if (X1) {
        wgmma8ss(x0, ad, ones, i | t);
        if (HALVES == 2) wgmma8ss(x1v, ad + (20480 >> 4), ones, i | t);
      }
    }
    wg_commit();
    wg_wait<0>();
  }
  int s = x0[0] + x1v[0];
  for (int i = 0; i < 64; ++i) s += d0[i] + d1[i];
  out[blockIdx.x * blockDim.x + tid] = s;
}

// Milliseconds of launch() (its second run: the first warms up).
template <class F>
float time_ms(F launch) {
  cudaEvent_t t0, t1;
  cudaEventCreate(&t0);
  cudaEventCreate(&t1);
  float ms = 0;
  for (int rep = 0; rep < 2; ++rep) {
    cudaEventRecord(t0);
    launch();
    cudaEventRecord(t1);
    cudaEventSynchronize(t1);
    cudaEventElapsedTime(&ms, t0, t1);
  }
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  return ms;
}

// The same with the kernel's A layout (session 12): per-step start offsets
// and LBO from a table (as the kernel's group boxes give them), SBO = the
// group pitch; one warpgroup per SM.
struct SsTab { int n; int e[64]; int lbo[64]; };
__global__ void tput_ss_kernel_layout(int* out, int tiles, SsTab tab, int sbo, int x1) {
  extern __shared__ __align__(128) unsigned char sm[];
  const int tid = threadIdx.x;
  for (int q = tid; q < 200 * 1024 / 4; q += blockDim.x) ((uint32_t*)sm)[q] = q * 2654435761u;
  __syncthreads();
  const uint32_t base = (smem_u32(sm) + 1023u) & ~1023u;
  const uint32_t abase = base + 81920;
  const uint64_t bdesc = wg_desc(base, 16, 1024) | (1ull << 62);
  const uint64_t ones = wg_desc(base + 81920 + 2 * 40960 + 16384, 128, 256);
  const uint64_t adesc0 = wg_desc(abase, 0, sbo);
  const uint64_t ahalf = (uint64_t)((8 * sbo) >> 4);
  int d0[64], d1[64], x0[4] = {0, 0, 0, 0}, x1v[4] = {0, 0, 0, 0};
  for (int i = 0; i < 64; ++i) d0[i] = d1[i] = 0;
  for (int t = 0; t < tiles; ++t) {
    wg_fence();
    for (int i = 0; i < tab.n; ++i) {
      const uint64_t ad = adesc0 + (uint64_t)((uint32_t)(tab.e[i] >> 4) | ((uint32_t)(tab.lbo[i] >> 4) << 16));
      const uint64_t bd = bdesc + (uint64_t)(((i >> 2) % 5) * 1024 + 2 * (i & 3));
      wgmma128ss(d0, ad, bd, 1);
      wgmma128ss(d1, ad + ahalf, bd, 1);
      if (x1) {
        wgmma8ss(x0, ad, ones, 1);
        wgmma8ss(x1v, ad + ahalf, ones, 1);
      }
    }
    wg_commit();
    wg_wait<0>();
  }
  int s = x0[0] + x1v[0];
  for (int i = 0; i < 64; ++i) s += d0[i] + d1[i];
  out[blockIdx.x * blockDim.x + tid] = s;
}
// L-like layouts: p chunk planes, w8 pixels, kh x kw taps (dilation 1).
void run_ss_kernel_layout(int sms, int* dout, int p, int w8, int kh, int kw, int x1) {
  SsTab tab{};
  const int kc = kh * kw * p;
  tab.n = (kc + 1) / 2;
  auto off = [&](int k) {
    const int tap = k / p, c = k % p, dy = tap / kw, dx = tap % kw;
    return 16 * ((dy * p + c) * w8 + dx);
  };
  for (int i = 0; i < tab.n; ++i) {
    tab.e[i] = off(2 * i);
    tab.lbo[i] = (2 * i + 1 < kc ? off(2 * i + 1) : tab.e[i] + 16) - tab.e[i];
  }
  const int sbo = (16 * w8 * p * kh + 127) / 128 * 128;
  cudaFuncSetAttribute(tput_ss_kernel_layout, cudaFuncAttributeMaxDynamicSharedMemorySize, 210 * 1024);
  const int tiles = 36000 / tab.n;
  const float ms =
      time_ms([&] { tput_ss_kernel_layout<<<sms, 128, 210 * 1024>>>(dout, tiles, tab, sbo, x1); });
  printf("SS kernel layout p=%d w8=%d %dx%d (sbo %d, %d steps) x1=%d: %6.1f ns/step (%s)\n", p, w8, kh, kw, sbo,
         tab.n, x1, ms * 1e6 / ((double)tiles * tab.n), cudaGetErrorString(cudaGetLastError()));
}

template <bool X1, int HALVES>
void run_ss_loop(int sms, int wgs, int* dout, const char* name) {
  auto k = tput_ss_loop<X1, HALVES>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 210 * 1024);
  for (int steps : {5, 9, 18}) {
    const int tiles = 36000 / steps;
    const float ms = time_ms([&] { k<<<sms, 128 * wgs, 210 * 1024>>>(dout, tiles, steps); });
    const double macs = (double)sms * wgs * tiles * steps * HALVES * 64.0 * 128 * 256;
    printf("SS loop %-22s %d WG/SM %2d steps/tile: %6.1f ns/step/WG, %.2e MAC/s (%s)\n", name, wgs, steps,
           ms * 1e6 / ((double)tiles * steps), macs / ms * 1e3, cudaGetErrorString(cudaGetLastError()));
  }
}

template <bool X1, int HALVES, bool SWZ>
void run_kernel_loop(int sms, int* dout, const char* name) {
  auto k = tput_kernel_loop<X1, HALVES, SWZ>;
  cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, 161 * 1024);
  for (int steps : {5, 9, 18}) {
    const int tiles = 36000 / steps;
    const float ms = time_ms([&] { k<<<sms, 128, 161 * 1024>>>(dout, tiles, steps); });
    const double macs = (double)sms * tiles * steps * HALVES * 64.0 * 128 * 256;
    printf("kernel loop %-22s %2d steps/tile: %6.1f ns/step, %.2e MAC/s (%s)\n", name, steps,
           ms * 1e6 / ((double)tiles * steps), macs / ms * 1e3, cudaGetErrorString(cudaGetLastError()));
  }
}

static int popc8(uint8_t v) { return __builtin_popcount(v); }

// Fills h with random bytes and returns a device copy of it.
uint4* upload_random(std::vector<uint8_t>& h) {
  for (auto& v : h) v = rand();
  uint4* d;
  cudaMalloc(&d, h.size());
  cudaMemcpy(d, h.data(), h.size(), cudaMemcpyHostToDevice);
  return d;
}

// After a check kernel's launch: its error (the sync's), its result C
// [64][128] copied into C, and the number of entries that differ from
// ref(row, col).
template <class Ref>
int check_result(const int* dC, std::vector<int>& C, cudaError_t* err, Ref ref) {
  *err = cudaDeviceSynchronize();
  C.resize(64 * 128);
  cudaMemcpy(C.data(), dC, C.size() * 4, cudaMemcpyDeviceToHost);
  int bad = 0;
  for (int r = 0; r < 64; ++r)
    for (int col = 0; col < 128; ++col)
      if (C[r * 128 + col] != ref(r, col)) ++bad;
  return bad;
}

// Part 5 (see the header): per (dx, s), the base offsets that give exact sums.
void run_sw64_checks() {
  std::vector<uint8_t> A(72 * 64), B(128 * 32);
  uint4 *dA = upload_random(A), *dB = upload_random(B);
  int* dC;
  cudaMalloc(&dC, 64 * 128 * 4);
  cudaFuncSetAttribute(check_sw64_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 16 * 1024);
  std::vector<int> C(64 * 128);
  for (int dx = 0; dx < 3; ++dx)
    for (int s = 0; s < 2; ++s) {
      printf("SW64 A, rows from %d, K half %d: exact for base offsets:", dx, s);
      for (int bo = 0; bo < 8; ++bo) {
        cudaMemset(dC, 0xff, C.size() * 4);
        check_sw64_kernel<<<1, 128, 16 * 1024>>>(dA, dB, dC, dx, s, bo);
        cudaError_t e;
        const int bad = check_result(dC, C, &e, [&](int r, int col) {
          int ref = 0;
          for (int b = 0; b < 32; ++b) ref += popc8(A[(r + dx) * 64 + s * 32 + b] & B[col * 32 + b]);
          return ref;
        });
        if (e != cudaSuccess) printf(" [bo %d: %s]", bo, cudaGetErrorString(e));
        else if (bad == 0) printf(" %d", bo);
      }
      printf("\n");
    }
  cudaFree(dA); cudaFree(dB); cudaFree(dC);
}

int main() {
  if (getenv("PROBE_SW64")) {
    run_sw64_checks();
    return 0;
  }
  int sms; cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const int ksteps = 3, kb = ksteps * 32;  // bytes per row
  std::vector<uint8_t> A(64 * kb), B(128 * kb);
  srand(1);
  uint4 *dA = upload_random(A), *dB = upload_random(B);
  int* dC;
  cudaMalloc(&dC, 64 * 128 * 4);
  const int smem = (64 + 128) * kb;
  for (int variant = 0; variant < 2; ++variant) {
    cudaMemset(dC, 0xff, 64 * 128 * 4);
    check_kernel<<<1, 128, smem>>>(dA, dB, dC, ksteps, variant);
    cudaError_t e;
    std::vector<int> C;
    const int bad = check_result(dC, C, &e, [&](int r, int c) {
      int ref = 0;
      for (int k = 0; k < kb; ++k) ref += popc8(A[r * kb + k] & B[c * kb + k]);
      return ref;
    });
    printf("variant %d (%s): %s, mismatches %d of 8192 (C[0]=%d)\n", variant,
           variant ? "LBO=N-dir SBO=K-dir" : "LBO=K-dir(128) SBO=N-dir", cudaGetErrorString(e), bad, C[0]);
  }
  {
    // SS checks: (lbo, sbo, step) in 16-byte units: separate core matrices
    // (8, 64, 2 -> chunks 2i at 2i... ) and the overlapping window reading
    // (lbo 1: chunk 2i + 1 is chunk 2i shifted by one pixel).
    const int cases[4][3] = {{8, 64, 16}, {1, 64, 2}, {1, 40, 1}, {3, 40, 5}};
    const int nunits = 8 * 64 + 128;
    std::vector<uint8_t> S(nunits * 16);
    uint4* dS = upload_random(S);
    cudaFuncSetAttribute(check_ss_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
    for (auto& c : cases) {
      const int lbo = c[0], sbo = c[1], step = c[2];
      cudaMemset(dC, 0xff, 64 * 128 * 4);
      check_ss_kernel<<<1, 128, 64 * 1024>>>(dS, nunits, dB, dC, ksteps, lbo, sbo, step);
      cudaError_t e;
      std::vector<int> C;
      const int bad = check_result(dC, C, &e, [&](int r, int col) {
        int ref = 0;
        for (int kcn = 0; kcn < 2 * ksteps; ++kcn) {
          const int u = (r >> 3) * sbo + (r & 7) + (kcn >> 1) * step + (kcn & 1) * lbo;
          for (int b = 0; b < 16; ++b) ref += popc8(S[u * 16 + b] & B[col * kb + kcn * 16 + b]);
        }
        return ref;
      });
      printf("SS check lbo=%d sbo=%d step=%d units: %s, mismatches %d of 8192\n", lbo, sbo, step,
             cudaGetErrorString(e), bad);
    }
  }
  int* dout; cudaMalloc(&dout, 1 << 24);
  const int iters = 4000;
  for (int wgs = 1; wgs <= 4; wgs *= 2) {
    const float ms = time_ms([&] { tput_wgmma<128><<<sms, 128 * wgs, 256 * 32>>>(dout, iters); });
    const double macs = (double)sms * wgs * iters * 64.0 * 128 * 256;
    printf("wgmma m64n128k256 RS, %d warpgroups/SM: %.3f ms, %.2e MAC/s (%s)\n", wgs, ms, macs / ms * 1e3,
           cudaGetErrorString(cudaGetLastError()));
  }
  for (int warps = 4; warps <= 16; warps *= 2) {
    const float ms = time_ms([&] { tput_mma<<<sms, 32 * warps>>>(dout, iters); });
    const double macs = (double)sms * warps * iters * 8 * 16.0 * 8 * 256;
    printf("mma.sync m16n8k256, %d warps/SM: %.3f ms, %.2e MAC/s\n", warps, ms, macs / ms * 1e3);
  }
  cudaFuncSetAttribute(tput_rs_loop<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  cudaFuncSetAttribute(tput_rs_loop<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024);
  for (int x1 = 0; x1 < 2; ++x1)
    for (int bps = 1; bps <= 2; ++bps)
      for (int steps = 4; steps <= 16; steps *= 2) {
        const int tiles = 8000 / steps;
        const float ms = time_ms([&] {
          if (x1) tput_rs_loop<true><<<sms * bps, 256, 48 * 1024>>>(dout, tiles, steps);
          else tput_rs_loop<false><<<sms * bps, 256, 48 * 1024>>>(dout, tiles, steps);
        });
        const double macs = (double)sms * bps * 2 * tiles * steps * 64.0 * 128 * 256;
        printf("RS loop x1=%d, %d blocks of 2 warpgroups/SM, %2d steps per tile: %.2e MAC/s (%s)\n", x1, bps,
               steps, macs / ms * 1e3, cudaGetErrorString(cudaGetLastError()));
      }
  if (getenv("PROBE_LAYOUT_ONLY")) {
    for (int x1 = 0; x1 < 2; ++x1) {
      run_ss_kernel_layout(sms, dout, 4, 10, 3, 3, x1);  // L4
      run_ss_kernel_layout(sms, dout, 2, 10, 3, 3, x1);  // L3, L7
      run_ss_kernel_layout(sms, dout, 1, 10, 3, 3, x1);  // L2
    }
    run_ss_loop<true, 2>(sms, 1, dout, "x1, 2 halves");
    return 0;
  }
  run_ss_loop<true, 2>(sms, 1, dout, "x1, 2 halves");
  run_ss_loop<true, 2>(sms, 2, dout, "x1, 2 halves");
  run_ss_loop<false, 2>(sms, 1, dout, "no x1, 2 halves");
  run_ss_loop<true, 1>(sms, 2, dout, "x1, 1 half");
  fflush(stdout);
  run_kernel_loop<true, 2, true>(sms, dout, "x1, 2 halves, swz");
  run_kernel_loop<false, 2, true>(sms, dout, "no x1, 2 halves, swz");
  run_kernel_loop<true, 1, true>(sms, dout, "x1, 1 half, swz");
  run_kernel_loop<true, 2, false>(sms, dout, "x1, 2 halves, no swz");
  return 0;
}
