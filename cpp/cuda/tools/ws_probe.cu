// Probe (not part of the build; written in session 25, run and extended in
// session 26, NOTES-gpu.md S26-1..S26-7): would another block shape or
// epilogue form lift packed L2-L4 at N = 256? (S25-7: in L2 a warpgroup's
// tile takes 3.1-3.2 us, ~1 us of it before the K loop, issuing the next
// tile's copies and writing row records; the tensor core is busy ~1.8 us
// of every 3.2.) Answer on the H100: no shape, and no epilogue form that
// fits the register file, is more than ~4% faster than today's.
//
// Every form runs the same synthetic work, 132 blocks (one an SM), tiles
// of 128 rows x 128 channels x ks K steps of 256 bits (or 64-row tiles,
// twice as many), A and B from shared memory (wgmma m64n128k256 .b1
// and.popc a 64-row half, plus the m64n8 X1 wgmma of XNOR), then an
// epilogue of the packed-output kind (per output: multiply-add, subtract
// the bound, funnel shift; a 16-byte table load per 4 outputs; a word
// stored per 32). Forms:
//  - "mw<NWG, ROWS>": NWG warpgroups that take tiles of ROWS rows in turn;
//    each writes its tiles' row records and issues its next tile's copy
//    (one bulk copy of the A tile) itself; their K loops take the tensor
//    core in tile order through named barriers (order 1) or as they come
//    (order 0). "pp" = mw<2, 128>, today's kernel's shape; "ppE" the same
//    with the epilogue form fixed at compile time; "2x64", "3x64", "4x64",
//    "3x128".
//  - "ws": 384 threads: a producer warpgroup (setmaxnreg down to 40)
//    issues every copy and writes every row record into a ring of S
//    stages (full / empty mbarriers); the two consumer warpgroups
//    (setmaxnreg up to 232) only wait, issue wgmmas, run the epilogue.
// Each prints us per launch (min of 20), the tensor rate as % of 5.1e15
// binary MACs/s, and us per 128-row tile per block. Data are arbitrary
// (the results are not checked): only the time is measured. Epilogue
// forms: see finish().
//
// nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -o ws_probe ws_probe.cu
// ./ws_probe       (pp, ppE and the 64-row shapes, both orders; ~15 s)
// ./ws_probe ws    (and ws)      ./ws_probe all   (and ws and 3x128)
// ./ws_probe prof EPI KS TILES   (pp with epilogue EPI only, 3 launches, for
//   ncu --launch-skip 1 --launch-count 1; session 31)
// Until session 31 the table pointer lost its address space (aligned
// through uintptr_t), so the epilogue read it by generic loads with 64-bit
// address arithmetic; with LDS (S31-6) the times are within 1-5% of
// S26's. Unlike the real kernel's register-A form (no_instruction, i.e.
// instruction fetch, its top stall: S20-1, S31-5), this probe's warps
// rarely wait on fetch (S31-4: 2.5% of samples).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>
#include <cuda_runtime.h>
#include "probe_util.cuh"


__device__ __forceinline__ void fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void bsync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void barrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bulk(uint32_t dst, const void* src, uint32_t bytes, uint32_t b) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(b)
      : "memory");
}

#define W8(c, i) c(d[i]), c(d[i + 1]), c(d[i + 2]), c(d[i + 3]), c(d[i + 4]), c(d[i + 5]), c(d[i + 6]), c(d[i + 7])
#define W64(c) W8(c, 0), W8(c, 8), W8(c, 16), W8(c, 24), W8(c, 32), W8(c, 40), W8(c, 48), W8(c, 56)
#define D64                                                            \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"            \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"   \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"   \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
// FIRST: d = popc(A AND B) (d write-only: no other instruction defines the
// accumulators, or ptxas serializes the wgmmas); else d += popc(A AND B).
template <bool FIRST>
__device__ __forceinline__ void mma128(int (&d)[64], uint64_t a, uint64_t b) {
  if constexpr (FIRST)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc " D64 ", %64, %65, p;\n}\n"
        : W64("=r")
        : "l"(a), "l"(b));
  else
    asm volatile("wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc " D64 ", %64, %65, 1;\n"
                 : W64("+r")
                 : "l"(a), "l"(b));
}
template <bool FIRST>
__device__ __forceinline__ void mma8(int (&d)[4], uint64_t a, uint64_t b) {
  if constexpr (FIRST)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc {%0,%1,%2,%3}, %4, %5, p;\n}\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "l"(a), "l"(b));
  else
    asm volatile("wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc {%0,%1,%2,%3}, %4, %5, 1;\n"
                 : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
                 : "l"(a), "l"(b));
}

// Shared-memory layout, per K step 32 bytes a row (4 KB for 128 rows):
// [row groups of 8][2 chunks][8 rows][16 bytes] (LBO 128: the second
// chunk; SBO 256: the next group). A stage: min(ks, 6) steps of A (step i
// reads step i % 6: the real kernel's slots hold each input row once and
// its taps are shifted descriptors, so a tile's copy is a third of its K
// steps' bytes or less). Row records (int4) apart from the stages.
struct Geo {
  int ks, tiles, stages, epi, rows, nbuf;  // tiles of `rows` rows; nbuf: A stages a warpgroup (mw)
  int order;  // mw: 1, the K loops take the tensor core in tile order; 0, as they come
  __host__ __device__ int a_steps() const { return ks < 6 ? ks : 6; }
  __host__ __device__ uint32_t a_bytes() const { return 32u * rows * a_steps(); }
  __host__ __device__ uint32_t stage_bytes() const { return a_bytes() + 128 * 16; }  // (ws: A + records)
};
constexpr int kTabInts = 16 * 128;  // the table: 16 classes x 128 channels
// smem: [B: 4 KB ks][X1 ones: 256 B ks][table 8 KB][stages][mbarriers]
__host__ __device__ inline uint32_t off_x1(int ks) { return 4096u * ks; }
__host__ __device__ inline uint32_t off_tab(int ks) { return off_x1(ks) + 256u * ks; }
__host__ __device__ inline uint32_t off_stage(int ks) { return off_tab(ks) + 4u * kTabInts; }
__host__ __device__ inline uint32_t smem_bytes(const Geo& g) {
  return off_stage(g.ks) + g.stages * g.stage_bytes() + 16 * 8 + 1024;
}
// mw: [..table][nwg x nbuf A stages][nwg x 2 x rows records][mbarriers]
__host__ __device__ inline uint32_t mw_recs(const Geo& g, int nwg) {
  return off_stage(g.ks) + nwg * g.nbuf * g.a_bytes();
}
__host__ __device__ inline uint32_t mw_bars(const Geo& g, int nwg) {
  return mw_recs(g, nwg) + nwg * 2 * g.rows * 16;
}
__host__ __device__ inline uint32_t mw_smem(const Geo& g, int nwg) { return mw_bars(g, nwg) + 8 * 16 + 1024; }

// The row record of tile row r (.x row term, .z the row's class offset in
// the table, .w its output row), with the divisions a real record needs.
__device__ __forceinline__ int4 record(int m, int wo, int ho) {
  const int img = m / (wo * ho), y = (m / wo) % ho, x = m % wo;
  const int cy = y == 0 ? 0 : (y == ho - 1 ? 2 : 1), cx = x == 0 ? 0 : (x == wo - 1 ? 2 : 1);
  return make_int4(3 * cy + cx - img, 0, (3 * cy + cx) * 128, m);
}

// The thread's NQ rows' records (rows gq + 8 h of each 16-row slice of its
// warp; NQ = 4: both 64-row halves, 2: rows 0-63) from a tile's records.
template <int NQ>
__device__ __forceinline__ void load_recs(int4 (&rec)[4], const int4* recs, int wlw, int lane) {
#pragma unroll
  for (int q = 0; q < NQ; ++q) rec[q] = recs[64 * (q >> 1) + 16 * wlw + (lane >> 2) + 8 * (q & 1)];
}

// The epilogue of one warpgroup's tile (fast_conv.cuh's thr_epi; NQ = 4:
// 128 rows, acc1 / x1 rows 64-127; NQ = 2: 64 rows): rec: the thread's NQ
// rows' records. FORM 0: today's, 3 instructions an output (the bound
// subtracted from the row term, a multiply-add, the funnel shift); 1: 2
// (one IADD3 of accumulator, row term and bound; the funnel shift: session
// 8's two-instruction form, which needs two table rows a class in the real
// kernel); 2: today's with the bounds from registers (no table loads); 3:
// today's with the table read from global memory (__ldg, L1-resident); 4:
// today's with a table of 16-bit bounds in shared memory (half the bytes,
// 8-byte loads); 5: 16-bit bounds, a chunk's 4 low and 4 high channels'
// side by side, one 16-byte load for both (half the loads).
template <int NQ, int FORM>
__device__ __forceinline__ void epilogue(const int (&acc0)[64], const int (&acc1)[64], const int (&x0)[4],
                                         const int (&x1)[4], const int4 (&rec)[4], const int* tab,
                                         uint32_t* out, int lane) {
  const int* gtab = reinterpret_cast<const int*>(out) + (1 << 22);  // (main: a table there)
  const short* tab16 = reinterpret_cast<const short*>(tab);
  const int tq = lane & 3;
  int ex[NQ];
  const int* tbc[NQ];
#pragma unroll
  for (int q = 0; q < NQ; ++q) {
    ex[q] = rec[q].x - 2 * ((q >> 1) ? x1 : x0)[2 * (q & 1)];
    tbc[q] = (FORM == 3 ? gtab : tab) + rec[q].z + 32 * tq;
  }
  uint32_t lo[NQ] = {}, hi[NQ] = {};
#pragma unroll
  for (int g = 3; g >= 0; --g) {
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      const int(&acc)[64] = (q >> 1) ? acc1 : acc0;
      const int h = q & 1;
      auto bound4 = [&](int c) {  // the 4 bounds of chunk c
        if constexpr (FORM == 2) return make_int4(g + c, 2 * g, tq, g + tq);
        if constexpr (FORM == 3) return __ldg(reinterpret_cast<const int4*>(tbc[q] + 4 * c));
        if constexpr (FORM == 4) {
          const int2 v = *reinterpret_cast<const int2*>(tab16 + rec[q].z + 32 * tq + 4 * c);
          return make_int4((v.x << 16) >> 16, v.x >> 16, (v.y << 16) >> 16, v.y >> 16);
        }
        return *reinterpret_cast<const int4*>(tbc[q] + 4 * c);
      };
      int4 bl, bh;
      if constexpr (FORM == 5) {
        const int4 v = *reinterpret_cast<const int4*>(tab16 + rec[q].z + 32 * tq + 8 * (g ^ tq));
        bl = make_int4((v.x << 16) >> 16, v.x >> 16, (v.y << 16) >> 16, v.y >> 16);
        bh = make_int4((v.z << 16) >> 16, v.z >> 16, (v.w << 16) >> 16, v.w >> 16);
      } else {
        bl = bound4(g ^ tq);
        bh = bound4((4 + g) ^ tq);
      }
      const int bndl[4] = {bl.x, bl.y, bl.z, bl.w}, bndh[4] = {bh.x, bh.y, bh.z, bh.w};
#pragma unroll
      for (int e = 3; e >= 0; --e) {
        const int cl = 4 * g + e, ch = 16 + cl;
        const int al = acc[4 * (cl >> 1) + 2 * h + (cl & 1)], ah = acc[4 * (ch >> 1) + 2 * h + (ch & 1)];
        const int dl = FORM == 1 ? al + ex[q] - bndl[e] : 4 * al + (ex[q] - bndl[e]);
        const int dh = FORM == 1 ? ah + ex[q] - bndh[e] : 4 * ah + (ex[q] - bndh[e]);
        lo[q] = __funnelshift_l((uint32_t)dl, lo[q], 1);
        hi[q] = __funnelshift_l((uint32_t)dh, hi[q], 1);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < NQ; ++q)
    out[(long long)rec[q].w * 4 + tq] = __byte_perm(lo[q], hi[q], 0x5410);
}

// Forms 0 (W16 false) and 5 (W16 true) with the table loads one channel
// group ahead: group g - 1's bounds are in flight while group g computes.
// (Written to test whether the loads' latency, four round trips in a row,
// is what form 2 saves; S26-7: neither is faster than form 0.)
template <int NQ, bool W16>
__device__ __forceinline__ void epilogue_pipe(const int (&acc0)[64], const int (&acc1)[64], const int (&x0)[4],
                                              const int (&x1)[4], const int4 (&rec)[4], const int* tab,
                                              uint32_t* out, int lane) {
  const int tq = lane & 3;
  constexpr int NV = W16 ? 1 : 2;  // 16-byte loads a row and group
  int ex[NQ];
  const int* tbc[NQ];
#pragma unroll
  for (int q = 0; q < NQ; ++q) {
    ex[q] = rec[q].x - 2 * ((q >> 1) ? x1 : x0)[2 * (q & 1)];
    tbc[q] = W16 ? reinterpret_cast<const int*>(reinterpret_cast<const short*>(tab) + rec[q].z + 32 * tq)
                 : tab + rec[q].z + 32 * tq;
  }
  auto load = [&](int4 (&v)[NQ][NV], int g) {
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      if constexpr (W16) {
        v[q][0] = *reinterpret_cast<const int4*>(tbc[q] + 4 * (g ^ tq));  // 8 shorts = 4 ints
      } else {
        v[q][0] = *reinterpret_cast<const int4*>(tbc[q] + 4 * (g ^ tq));
        v[q][NV - 1] = *reinterpret_cast<const int4*>(tbc[q] + 4 * ((4 + g) ^ tq));
      }
    }
  };
  int4 nxt[NQ][NV];
  load(nxt, 3);
  uint32_t lo[NQ] = {}, hi[NQ] = {};
#pragma unroll
  for (int g = 3; g >= 0; --g) {
    int4 cur[NQ][NV];
#pragma unroll
    for (int q = 0; q < NQ; ++q)
#pragma unroll
      for (int v = 0; v < NV; ++v) cur[q][v] = nxt[q][v];
    if (g > 0) load(nxt, g - 1);
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      const int(&acc)[64] = (q >> 1) ? acc1 : acc0;
      const int h = q & 1;
      int4 bl, bh;
      if constexpr (W16) {
        const int4 v = cur[q][0];
        bl = make_int4((v.x << 16) >> 16, v.x >> 16, (v.y << 16) >> 16, v.y >> 16);
        bh = make_int4((v.z << 16) >> 16, v.z >> 16, (v.w << 16) >> 16, v.w >> 16);
      } else {
        bl = cur[q][0];
        bh = cur[q][NV - 1];
      }
      const int bndl[4] = {bl.x, bl.y, bl.z, bl.w}, bndh[4] = {bh.x, bh.y, bh.z, bh.w};
#pragma unroll
      for (int e = 3; e >= 0; --e) {
        const int cl = 4 * g + e, ch = 16 + cl;
        const int al = acc[4 * (cl >> 1) + 2 * h + (cl & 1)], ah = acc[4 * (ch >> 1) + 2 * h + (ch & 1)];
        lo[q] = __funnelshift_l((uint32_t)(4 * al + (ex[q] - bndl[e])), lo[q], 1);
        hi[q] = __funnelshift_l((uint32_t)(4 * ah + (ex[q] - bndh[e])), hi[q], 1);
      }
    }
  }
#pragma unroll
  for (int q = 0; q < NQ; ++q)
    out[(long long)rec[q].w * 4 + tq] = __byte_perm(lo[q], hi[q], 0x5410);
}

// A tile's end (g.epi, the "epi" of the output and of NOTES-gpu.md): 1 /
// 2, form 0 once / twice; 3 to 7, forms 1 to 5 once; 8, form 0; 9 and 10,
// forms 0 and 5 pipelined (epilogue_pipe); 8 to 10 with the records loaded
// before wgmma's wait (mw_kernel); 0, only a use of the accumulators (so
// that nothing is optimized away).
template <int NQ>
__device__ __forceinline__ void finish(const int (&acc0)[64], const int (&acc1)[64], const int (&x0)[4],
                                       const int (&x1)[4], const int4 (&rec)[4], const int* tab,
                                       uint32_t* out, int epi, int lane) {
  if (epi == 3)
    epilogue<NQ, 1>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 4)
    epilogue<NQ, 2>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 5)
    epilogue<NQ, 3>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 6)
    epilogue<NQ, 4>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 7)
    epilogue<NQ, 5>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 8)  // (8 to 10: the kernel loads the records before wgmma's wait)
    epilogue<NQ, 0>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 9)
    epilogue_pipe<NQ, false>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else if (epi == 10)
    epilogue_pipe<NQ, true>(acc0, acc1, x0, x1, rec, tab, out, lane);
  else
    for (int r = 0; r < epi; ++r) epilogue<NQ, 0>(acc0, acc1, x0, x1, rec, tab, out, lane);
  if (epi == 0 && acc0[0] + acc1[63] + x0[0] + x1[3] + rec[0].x == 0x7fffffff)
    out[threadIdx.x] = 1;
}

// The K loop of one warpgroup's tile: A (stage) x B and X1, both 64-row
// halves (H = 2: acc1 / x1 rows 64-127) or rows 0-63 only (H = 1).
template <int H>
__device__ __forceinline__ void kloop(int (&acc0)[64], int (&acc1)[64], int (&x0)[4], int (&x1)[4],
                                      uint32_t a_base, uint32_t b_base, uint32_t x1_base, int ks,
                                      int a_steps) {
  fence();
  auto step = [&](int i, auto first) {
    constexpr bool F = decltype(first)::value;
    const uint32_t ai = a_base + 2048u * H * (uint32_t)(i % a_steps);
    const uint64_t a0 = wg_desc(ai, 128, 256), a1 = wg_desc(ai + 2048, 128, 256);
    const uint64_t b = wg_desc(b_base + 4096u * i, 128, 256), xb = wg_desc(x1_base + 256u * i, 128, 256);
    mma128<F>(acc0, a0, b);
    if constexpr (H == 2) mma128<F>(acc1, a1, b);
    mma8<F>(x0, a0, xb);
    if constexpr (H == 2) mma8<F>(x1, a1, xb);
  };
  step(0, std::true_type{});
#pragma unroll 1
  for (int i = 1; i < ks; ++i) step(i, std::false_type{});
  commit();
}

// Kernel-wide setup: B, X1 ones and the table in shared memory; the
// mbarriers. (Not timed apart: part of each launch, as the real prologue.)
__device__ __forceinline__ void setup(unsigned char* sm, const Geo& g, int nthreads) {
  uint4* b = reinterpret_cast<uint4*>(sm);
  for (int q = threadIdx.x; q < 256 * g.ks; q += nthreads) b[q] = make_uint4(q * 2654435761u, q, ~q, q ^ 0x5bd1e995);
  uint4* x1 = reinterpret_cast<uint4*>(sm + off_x1(g.ks));
  for (int q = threadIdx.x; q < 16 * g.ks; q += nthreads) x1[q] = make_uint4(~0u, ~0u, ~0u, ~0u);
  int* tab = reinterpret_cast<int*>(sm + off_tab(g.ks));
  for (int q = threadIdx.x; q < kTabInts; q += nthreads) tab[q] = (q * 37) % 700 - 350;
}

// "mw" (NWG warpgroups, tiles of ROWS rows; mw<2, 128> is session 25's
// "pp", today's kernel's shape): warpgroup w takes tiles w, w + NWG, ...;
// each writes its tiles' row records (two buffers a warpgroup) and issues
// its next tile's copy (one bulk copy of the A tile; g.nbuf stages a
// warpgroup: with 2 the next copy goes out once this tile's wgmmas are
// issued, with 1 once they are done). Their K loops take the tensor core
// in tile order through named barriers. __launch_bounds__ gives each
// thread 65536 / (128 NWG) registers at most: 255, 168 (3), 128 (4).
// EPI >= 0: the epilogue fixed at compile time (it replaces g.epi), so
// that the other forms' code does not raise this one's register pressure.
template <int NWG, int ROWS, int EPI = -1>
__global__ void __launch_bounds__(NWG * 128, 1)
    mw_kernel(const uint4* __restrict__ gA, uint32_t* out, int nsrc, Geo g) {
  if constexpr (EPI >= 0) g.epi = EPI;
  constexpr int H = ROWS / 64, NQ = 2 * H;
  extern __shared__ __align__(1024) unsigned char smraw[];
  // (aligned by an offset from the shared array, so that ptxas still knows
  // the table pointer is shared memory: LDS, 32-bit addresses; through
  // uintptr_t it loaded the table by generic LD with 64-bit address
  // arithmetic, sessions 26-31)
  unsigned char* sm = smraw + ((1024u - (smem_u32(smraw) & 1023u)) & 1023u);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wlt = tid & 127, wlw = warp & 3;
  // (the warpgroup by a shuffle, which ptxas knows to be warp-uniform: the
  // descriptors derive from it; from the thread index, ptxas serialized the
  // wgmmas, C7520, as in fast_conv.cuh)
  const int wg = __shfl_sync(0xffffffffu, warp >> 2, 0);
  const uint32_t bars = smem_u32(sm + mw_bars(g, NWG));
  setup(sm, g, NWG * 128);
  if (tid == 0)
    for (int s = 0; s < NWG * g.nbuf; ++s) mbar_init(bars + 8 * s, 1);
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  const uint32_t b_base = smem_u32(sm), x1_base = smem_u32(sm + off_x1(g.ks));
  const int* tab = reinterpret_cast<const int*>(sm + off_tab(g.ks));
  auto stage = [&](int s) { return sm + off_stage(g.ks) + s * g.a_bytes(); };
  auto issue = [&](int t, int s) {  // tile t's A into stage s (thread wlt 0)
    const long long src = (long long)((blockIdx.x * g.tiles + t) % nsrc) * (g.a_bytes() / 16);
    mbar_expect(bars + 8 * s, g.a_bytes());
    bulk(smem_u32(stage(s)), gA + src, g.a_bytes(), bars + 8 * s);
  };
  if (wlt == 0 && wg < g.tiles) issue(wg, g.nbuf * wg);
  int acc0[64], acc1[64], x0[4], x1[4];
  for (int k = wg, j = 0; k < g.tiles; k += NWG, ++j) {
    const int s = g.nbuf * wg + (g.nbuf == 2 ? (j & 1) : 0);
    int4* recs = reinterpret_cast<int4*>(sm + mw_recs(g, NWG)) + (2 * wg + (j & 1)) * ROWS;
    const int m0 = (blockIdx.x * g.tiles + k) * ROWS;
    if (wlt < ROWS) recs[wlt] = record(m0 + wlt, 28, 28);
    mbar_wait(bars + 8 * s, (j / g.nbuf) & 1);
    bsync(1 + wg, 128);  // records visible; this buffer's tile j - 2 is done
    if (g.order && k >= 1) bsync(1 + NWG + wg, 256);  // tile k - 1's wgmmas are issued
    kloop<H>(acc0, acc1, x0, x1, smem_u32(stage(s)), b_base, x1_base, g.ks, g.a_steps());
    if (g.order && k + 1 < g.tiles) barrive(1 + NWG + (wg + 1) % NWG, 256);
    if (g.nbuf == 2 && wlt == 0 && k + NWG < g.tiles) issue(k + NWG, 2 * wg + ((j + 1) & 1));
    int4 rec[4];
    if (g.epi >= 8) load_recs<NQ>(rec, recs, wlw, lane);
    wait0();
    if (g.nbuf == 1 && k + NWG < g.tiles) {
      bsync(1 + wg, 128);  // the warpgroup's wgmmas have read the stage
      if (wlt == 0) issue(k + NWG, wg);
    }
    if (g.epi < 8) load_recs<NQ>(rec, recs, wlw, lane);
    if constexpr (H == 2)
      finish<NQ>(acc0, acc1, x0, x1, rec, tab, out, g.epi, lane);
    else
      finish<NQ>(acc0, acc0, x0, x0, rec, tab, out, g.epi, lane);
  }
}

// "ws": a producer warpgroup (warpgroup 0) and two consumers (1, 2) over a
// ring of g.stages stages: full[s] (128 producer arrivals, the copy's
// bytes), empty[s] (128 consumer arrivals).
__global__ void __launch_bounds__(384, 1)
    ws_kernel(const uint4* __restrict__ gA, uint32_t* out, int nsrc, Geo g) {
  extern __shared__ __align__(1024) unsigned char smraw[];
  // (aligned by an offset from the shared array, so that ptxas still knows
  // the table pointer is shared memory: LDS, 32-bit addresses; through
  // uintptr_t it loaded the table by generic LD with 64-bit address
  // arithmetic, sessions 26-31)
  unsigned char* sm = smraw + ((1024u - (smem_u32(smraw) & 1023u)) & 1023u);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wlt = tid & 127, wlw = warp & 3;
  // (the warpgroup by a shuffle, which ptxas knows to be warp-uniform: the
  // descriptors derive from it; from the thread index, ptxas serialized the
  // wgmmas, C7520, as in fast_conv.cuh)
  const int wg = __shfl_sync(0xffffffffu, warp >> 2, 0);
  const uint32_t full = smem_u32(sm + off_stage(g.ks) + g.stages * g.stage_bytes()), empty = full + 8 * 8;
  setup(sm, g, 384);
  if (tid == 0)
    for (int s = 0; s < g.stages; ++s) {
      mbar_init(full + 8 * s, 128);
      mbar_init(empty + 8 * s, 128);
    }
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  auto stage = [&](int s) { return sm + off_stage(g.ks) + s * g.stage_bytes(); };
  if (wg == 0) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;\n" ::: "memory");
    for (int t = 0; t < g.tiles; ++t) {
      const int s = t % g.stages, r = t / g.stages;
      if (r > 0) mbar_wait(empty + 8 * s, (r - 1) & 1);
      int4* recs = reinterpret_cast<int4*>(stage(s) + g.a_bytes());
      recs[wlt] = record((blockIdx.x * g.tiles + t) * 128 + wlt, 28, 28);
      if (wlt == 0) {
        const long long src = (long long)((blockIdx.x * g.tiles + t) % nsrc) * (g.a_bytes() / 16);
        mbar_expect(full + 8 * s, g.a_bytes());
        bulk(smem_u32(stage(s)), gA + src, g.a_bytes(), full + 8 * s);
      } else {
        mbar_arrive(full + 8 * s);  // (release: this thread's record is visible to the waiters)
      }
    }
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;\n" ::: "memory");
  const int c = wg - 1;
  const uint32_t b_base = smem_u32(sm), x1_base = smem_u32(sm + off_x1(g.ks));
  const int* tab = reinterpret_cast<const int*>(sm + off_tab(g.ks));
  int acc0[64], acc1[64], x0[4], x1[4];
  for (int k = c; k < g.tiles; k += 2) {
    const int s = k % g.stages, r = k / g.stages;
    mbar_wait(full + 8 * s, r & 1);
    if (k >= 1) bsync(3 + c, 256);  // tile k - 1's wgmmas are issued (the consumers only)
    kloop<2>(acc0, acc1, x0, x1, smem_u32(stage(s)), b_base, x1_base, g.ks, g.a_steps());
    if (k + 1 < g.tiles) barrive(3 + (c ^ 1), 256);
    int4 rec[4];  // (read before the stage is released)
    load_recs<4>(rec, reinterpret_cast<const int4*>(stage(s) + g.a_bytes()), wlw, lane);
    wait0();
    mbar_arrive(empty + 8 * s);  // A and the records of stage s are read
    finish<4>(acc0, acc1, x0, x1, rec, tab, out, g.epi, lane);
  }
}

// One form's launcher: the kernel, its threads, how it sizes its stages.
struct Form {
  const char* name;
  int nwg, rows;  // nwg 0: ws
  void (*kern)(const uint4*, uint32_t*, int, Geo);
};

int main(int argc, char** argv) {
  const bool with_ws = argc > 1 && argv[1][0] == 'w';  // "ws": also the warp-specialized form
  const ProbeDevice pd = probe_device();
  const int sms = pd.sms, optin = pd.optin;
  const int nsrc = 64;  // distinct A tiles in global memory (L2-resident)
  uint4* gA = nullptr;
  uint32_t* out = nullptr;
  const size_t abytes_max = 4096ull * 6 * nsrc;
  CK(cudaMalloc(&gA, abytes_max));
  CK(cudaMemset(gA, 0x5a, abytes_max));
  const long long outw = (long long)sms * 48 * 128 * 4 + 1024;  // the most rows below, 4 words a row
  CK(cudaMalloc(&out, ((1 << 22) + kTabInts) * 4));  // out, then the global table (epilogue form 3)
  if (outw > (1 << 22)) std::printf("out too small\n"), std::exit(1);
  CK(cudaMemset(out + (1 << 22), 0x11, kTabInts * 4));
  // pp with its epilogue fixed at compile time, one kernel an epilogue
  void (*pp_fixed[])(const uint4*, uint32_t*, int, Geo) = {
      mw_kernel<2, 128, 0>, mw_kernel<2, 128, 1>, mw_kernel<2, 128, 2>, mw_kernel<2, 128, 3>,
      mw_kernel<2, 128, 4>, mw_kernel<2, 128, 5>, mw_kernel<2, 128, 6>, mw_kernel<2, 128, 7>,
      mw_kernel<2, 128, 8>, mw_kernel<2, 128, 9>, mw_kernel<2, 128, 10>};
  for (auto k : pp_fixed) CK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
  const Form forms[] = {{"pp", 2, 128, mw_kernel<2, 128>}, {"ppE", 2, 128, nullptr}, {"ws", 0, 128, ws_kernel},
                        {"2x64", 2, 64, mw_kernel<2, 64>},  {"3x64", 3, 64, mw_kernel<3, 64>},
                        {"4x64", 4, 64, mw_kernel<4, 64>},  {"3x128", 3, 128, mw_kernel<3, 128>}};
  // ("3x128" spills at 168 registers: 304 bytes, S26-2; run only with "all")
  const bool all = argc > 1 && argv[1][0] == 'a';
  for (const Form& f : forms) {
    if (!f.kern) continue;
    CK(cudaFuncSetAttribute(f.kern, cudaFuncAttributeMaxDynamicSharedMemorySize, optin));
    cudaFuncAttributes fa;
    CK(cudaFuncGetAttributes(&fa, f.kern));
    std::printf("%-5s: %d registers, %zu bytes of local memory\n", f.name, fa.numRegs, fa.localSizeBytes);
  }
  // "prof EPI KS TILES": pp with epilogue EPI only, 3 launches (for ncu:
  // --launch-skip 1 --launch-count 1), no timing.
  if (argc > 4 && argv[1][0] == 'p') {
    const int epi = std::atoi(argv[2]), ks = std::atoi(argv[3]), tiles = std::atoi(argv[4]);
    Geo g{ks, tiles, 4, epi, 128, 2, 1};
    if (mw_smem(g, 2) > (uint32_t)optin) g.nbuf = 1;
    g.stages = 2 * g.nbuf;
    for (int rep = 0; rep < 3; ++rep) pp_fixed[epi]<<<sms, 256, mw_smem(g, 2)>>>(gA, out, nsrc, g);
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    std::printf("prof: epi %d, ks %d, tiles %d, %u bytes\n", epi, ks, tiles, mw_smem(g, 2));
    return 0;
  }
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  const double peak = 5.1e15;
  std::printf("%-5s %3s %5s %3s %6s %5s %10s %8s %12s\n", "form", "ks", "tiles", "epi", "stages", "order",
              "us/launch", "% b1", "us/t128/blk");
  // (ks, tiles of 128 rows): L2 (5 steps, 12 tiles a block), L3 (9, 6), L4
  // (18, 3), and L2's / L3's ks with more tiles (the steady state alone).
  const int cases[][2] = {{5, 12}, {9, 6}, {18, 3}, {5, 48}, {9, 24}};
  for (auto& cs : cases) {
    for (int epi = 0; epi <= 10; ++epi) {
      for (const Form& f : forms) {
        if ((f.nwg == 0 && !with_ws && !all) || (f.nwg == 3 && f.rows == 128 && !all)) continue;
        for (int order = 1; order >= (f.nwg == 0 ? 1 : 0); --order) {
        Geo g{cs[0], cs[1] * 128 / f.rows, 4, epi, f.rows, 2, order};
        uint32_t bytes;
        if (f.nwg == 0) {  // ws: as many stages as fit, 2 to 8
          g.stages = 8;
          while (g.stages > 2 && smem_bytes(g) > (uint32_t)optin) --g.stages;
          bytes = smem_bytes(g);
        } else {  // mw: two A stages a warpgroup, else one
          if (mw_smem(g, f.nwg) > (uint32_t)optin) g.nbuf = 1;
          g.stages = g.nbuf * f.nwg;
          bytes = mw_smem(g, f.nwg);
        }
        if (bytes > (uint32_t)optin) {
          std::printf("%-5s %3d %5d %3d: does not fit (%u bytes)\n", f.name, g.ks, g.tiles, epi, bytes);
          continue;
        }
        const int threads = f.nwg == 0 ? 384 : 128 * f.nwg;
        float best = 1e30f;
        for (int rep = 0; rep < 21; ++rep) {
          CK(cudaEventRecord(e0));
          (f.kern ? f.kern : pp_fixed[epi])<<<sms, threads, bytes>>>(gA, out, nsrc, g);
          CK(cudaEventRecord(e1));
          CK(cudaEventSynchronize(e1));
          CK(cudaGetLastError());
          float ms = 0;
          CK(cudaEventElapsedTime(&ms, e0, e1));
          if (rep > 0 && ms < best) best = ms;
        }
        const double macs = (double)sms * cs[1] * 128.0 * 128.0 * 256.0 * g.ks;
        const double us = best * 1e3;
        std::printf("%-5s %3d %5d %3d %6d %5d %10.2f %8.1f %12.3f\n", f.name, g.ks, g.tiles, epi, g.stages,
                    order, us, 100.0 * macs / (us * 1e-6) / peak, us / cs[1]);
        }
      }
    }
  }
  CK(cudaFree(gA));
  CK(cudaFree(out));
  return 0;
}
