// Device code of the CUDA backend (no XLA or Python headers here).
//
// One call runs two kernels on the caller's stream:
//  1. prep_kernel: binarizes and packs float x into uint32 words (fused with
//     input bias/scale, the per-pixel popcount and the beta image A), or, for
//     packed x, only the popcount image; and, in other blocks of the same
//     launch, masks/re-lays out the weights and builds per-output-channel
//     2-D prefix sums of the weight popcounts (for the zero-padding
//     correction). BINARY_WEIGHTS uses it only for the beta image.
//  2. gemm_b1_kernel (XNOR/AND): an implicit GEMM on the 1-bit tensor cores,
//     rows = output pixels, columns = output channels of one group,
//     K = taps x channel words; or bw_kernel (BINARY_WEIGHTS) on CUDA cores.
//     Both end in the same fused epilogue (binconv::epilogue), float or
//     packed output.
//
// Exactness of the popcount path. The MMA only computes
// P = sum over taps of popc(x AND w), with padded taps loaded as zero words.
// For a row whose valid-tap box holds V of the T taps,
//   XNOR: acc = sum_valid (Cg - 2 popc(x XOR w)) + pv * sum_pad (2 popc(w) - Cg)
//             = 4P - 2 X1 + V Cg - pv (T - V) Cg - 2 W1all + (2 + 2pv) W1pad
//   AND:  acc = P + pv * W1pad
// with X1 = sum over valid taps of popc(x) (popcount image), W1all the
// popcount of all of o's weights and W1pad = W1all - W1valid, W1valid a box
// sum read from the prefix table. popc(a XOR b) = popc a + popc b - 2 popc(a AND b)
// is why Hopper's emulated XOR MMA is never needed.
#include <cuda.h>  // CUtensorMap (the driver entry point is looked up at run time)
#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>  // getenv (JAX_BINCONV_SWITCHES builds)
#include <mutex>
#include <numeric>
#include <type_traits>

#include "binconv_kernels.h"
#include "binconv_params.h"

namespace binconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kBK = 32;         // K words (1024 bits) per pipeline stage
constexpr int kLds = kBK + 4;   // row pitch in words: +4 makes ldmatrix rows hit distinct banks
constexpr unsigned kFull = 0xffffffffu;

// ---------------------------------------------------------------- arguments

struct PrepArgs {
  // input section
  int mode_x;  // 0 nothing, 1 pack float x, 2 popcount image of packed x, 3 = 1 vectorized
  const float* x;
  const float* ib;
  const float* is;
  const uint32_t* xpk;  // packed x (mode 2)
  uint32_t* xp;         // packed output (mode 1), may be null
  int* popc;            // [NHW, G], may be null
  float* aimg;          // [NHW], may be null
  long long nhw;
  int c, g, cg, wg;
  int ppw;  // mode 3: pixels per warp (1, or 64 / (C / 4) where C / 4 divides 32)
  int xblocks;
  int tfirst;  // fast_tables_kernel with x packing: the tables' blocks before the packing's
  // weight section
  int wblocks;
  const uint32_t* w;
  uint32_t* ws;  // [G, OgPad, Kpad]
  int* pre;      // [(KH+1)*(KW+1), O]
  int o, og, ogpad, t, k, kpad, kh, kw;
  // packed-output thresholds (null when not used)
  int2* thr;
  const float* osc;
  const float* obias;
  int act;
  float slope;
  int amin, amax;
};

struct EpiArgs {
  const int* popc;
  const float* aimg;
  const int* pre;
  const float* osc;
  const float* obias;
  void* out;
  long long m;  // N*Ho*Wo
  int h, w, c, o, g, cg, og, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, t;
  int type, pv, beta, x_packed, act, out_packed, out_atomic, out_vec2;
  int pad_corr;  // the padded-tap weight term has a nonzero coefficient
  const int2* thr;  // packed output without beta: bit = lo <= acc <= hi
  int out_vec4;  // float4 stores of 4 consecutive columns are aligned
  float slope, pvf;
};

struct GemmArgs {
  EpiArgs e;
  const uint32_t* xp;  // packed x, pixel pitch ps words, group g at g*wg
  const uint32_t* ws;
  int wg, ps, k, kpad, ogpad;
  // per-stage advance of the K position (kBK words): dt taps + dj words
  int dt, dj, dt_y, dt_x;
};

struct BwArgs {
  EpiArgs e;
  const float* x;
  const float* ib;
  const float* is;
  const uint32_t* w;
  int wg;
};

// ------------------------------------------------------------- small helpers

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool valid) {
  // src-size 0 zero-fills the destination: padded taps and rows past the end
  // become zero words without a branch around the copy.
  const int n = valid ? BYTES : 0;
  if constexpr (BYTES == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "r"(n));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_u32(dst)),
                 "l"(src), "n"(BYTES), "r"(n));
  }
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma_b1_and(int (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                           uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// (n, rem) = divmod(m, hw) in 32-bit arithmetic when m fits (always, in
// practice): 64-bit division is a long software sequence on the GPU.
__device__ __forceinline__ void split_row(long long m, int hw, long long& n, int& rem) {
  if (m <= 0x7fffffffLL) {
    const int mi = (int)m;
    const int ni = mi / hw;
    n = ni;
    rem = mi - ni * hw;
  } else {
    n = m / hw;
    rem = (int)(m - n * hw);
  }
}

__host__ __device__ __forceinline__ uint32_t last_word_mask(int bits) {
  return (bits % 32 == 0) ? 0xffffffffu : ((1u << (bits % 32)) - 1u);
}

// Valid-tap box of an output pixel: dy in [a, b), dx in [c, d). The in-image
// taps of a window always form such a box, since tap positions are monotone
// in dy and dx.
struct Box {
  int a, b, c, d;
};
__host__ __device__ __forceinline__ void tap_range(int i0, int size, int k, int dil, int& lo, int& hi) {
  lo = i0 >= 0 ? 0 : (-i0 + dil - 1) / dil;
  hi = (size - 1 - i0) >= 0 ? (size - 1 - i0) / dil + 1 : 0;
  lo = min(lo, k);
  hi = max(min(hi, k), lo);
}

// Per output row (pixel): everything the epilogue needs besides the MMA sum.
struct RowData {
  long long m;
  bool valid;
  bool border;  // some taps fall in the padding
  Box box;
  int rowconst;  // XNOR: V Cg - pv (T - V) Cg - 2 X1
  float beta;
};

// Computes a row's data; the `nsplit` lanes that share the row (consecutive
// lanes, nsplit a power of two) split the tap loop and reduce with shuffles,
// so every lane of the warp must call it.
template <int NSPLIT>
__device__ __forceinline__ RowData row_data(const EpiArgs& e, long long m, int gidx, int part) {
  RowData r;
  r.m = m;
  r.valid = m < e.m;
  long long mm = r.valid ? m : 0;
  long long n;
  int rem;
  split_row(mm, e.ho * e.wo, n, rem);
  const int yo = rem / e.wo, xo = rem - (rem / e.wo) * e.wo;
  const int iy0 = yo * e.sh - e.pt, ix0 = xo * e.sw - e.pl;
  tap_range(iy0, e.h, e.kh, e.dh, r.box.a, r.box.b);
  tap_range(ix0, e.w, e.kw, e.dw, r.box.c, r.box.d);
  const int v = (r.box.b - r.box.a) * (r.box.d - r.box.c);
  r.border = v < e.t;
  const bool need_x1 = e.type == XNOR;
  const bool need_a = e.beta && !e.x_packed;
  int x1 = 0;
  float asum = 0.0f;
  if (need_x1 || need_a) {
    const long long pix0 = (long long)n * e.h * e.w;
    for (int dy = r.box.a; dy < r.box.b; ++dy) {
      const long long prow = pix0 + (long long)(iy0 + dy * e.dh) * e.w + ix0;
#pragma unroll 4
      for (int dx = r.box.c + part; dx < r.box.d; dx += NSPLIT) {
        const long long pix = prow + dx * e.dw;
        if (need_x1) x1 += __ldg(e.popc + pix * e.g + gidx);
        if (need_a) asum += __ldg(e.aimg + pix);
      }
    }
  }
#pragma unroll
  for (int s = 1; s < NSPLIT; s <<= 1) {
    x1 += __shfl_xor_sync(kFull, x1, s);
    asum += __shfl_xor_sync(kFull, asum, s);
  }
  r.rowconst = v * e.cg - e.pv * (e.t - v) * e.cg - 2 * x1;
  if (!e.beta) {
    r.beta = 1.0f;
  } else if (e.x_packed) {
    r.beta = (float)v / (float)e.t;  // |x'| = 1 for packed activations
  } else {
    r.beta = asum / (float)e.t;
  }
  return r;
}

// ------------------------------------------------------------------- prep

// Packed output without beta: bin(activation(acc * s + b)) as a function of
// the integer acc, evaluated with the very epilogue the general path uses, so
// it is exact; for s > 0 it is non-decreasing, for s < 0 non-increasing
// (monotone activations, float rounding is monotone), otherwise constant.
// Returns the interval [lo, hi] of acc in [amin, amax] whose bit is 1 (empty:
// lo > hi), found by binary search of its edge.
__device__ int2 packed_threshold(float sc, float bi, int act, float slope, int amin, int amax) {
  auto f = [&](int v) { return bin_bit(epilogue((float)v, sc, 1.0f, bi, act, slope)) != 0; };
  int lo = 1, hi = 0;  // empty
  if (sc > 0.0f) {
    if (f(amax)) {
      int l = amin, h = amax;  // smallest v with f(v)
      while (l < h) {
        const int mid = l + (h - l) / 2;
        if (f(mid)) h = mid; else l = mid + 1;
      }
      lo = l;
      hi = 0x7fffffff;
    }
  } else if (sc < 0.0f) {
    if (f(amin)) {
      int l = amin, h = amax;  // largest v with f(v)
      while (l < h) {
        const int mid = l + (h - l + 1) / 2;
        if (f(mid)) l = mid; else h = mid - 1;
      }
      lo = -0x7fffffff - 1;
      hi = l;
    }
  } else if (f(amin)) {
    lo = -0x7fffffff - 1;
    hi = 0x7fffffff;
  }
  return make_int2(lo, hi);
}

// Vectorized packing (prep_x mode 3): float4 qi of a pixel's channels (v,
// where ok) binarized after the input bias and scale; returns the packed
// word of the 8 lanes lane & ~7 .. (their nibbles OR-ed; lane % 8 == 0
// stores it) and adds the lane's sum of |x'| to asum (unchanged where !ok).
__device__ __forceinline__ uint32_t pack_float4_word(const PrepArgs& a, float4 v, int qi, bool ok,
                                                     int lane, float& asum) {
  uint32_t nib = 0;
  if (ok) {
    const float4 bb = __ldg(reinterpret_cast<const float4*>(a.ib) + qi);
    const float4 ss = __ldg(reinterpret_cast<const float4*>(a.is) + qi);
    const float x0 = (v.x + bb.x) * ss.x, x1 = (v.y + bb.y) * ss.y;
    const float x2 = (v.z + bb.z) * ss.z, x3 = (v.w + bb.w) * ss.w;
    nib = bin_bit(x0) | (bin_bit(x1) << 1) | (bin_bit(x2) << 2) | (bin_bit(x3) << 3);
    asum += fabsf(x0) + fabsf(x1) + fabsf(x2) + fabsf(x3);
  }
  uint32_t word = nib << (4 * (lane % 8));
  word |= __shfl_xor_sync(kFull, word, 1);
  word |= __shfl_xor_sync(kFull, word, 2);
  word |= __shfl_xor_sync(kFull, word, 4);
  return word;
}

// Per-group popcounts of the packed words of pixels [pix0, pix0 + npix)
// (< nhw), written by the warp before: its lanes take (pixel, group) pairs.
__device__ __forceinline__ void popc_packed_pixels(const PrepArgs& a, long long pix0, int npix,
                                                   int lane) {
  const int nw = a.g * a.wg;
  __syncwarp();  // the words written by other lanes are visible after it
  for (int q = lane; q < npix * a.g; q += 32) {
    const long long pix = pix0 + q / a.g;
    const int grp = q % a.g;
    if (pix >= a.nhw) break;
    int sc = 0;
    for (int j = 0; j < a.wg; ++j) sc += __popc(a.xp[pix * nw + grp * a.wg + j]);
    a.popc[pix * a.g + grp] = sc;
  }
}

// The x part of prep_kernel (block bid of its x blocks): packs float x (modes
// 1, 3) or counts the bits of packed x (mode 2). Also run by
// fast_tables_kernel (float x on the fast kernel).
__device__ __forceinline__ void prep_x(const PrepArgs& a, int bid) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (a.mode_x == 1) {
    // One warp per pixel: lane i reads channel 32j+i (coalesced), the ballot
    // is the packed word. Four words in flight per iteration.
    const long long pix = (long long)bid * (kThreads / 32) + warp;
    if (pix >= a.nhw) return;
    const float* xrow = a.x + pix * a.c;
    const int gw = a.g * a.wg;
    float asum = 0.0f;
    int pc = 0;
    for (int q0 = 0; q0 < gw; q0 += 4) {
      float v[4];
      int ch[4];
      bool ok[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int q = q0 + u;
        const int grp = q / a.wg, j = q - grp * a.wg;
        const int cl = j * 32 + lane;
        ok[u] = q < gw && cl < a.cg;
        ch[u] = grp * a.cg + cl;
        v[u] = ok[u] ? __ldg(xrow + ch[u]) : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        const int q = q0 + u;
        if (q >= gw) break;
        bool bit = false;
        if (ok[u]) {
          const float xv = (v[u] + __ldg(a.ib + ch[u])) * __ldg(a.is + ch[u]);
          bit = bin_bit(xv) != 0;
          asum += fabsf(xv);
        }
        const uint32_t word = __ballot_sync(kFull, bit);
        if (lane == 0) {
          if (a.xp) a.xp[pix * gw + q] = word;
          pc += __popc(word);
          const int grp = q / a.wg;
          if (q - grp * a.wg == a.wg - 1) {
            if (a.popc) a.popc[pix * a.g + grp] = pc;
            pc = 0;
          }
        }
      }
    }
    if (a.aimg) {
#pragma unroll
      for (int s = 16; s > 0; s >>= 1) asum += __shfl_xor_sync(kFull, asum, s);
      if (lane == 0) a.aimg[pix] = asum / (float)a.c;
    }
  } else if (a.mode_x == 3 && a.ppw > 1) {
    // C = 32, 64, 128 (nq = C / 4 float4s, a divisor of 32): a warp packs
    // ppw = 64 / nq consecutive pixels, one contiguous run of x, two float4
    // per lane in flight (one pixel per warp left half the lanes idle at
    // C = 64, and too few loads in flight for the copy bandwidth). Within
    // an iteration pixel i of the 32 / nq takes lanes nq i .. nq i + nq - 1.
    const int nq = a.c / 4, nw = a.g * a.wg;
    const long long pix0 = ((long long)bid * (kThreads / 32) + warp) * a.ppw;
    if (pix0 >= a.nhw) return;
    const float4* xs = reinterpret_cast<const float4*>(a.x) + pix0 * nq;
    const long long left = (a.nhw - pix0) * nq;  // float4s of x from xs on
    float4 v[2];
#pragma unroll
    for (int u = 0; u < 2; ++u)
      v[u] = u * 32 + lane < left ? __ldcs(xs + u * 32 + lane) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int f = u * 32 + lane, qi = f % nq;
      const long long pix = pix0 + f / nq;
      const bool ok = f < left;
      float s = 0.0f;
      const uint32_t word = pack_float4_word(a, v[u], qi, ok, lane, s);
      if (a.xp && lane % 8 == 0 && ok) a.xp[pix * nw + qi / 8] = word;
      if (a.aimg) {
        // The same sums in the same order as one pixel per warp (whose
        // lanes past nq added zeros first).
        for (int sh = nq / 2; sh > 0; sh >>= 1) s += __shfl_xor_sync(kFull, s, sh);
        if (qi == 0 && ok) a.aimg[pix] = s / (float)a.c;
      }
    }
    if (a.popc) popc_packed_pixels(a, pix0, a.ppw, lane);
  } else if (a.mode_x == 3) {
    // Vectorized pack (C % 4 == 0, and group words aligned to channel words):
    // each lane reads 4 channels as one float4, 8 lanes OR their nibbles
    // into a word; two float4 per lane in flight (four measured no faster
    // at C = 512, S9-5).
    const long long pix = (long long)bid * (kThreads / 32) + warp;
    if (pix >= a.nhw) return;
    const float4* xrow = reinterpret_cast<const float4*>(a.x + pix * a.c);
    const int nw = a.g * a.wg;
    const int nq = a.c / 4;
    float asum = 0.0f;
    for (int q0 = 0; q0 < nq; q0 += 64) {
      float4 v[2];
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int qi = q0 + u * 32 + lane;
        // Streaming loads: x is read exactly once.
        v[u] = qi < nq ? __ldcs(xrow + qi) : make_float4(0.f, 0.f, 0.f, 0.f);
      }
#pragma unroll
      for (int u = 0; u < 2; ++u) {
        const int qb = q0 + u * 32;
        if (qb >= nq) break;
        const int qi = qb + lane;
        const uint32_t word = pack_float4_word(a, v[u], qi, qi < nq, lane, asum);
        if (a.xp && lane % 8 == 0 && qi < nq) a.xp[pix * nw + qi / 8] = word;
      }
    }
    if (a.popc) popc_packed_pixels(a, pix, 1, lane);
    if (a.aimg) {
#pragma unroll
      for (int sh = 16; sh > 0; sh >>= 1) asum += __shfl_xor_sync(kFull, asum, sh);
      if (lane == 0) a.aimg[pix] = asum / (float)a.c;
    }
  } else if (a.mode_x == 2) {
    const long long idx = (long long)bid * kThreads + threadIdx.x;
    if (idx >= a.nhw * a.g) return;
    const long long pix = idx / a.g;
    const int grp = (int)(idx - pix * a.g);
    const uint32_t* src = a.xpk + pix * (long long)(a.g * a.wg) + grp * a.wg;
    const uint32_t lmask = last_word_mask(a.cg);
    int s = 0;
    for (int j = 0; j < a.wg; ++j) s += __popc(src[j] & (j == a.wg - 1 ? lmask : 0xffffffffu));
    a.popc[idx] = s;
  }
}

__global__ void __launch_bounds__(kThreads) prep_kernel(PrepArgs a) {
  extern __shared__ int spw_all[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if ((int)blockIdx.x < a.wblocks) {
    // Weights: one warp per (padded) output row. Masks trailing bits (so
    // that garbage there cannot reach a popcount), pads K to the stage
    // size and O to the tile (so the GEMM's B loads need no bounds checks),
    // and writes the 2-D prefix sums of per-tap popcounts.
    const int row = blockIdx.x * (kThreads / 32) + warp;
    if (row >= a.g * a.ogpad) return;
    int* spw = spw_all + warp * a.t;
    const int grp = row / a.ogpad, ol = row - grp * a.ogpad;
    const bool real = ol < a.og;
    const long long go = (long long)grp * a.og + ol;
    const uint32_t lmask = last_word_mask(a.cg);
    for (int t = lane; t < a.t; t += 32) spw[t] = 0;
    __syncwarp();
    for (int k = lane; k < a.kpad; k += 32) {
      uint32_t word = 0;
      if (real && k < a.k) {
        const int t = k / a.wg, j = k - t * a.wg;
        word = a.w[go * a.k + k];
        if (j == a.wg - 1) word &= lmask;
        atomicAdd(&spw[t], __popc(word));
      }
      a.ws[(long long)row * a.kpad + k] = word;
    }
    __syncwarp();
    if (!real) return;
    const int kw1 = a.kw + 1;
    for (int e = lane; e < (a.kh + 1) * kw1; e += 32) {
      const int ey = e / kw1, ex = e - ey * kw1;
      int s = 0;
      for (int dy = 0; dy < ey; ++dy)
        for (int dx = 0; dx < ex; ++dx) s += spw[dy * a.kw + dx];
      a.pre[(long long)e * a.o + go] = s;
    }
    if (a.thr && lane == 0)
      a.thr[go] = packed_threshold(a.osc[go], a.obias[go], a.act, a.slope, a.amin, a.amax);
    return;
  }
  prep_x(a, (int)blockIdx.x - a.wblocks);
}

// ---------------------------------------------------------- output storing

// Packed output: `bits` holds this lane's bits of the 32-channel word that
// starts at global channel `word_c0` (a multiple of 32). Lanes that share the
// word OR-reduce over `span` consecutive lanes; the first writes it.
template <int SPAN>
__device__ __forceinline__ void store_packed_word(const EpiArgs& e, long long m, uint32_t bits,
                                                  long long word_c0, bool lead, bool any) {
#pragma unroll
  for (int s = 1; s < SPAN; s <<= 1) bits |= __shfl_xor_sync(kFull, bits, s);
  if (lead && any) {
    const long long ow = (e.o + 31) / 32;
    static_cast<uint32_t*>(e.out)[m * ow + word_c0 / 32] = bits;
  }
}

// Group boundaries inside a 32-channel word (groups > 1 and Og % 32 != 0):
// several tiles own bits of one word, so bits are OR-ed atomically into the
// zeroed output.
__device__ __forceinline__ void store_packed_bit_atomic(const EpiArgs& e, long long m, int go,
                                                        float val) {
  if (bin_bit(val)) {
    const long long ow = (e.o + 31) / 32;
    atomicOr(static_cast<uint32_t*>(e.out) + m * ow + go / 32, 1u << (go % 32));
  }
}

// ------------------------------------------------------------ b1 GEMM

// Block tile BM x BN (BM = 64 * warps along M), warp tile 64 x 32: 4 m16 x
// 4 n8 MMA tiles per warp and K step. VEC: words per cp.async of the
// implicit-GEMM A operand (a tap's words never straddle a chunk: Wg % VEC == 0).
template <int BN, int VEC>
struct GemmCfg {
  static constexpr int kWarpsN = BN / 32;
  static constexpr int kWarpsM = (kThreads / 32) / kWarpsN;
  static constexpr int kBM = 64 * kWarpsM;
  static constexpr int kStages = (kBM + BN) > 256 ? 2 : 3;
  static constexpr int kStageWords = (kBM + BN) * kLds;
  static constexpr int kCLd = BN + 8;  // C staging pitch: conflict-free int2 stores
  static constexpr int kSmemBytes = kStages * kStageWords * 4 + kBM * 16 + kBM * 16;
  static_assert(kBM * kCLd <= kStages * kStageWords, "C tile must fit in the stage buffers");
  static constexpr int kCpr = kBK / VEC;          // A chunks per row and stage
  static constexpr int kRowStep = kThreads / kCpr;
  static constexpr int kAPerThread = kBM / kRowStep;
  static constexpr int kBPerThread = BN * (kBK / 4) / kThreads;
};

struct SRow {
  long long pixbase;
  int iy0, ix0;
};

// Loader row data of the GEMM: 32-bit pixel index (the handler checks that
// every packed-word offset fits in 31 bits).
struct SRowG {
  int pixbase, iy0, ix0, pad;
};

// Per-row epilogue data kept in shared memory (16 bytes).
struct SEpi {
  int rowconst;
  float beta;
  int by, bx;  // valid-tap box: a | b << 16, c | d << 16
};

// Border correction of one output channel: the weight popcount of o's padded
// taps, from the 2-D prefix table (4 reads), times its coefficient.
__device__ __forceinline__ int pad_term(const EpiArgs& e, int by, int bx, int go, int w1all) {
  const int a = by & 0xffff, b = by >> 16, c = bx & 0xffff, d = bx >> 16;
  const int kw1 = e.kw + 1, O = e.o;
  const int w1v = e.pre[(b * kw1 + d) * O + go] - e.pre[(a * kw1 + d) * O + go] -
                  e.pre[(b * kw1 + c) * O + go] + e.pre[(a * kw1 + c) * O + go];
  const int coef = e.type == XNOR ? 2 + 2 * e.pv : e.pv;
  return coef * (w1all - w1v);
}

template <int BN, int VEC>
__global__ void __launch_bounds__(kThreads, 2) gemm_b1_kernel(GemmArgs a) {
  using Cfg = GemmCfg<BN, VEC>;
  constexpr int BM = Cfg::kBM;
  extern __shared__ __align__(16) uint32_t smem[];
  SRowG* srow = reinterpret_cast<SRowG*>(smem + Cfg::kStages * Cfg::kStageWords);
  const EpiArgs& e = a.e;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int gidx = blockIdx.z;
  const long long m0 = (long long)blockIdx.x * BM;
  const int n0 = blockIdx.y * BN;

  for (int r = tid; r < BM; r += kThreads) {
    const long long m = m0 + r;
    SRowG s;
    s.pad = 0;
    if (m < e.m) {
      long long n;
      int rem;
      split_row(m, e.ho * e.wo, n, rem);
      const int yo = rem / e.wo, xo = rem - yo * e.wo;
      s.pixbase = (int)n * e.h * e.w;
      s.iy0 = yo * e.sh - e.pt;
      s.ix0 = xo * e.sw - e.pl;
    } else {
      s.pixbase = 0;
      s.iy0 = -(1 << 30);  // every tap out of the image: zero rows
      s.ix0 = 0;
    }
    srow[r] = s;
  }
  __syncthreads();

  // The thread's fixed word column of the A tile and its K position, advanced
  // incrementally per stage (no divisions in the loop).
  const int q = tid % Cfg::kCpr;
  int kidx = q * VEC;
  int tap = kidx / a.wg, j = kidx - tap * a.wg;
  int dy = tap / e.kw, dx = tap - dy * e.kw;
  const uint32_t* xg = a.xp + (long long)gidx * a.wg;
  const uint32_t* wsg = a.ws + ((long long)gidx * a.ogpad + n0) * a.kpad;

  auto load_stage = [&](int slot, int kt) {
    uint32_t* sa = smem + slot * Cfg::kStageWords;
    uint32_t* sb = sa + BM * kLds;
    const bool kvalid = tap < e.t;
    const int oy = dy * e.dh, ox = dx * e.dw;
#pragma unroll
    for (int i = 0; i < Cfg::kAPerThread; ++i) {
      const int r = tid / Cfg::kCpr + i * Cfg::kRowStep;
      const SRowG s = srow[r];
      const int iy = s.iy0 + oy, ix = s.ix0 + ox;
      const bool ok = kvalid && (unsigned)iy < (unsigned)e.h && (unsigned)ix < (unsigned)e.w;
      const uint32_t* src = ok ? xg + ((s.pixbase + iy * e.w + ix) * a.ps + j) : a.xp;
      cp_async<VEC * 4>(sa + r * kLds + q * VEC, src, ok);
    }
#pragma unroll
    for (int i = 0; i < Cfg::kBPerThread; ++i) {
      const int r = tid / 8 + i * (kThreads / 8);
      const int c4 = (tid % 8) * 4;
      cp_async<16>(sb + r * kLds + c4, wsg + (long long)r * a.kpad + kt * kBK + c4, true);
    }
    // advance the K position by kBK words
    j += a.dj;
    tap += a.dt;
    dy += a.dt_y;
    dx += a.dt_x;
    if (dx >= e.kw) { dx -= e.kw; ++dy; }
    if (j >= a.wg) {
      j -= a.wg;
      ++tap;
      if (++dx >= e.kw) { dx = 0; ++dy; }
    }
  };

  int acc[4][4][4] = {};

  const int nk = a.kpad / kBK;
  constexpr int S = Cfg::kStages;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < nk) load_stage(s, s);
    cp_async_commit();
  }

  // Per-row epilogue data now, while the prologue's copies are in flight.
  SEpi* sepi = reinterpret_cast<SEpi*>(srow + BM);
  {
    constexpr int NS = kThreads / BM;
    const RowData rd = row_data<NS>(e, m0 + tid / NS, gidx, tid % NS);
    if (tid % NS == 0) {
      SEpi v;
      v.rowconst = rd.rowconst;
      v.beta = rd.beta;
      v.by = rd.box.a | (rd.box.b << 16);
      v.bx = rd.box.c | (rd.box.d << 16);
      sepi[tid / NS] = v;
    }
  }

  const int wm = (warp / Cfg::kWarpsN) * 64;
  const int wn = (warp % Cfg::kWarpsN) * 32;
  // ldmatrix lane roles: A x4 = {rows 0-7, rows 8-15} x {words 0-3, 4-7};
  // B x4 = {n 0-7 words 0-3, n 0-7 words 4-7, n 8-15 words 0-3, n 8-15 words 4-7}.
  const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_word = (lane >> 4) * 4;
  const int b_row = (lane & 7) + (lane >> 4) * 8, b_word = ((lane >> 3) & 1) * 4;

  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<S - 2>();
    __syncthreads();
    if (kt + S - 1 < nk) load_stage((kt + S - 1) % S, kt + S - 1);
    cp_async_commit();
    const uint32_t* sa = smem + (kt % S) * Cfg::kStageWords;
    const uint32_t* sb = sa + BM * kLds;
#pragma unroll
    for (int ks = 0; ks < kBK / 8; ++ks) {
      if (kt * kBK + ks * 8 >= a.k) break;  // all-zero K steps of the last stage
      uint32_t af[4][4], bf[2][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
        ldmatrix_x4(af[mt], sa + (wm + mt * 16 + a_row) * kLds + ks * 8 + a_word);
#pragma unroll
      for (int np = 0; np < 2; ++np)
        ldmatrix_x4(bf[np], sb + (wn + np * 16 + b_row) * kLds + ks * 8 + b_word);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
          mma_b1_and(acc[mt][nt], af[mt], bf[nt >> 1][(nt & 1) * 2], bf[nt >> 1][(nt & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();

  if (e.thr && !e.out_atomic) {
    // Packed output by integer thresholds straight from the accumulators:
    // a few integer ops per output, the 8 columns' constants in registers,
    // one OR over the quad per row and 32-column word.
    const int gq = lane >> 2, tq = lane & 3;
    int cw1[4][2], clo[4][2], chi[4][2];
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int jj = 0; jj < 2; ++jj) {
        const int o = n0 + wn + nt * 8 + 2 * tq + jj;
        const int go = gidx * e.og + min(o, e.og - 1);
        cw1[nt][jj] = e.pre[(e.kh * (e.kw + 1) + e.kw) * e.o + go];
        const int2 t2 = e.thr[go];
        // Columns past Og get an empty interval: their bits stay 0.
        clo[nt][jj] = o < e.og ? t2.x : 1;
        chi[nt][jj] = o < e.og ? t2.y : 0;
      }
    const long long ow = (e.o + 31) / 32;
    const int word = (gidx * e.og + n0 + wn) / 32;
    const bool word_ok = n0 + wn < e.og;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int r = wm + mt * 16 + gq + 8 * h;
        const long long m = m0 + r;
        const SEpi re = sepi[r];
        int accv[4][2];
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj)
            accv[nt][jj] = e.type == XNOR
                               ? 4 * acc[mt][nt][2 * h + jj] + re.rowconst - 2 * cw1[nt][jj]
                               : acc[mt][nt][2 * h + jj];
        if (e.pad_corr) {
          const int a0 = re.by & 0xffff, b0 = re.by >> 16, c0 = re.bx & 0xffff, d0 = re.bx >> 16;
          const bool corr = (b0 - a0) * (d0 - c0) < e.t;
          if (__any_sync(kFull, corr) && corr) {
#pragma unroll
            for (int nt = 0; nt < 4; ++nt)
#pragma unroll
              for (int jj = 0; jj < 2; ++jj) {
                const int o = n0 + wn + nt * 8 + 2 * tq + jj;
                if (o < e.og)
                  accv[nt][jj] += pad_term(e, re.by, re.bx, gidx * e.og + o, cw1[nt][jj]);
              }
          }
        }
        uint32_t bits = 0;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
          for (int jj = 0; jj < 2; ++jj)
            if (accv[nt][jj] >= clo[nt][jj] && accv[nt][jj] <= chi[nt][jj])
              bits |= 1u << (nt * 8 + 2 * tq + jj);
        bits |= __shfl_xor_sync(kFull, bits, 1);
        bits |= __shfl_xor_sync(kFull, bits, 2);
        if (tq == 0 && m < e.m && word_ok) static_cast<uint32_t*>(e.out)[m * ow + word] = bits;
      }
    return;
  }
  __syncthreads();

  // Epilogue, through shared memory: the accumulators go to a C tile so that
  // each thread then owns 4 consecutive columns of a row (float4 stores, one
  // set of per-column constants in registers) in a compact, non-unrolled
  // loop. Accumulator (mt, nt, r): row wm + 16mt + lane/4 + 8(r/2), column
  // wn + 8nt + 2(lane%4) + r%2.
  int* ct = reinterpret_cast<int*>(smem);
  {
    const int gq = lane >> 2, tq = lane & 3;
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm + mt * 16 + gq + 8 * h, c = wn + nt * 8 + 2 * tq;
          *reinterpret_cast<int2*>(ct + r * Cfg::kCLd + c) =
              make_int2(acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
        }
  }
  __syncthreads();

  constexpr int kQuads = BN / 4;
  constexpr int kRowsPerPass = kThreads / kQuads;
  const int cq = tid % kQuads;
  const int ol = n0 + 4 * cq;  // first column (within the group)
  float osc[4], obias[4];
  int w1all[4], tlo[4], thi[4];
  bool cok[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    cok[i] = ol + i < e.og;
    const int go = gidx * e.og + min(ol + i, e.og - 1);
    osc[i] = __ldg(e.osc + go);
    obias[i] = __ldg(e.obias + go);
    w1all[i] = e.pre[(e.kh * (e.kw + 1) + e.kw) * e.o + go];
    if (e.thr) {
      const int2 t2 = e.thr[go];
      tlo[i] = t2.x;
      thi[i] = t2.y;
    }
  }
  const int go0 = gidx * e.og + ol;
  const bool all4 = cok[3] && e.out_vec4;
  const int word_c = n0 + 32 * (cq / 8);  // first column of this lane's packed word
#pragma unroll 2
  for (int r = tid / kQuads; r < BM; r += kRowsPerPass) {
    const long long m = m0 + r;
    const bool rv = m < e.m;
    const SEpi re = sepi[r];
    const int4 p4 = *reinterpret_cast<const int4*>(ct + r * Cfg::kCLd + 4 * cq);
    const int pv4[4] = {p4.x, p4.y, p4.z, p4.w};
    int accv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      accv[i] = e.type == XNOR ? 4 * pv4[i] + re.rowconst - 2 * w1all[i] : pv4[i];
    // Border rows only; a warp-uniform branch so that interior rows do not
    // pay for the (otherwise predicated) table reads.
    if (e.pad_corr) {
      const int a = re.by & 0xffff, b = re.by >> 16, c = re.bx & 0xffff, d = re.bx >> 16;
      const bool corr = (b - a) * (d - c) < e.t;
      if (__any_sync(kFull, corr) && corr) {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (cok[i]) accv[i] += pad_term(e, re.by, re.bx, go0 + i, w1all[i]);
      }
    }
    if (e.thr) {
      uint32_t bits = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (cok[i] && accv[i] >= tlo[i] && accv[i] <= thi[i]) bits |= 1u << (4 * (cq % 8) + i);
      if (e.out_atomic) {
        if (rv)
          for (int i = 0; i < 4; ++i)
            if (bits & (1u << (4 * (cq % 8) + i))) store_packed_bit_atomic(e, m, go0 + i, 1.0f);
      } else {
        store_packed_word<8>(e, m, bits, (long long)gidx * e.og + word_c, cq % 8 == 0,
                             rv && word_c < e.og);
      }
      continue;
    }
    float val[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      val[i] = epilogue((float)accv[i], osc[i], re.beta, obias[i], e.act, e.slope);
    if (!e.out_packed) {
      if (!rv) continue;
      float* out = static_cast<float*>(e.out) + m * e.o + go0;
      if (all4) {
        *reinterpret_cast<float4*>(out) = make_float4(val[0], val[1], val[2], val[3]);
      } else {
#pragma unroll
        for (int i = 0; i < 4; ++i)
          if (cok[i]) out[i] = val[i];
      }
    } else if (e.out_atomic) {
      if (!rv) continue;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (cok[i]) store_packed_bit_atomic(e, m, go0 + i, val[i]);
    } else {
      uint32_t bits = 0;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        if (cok[i]) bits |= bin_bit(val[i]) << (4 * (cq % 8) + i);
      // Lanes that share the row and the word: 8 consecutive lanes.
      store_packed_word<8>(e, m, bits, (long long)gidx * e.og + word_c, cq % 8 == 0,
                           rv && word_c < e.og);
    }
  }
}

// ----------------------------------------------------- BINARY_WEIGHTS

// x' (float) times +-1 weights on CUDA cores. Products are exact (x' * +-1),
// sums are kept in double so the result is the exact sum rounded once.
constexpr int kBwBM = 64, kBwBN = 64, kBwKC = 32, kBwLd = 65;

__global__ void __launch_bounds__(kThreads) bw_kernel(BwArgs a) {
  __shared__ float as[kBwKC * kBwLd];
  __shared__ float bs[kBwKC * kBwLd];
  __shared__ SRow srow[kBwBM];
  const EpiArgs& e = a.e;
  const int tid = threadIdx.x, lane = tid & 31;
  const int gidx = blockIdx.z;
  const long long m0 = (long long)blockIdx.x * kBwBM;
  const int n0 = blockIdx.y * kBwBN;
  for (int r = tid; r < kBwBM; r += kThreads) {
    const long long m = m0 + r;
    SRow s;
    if (m < e.m) {
      long long n;
      int rem;
      split_row(m, e.ho * e.wo, n, rem);
      const int yo = rem / e.wo, xo = rem - yo * e.wo;
      s.pixbase = n * e.h * e.w;
      s.iy0 = yo * e.sh - e.pt;
      s.ix0 = xo * e.sw - e.pl;
    } else {
      s.pixbase = -1;
      s.iy0 = 0;
      s.ix0 = 0;
    }
    srow[r] = s;
  }
  const int tx = tid % 16, ty = tid / 16;
  double acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) acc[i][jj] = 0.0;
  __syncthreads();

  for (int t = 0; t < e.t; ++t) {
    const int dy = t / e.kw, dx = t - dy * e.kw;
    for (int c0 = 0; c0 < e.cg; c0 += kBwKC) {
#pragma unroll
      for (int i = 0; i < kBwBM * kBwKC / kThreads; ++i) {
        const int el = tid + i * kThreads;
        const int r = el / kBwKC, cl = el % kBwKC;
        const SRow s = srow[r];
        const int cc = c0 + cl;
        float v = 0.0f;
        if (s.pixbase >= 0 && cc < e.cg) {
          const int iy = s.iy0 + dy * e.dh, ix = s.ix0 + dx * e.dw;
          if ((unsigned)iy < (unsigned)e.h && (unsigned)ix < (unsigned)e.w) {
            const int ch = gidx * e.cg + cc;
            const float xv = __ldg(a.x + (s.pixbase + (long long)iy * e.w + ix) * e.c + ch);
            v = (xv + __ldg(a.ib + ch)) * __ldg(a.is + ch);
          } else {
            v = e.pvf;
          }
        }
        as[cl * kBwLd + r] = v;
      }
#pragma unroll
      for (int i = 0; i < kBwBN * kBwKC / kThreads; ++i) {
        const int el = tid + i * kThreads;
        const int col = el / kBwKC, cl = el % kBwKC;
        const int o = n0 + col, cc = c0 + cl;
        float v = 0.0f;
        if (o < e.og && cc < e.cg) {
          const long long go = (long long)gidx * e.og + o;
          const uint32_t word = __ldg(a.w + (go * e.t + t) * a.wg + cc / 32);
          v = ((word >> (cc % 32)) & 1u) ? 1.0f : -1.0f;
        }
        bs[cl * kBwLd + col] = v;
      }
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kBwKC; ++k) {
        float av[4], bv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = as[k * kBwLd + ty * 4 + i];
#pragma unroll
        for (int jj = 0; jj < 4; ++jj) bv[jj] = bs[k * kBwLd + tx * 4 + jj];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int jj = 0; jj < 4; ++jj) acc[i][jj] += (double)(av[i] * bv[jj]);
      }
      __syncthreads();
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const long long m = m0 + ty * 4 + i;
    const RowData rd = row_data<1>(e, m, gidx, 0);
    uint32_t bits = 0;
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int o = n0 + tx * 4 + jj;
      if (!(rd.valid && o < e.og)) continue;
      const int go = gidx * e.og + o;
      const float val = epilogue((float)acc[i][jj], __ldg(e.osc + go), rd.beta,
                                 __ldg(e.obias + go), e.act, e.slope);
      if (!e.out_packed) {
        static_cast<float*>(e.out)[m * e.o + go] = val;
      } else if (e.out_atomic) {
        store_packed_bit_atomic(e, m, go, val);
      } else {
        bits |= bin_bit(val) << ((tx % 8) * 4 + jj);
      }
    }
    if (e.out_packed && !e.out_atomic) {
      const int wc = n0 + (tx / 8) * 32;
      store_packed_word<8>(e, m, bits, (long long)gidx * e.og + wc, (tx % 8) == 0,
                           rd.valid && wc < e.og);
    }
  }
  (void)lane;
}

#include "fast_conv.cuh"

// ------------------------------------------------------------- host side

struct Plan {
  bool binary;
  bool fast;  // fast_conv_kernel (then no weight re-layout, popcount image or thresholds)
  long long nhw, m;
  int g, cg, og, wg, t, k, kpad, ogpad, bn, vec;
  bool thr;  // packed output through per-column integer thresholds
  size_t off_xp, off_popc, off_a, off_ws, off_pre, off_thr, off_ftab, total;
};

size_t align256(size_t v) { return (v + 255) & ~size_t(255); }

// Packed output without beta goes through per-column integer thresholds.
// Monotone activations only (sigmoid and tanh go through float library code
// whose monotonicity we do not rely on); beta varies per row.
bool packed_by_threshold(const ConvParams& p) {
  return p.type != BINARY_WEIGHTS && p.out_packed && !p.beta_scaling &&
         (p.activation == ACT_LINEAR || p.activation == ACT_RELU ||
          p.activation == ACT_RELU6 || p.activation == ACT_SIGN ||
          p.activation == ACT_HARD_TANH ||
          (p.activation == ACT_LEAKY_RELU && p.negative_slope >= 0.0f));
}

// fa: the fast kernel's geometry when it runs, else null.
Plan make_plan(const ConvParams& p, const FastArgs* fa) {
  Plan pl{};
  const bool fast = fa != nullptr;
  pl.fast = fast;
  pl.binary = p.type != BINARY_WEIGHTS;
  pl.nhw = p.n * p.h * p.w;
  pl.m = p.n * p.ho() * p.wo();
  pl.g = (int)p.groups;
  pl.cg = (int)p.cg();
  pl.og = (int)p.og();
  pl.wg = (int)p.w_words();
  pl.t = (int)(p.kh * p.kw);
  pl.k = pl.t * pl.wg;
  pl.kpad = (pl.k + kBK - 1) / kBK * kBK;
  pl.bn = pl.og <= 64 ? 64 : 128;
  pl.ogpad = (pl.og + pl.bn - 1) / pl.bn * pl.bn;
  pl.vec = pl.wg % 4 == 0 ? 4 : (pl.wg % 2 == 0 ? 2 : 1);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    size_t at = off;
    off = align256(off + bytes);
    return at;
  };
  const size_t none = ~size_t(0);
  pl.off_xp = pl.off_popc = pl.off_a = pl.off_ws = pl.off_pre = pl.off_thr = pl.off_ftab = none;
  pl.thr = packed_by_threshold(p);
  if (pl.binary && fast) {
    if (!p.x_packed) pl.off_xp = take(sizeof(uint32_t) * pl.nhw * pl.g * pl.wg);
    pl.off_ftab = take(sizeof(int) * (size_t)fast_tab_rows(*fa) * fa->opad);
  } else if (pl.binary) {
    if (!p.x_packed) pl.off_xp = take(sizeof(uint32_t) * pl.nhw * pl.g * pl.wg);
    if (p.type == XNOR) pl.off_popc = take(sizeof(int) * pl.nhw * pl.g);
    pl.off_ws = take(sizeof(uint32_t) * (size_t)pl.g * pl.ogpad * pl.kpad);
    pl.off_pre = take(sizeof(int) * (size_t)(p.kh + 1) * (p.kw + 1) * p.o);
    if (pl.thr) pl.off_thr = take(sizeof(int2) * (size_t)p.o);
  }
  if (p.beta_scaling && !p.x_packed) pl.off_a = take(sizeof(float) * pl.nhw);
  pl.total = off;
  return pl;
}

template <typename T>
T* at(void* base, size_t off) {
  return off == ~size_t(0) ? nullptr : reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

template <int BN, int VEC>
cudaError_t launch_gemm(const GemmArgs& ga, const Plan& pl, cudaStream_t stream) {
  using Cfg = GemmCfg<BN, VEC>;
  static_assert(Cfg::kAPerThread * Cfg::kRowStep == Cfg::kBM, "A tile mapping");
  // Once per device and instantiation (a repeated call at worst if two
  // threads race here, which is harmless).
  static std::atomic<uint64_t> attr_set{0};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(attr_set.load(std::memory_order_relaxed) & bit)) {
    err = cudaFuncSetAttribute(gemm_b1_kernel<BN, VEC>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes);
    if (err != cudaSuccess) return err;
    attr_set.fetch_or(bit, std::memory_order_relaxed);
  }
  const long long mt = (pl.m + Cfg::kBM - 1) / Cfg::kBM;
  dim3 grid((unsigned)mt, (unsigned)(pl.ogpad / BN), (unsigned)pl.g);
  gemm_b1_kernel<BN, VEC><<<grid, kThreads, Cfg::kSmemBytes, stream>>>(ga);
  return cudaGetLastError();
}

// Independent accumulators so that each warp keeps the tensor core busy
// instead of waiting on its own previous MMA.
__global__ void __launch_bounds__(128) mma_rate_kernel(int iters, int* sink) {
  uint32_t a[4] = {threadIdx.x * 0x9E3779B9u, threadIdx.x ^ 0x55555555u, 0xCCCCCCCCu,
                   threadIdx.x * 7u};
  const uint32_t b0 = blockIdx.x * 0x85EBCA6Bu, b1 = ~b0;
  int d[8][4] = {};
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int k = 0; k < 8; ++k) mma_b1_and(d[k], a, b0, b1);
  }
  int s = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) s += d[k][0] + d[k][1] + d[k][2] + d[k][3];
  if (s == 0x7fffffff) *sink = s;  // keeps the MMAs alive; practically never stores
}

}  // namespace

cudaError_t measure_ceilings(Ceilings* out, size_t copy_bytes) {
  cudaError_t err;
  int dev = 0, sms = 0;
  if ((err = cudaGetDevice(&dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess)
    return err;
  int* sink = nullptr;
  void *src = nullptr, *dst = nullptr;
  cudaEvent_t e0 = nullptr, e1 = nullptr;
  float ms = 0;
  auto cleanup = [&]() {
    cudaFree(sink);
    cudaFree(src);
    cudaFree(dst);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
  };
  if ((err = cudaMalloc(&sink, sizeof(int))) != cudaSuccess) return cleanup(), err;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  const int blocks = sms * 8, iters = 4096;
  mma_rate_kernel<<<blocks, 128>>>(16, sink);  // warm-up
  cudaEventRecord(e0);
  mma_rate_kernel<<<blocks, 128>>>(iters, sink);
  cudaEventRecord(e1);
  if ((err = cudaEventSynchronize(e1)) != cudaSuccess) return cleanup(), err;
  if ((err = cudaGetLastError()) != cudaSuccess) return cleanup(), err;
  cudaEventElapsedTime(&ms, e0, e1);
  const double mmas = double(blocks) * 4 /*warps*/ * iters * 8;
  out->mma_macs_per_s = mmas * 16 * 8 * 256 / (ms * 1e-3);

  if ((err = cudaMalloc(&src, copy_bytes)) != cudaSuccess) return cleanup(), err;
  if ((err = cudaMalloc(&dst, copy_bytes)) != cudaSuccess) return cleanup(), err;
  cudaMemset(src, 1, copy_bytes);
  cudaMemcpy(dst, src, copy_bytes, cudaMemcpyDeviceToDevice);  // warm-up
  const int reps = 10;
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice);
  cudaEventRecord(e1);
  if ((err = cudaEventSynchronize(e1)) != cudaSuccess) return cleanup(), err;
  cudaEventElapsedTime(&ms, e0, e1);
  out->copy_bytes_per_s = 2.0 * copy_bytes * reps / (ms * 1e-3);
  cleanup();
  return cudaGetLastError();
}


// ------------------------------------------------------- fast path planning

std::atomic<int> g_policy{0};     // KernelPolicy
std::atomic<int> g_last_path{0};  // KernelPath of the last launch_conv
std::atomic<bool> g_tma_slots{true};  // set_tma_slots
std::atomic<bool> g_pdl{true};        // set_fast_pdl
std::atomic<int> g_wcopy{kWeightsTensorMap};  // set_fast_weight_copy: the most wanted
std::atomic<int> g_last_wcopy{-1};             // what the last fast call ran
std::atomic<bool> g_fused_prep{true};          // set_fast_fused_prep
std::atomic<bool> g_fused_tables_first{false};  // set_fast_fused_tables_first
std::atomic<int> g_last_tma{-1};      // the last fast call copied slots by tensor map (1) or not (0)
std::atomic<int> g_wgmma{kWgmmaAuto};  // set_fast_wgmma
std::atomic<int> g_dbg_wdelay_us{0};  // set_debug_weight_delay (a test knob)
std::atomic<int> g_dbg_dlate{-1};      // set_debug_tile_rounds (-1: the estimate)
std::atomic<int> g_last_dlate{-1};     // last_tile_rounds
std::atomic<bool> g_wg_split{true};   // set_fast_wg_split
std::atomic<int> g_last_wg_split{-1};  // last_wg_split
std::atomic<bool> g_wg_skip_half{true};  // set_fast_wg_skip_half
std::atomic<bool> g_wg_half_tiles{true};  // set_fast_wg_half_tiles
std::atomic<bool> g_wg_half_always{false};  // set_fast_wg_half_tiles_always
std::atomic<int> g_last_half_tiles{-1};   // last_wg_half_tiles
// Half tiles are allowed: their knob, and wg_skip_half's (a half tile's
// rows 64-127 are skipped by that path).
bool half_tiles_on() {
  return g_wg_half_tiles.load(std::memory_order_relaxed) &&
         g_wg_skip_half.load(std::memory_order_relaxed);
}
std::atomic<int> g_last_wgmma{-1};    // the last fast call ran the wgmma kernel (1: A from registers, 2: from shared memory) or not (0)

// Per-device attributes the fast path reads on every call, queried once per
// device (a handful of runtime calls less per call: N = 1 layers are bound
// by such host work).
struct DevInfo {
  int sms, optin, smem_sm, reserved, major, minor;
};
cudaError_t dev_info(DevInfo* out) {
  constexpr int kMaxDev = 64;
  static DevInfo info[kMaxDev];
  static std::atomic<uint64_t> have{0};
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t(1) << (dev & (kMaxDev - 1));
  if (dev < kMaxDev && (have.load(std::memory_order_acquire) & bit)) {
    *out = info[dev];
    return cudaSuccess;
  }
  DevInfo d{};
  if ((err = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&d.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) !=
          cudaSuccess ||
      (err = cudaDeviceGetAttribute(&d.smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                                    dev)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&d.reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev)) !=
          cudaSuccess ||
      (err = cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, dev)) !=
          cudaSuccess ||
      (err = cudaDeviceGetAttribute(&d.minor, cudaDevAttrComputeCapabilityMinor, dev)) != cudaSuccess)
    return err;
  if (dev < kMaxDev) {
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    info[dev] = d;
    have.fetch_or(bit, std::memory_order_release);
  }
  *out = d;
  return cudaSuccess;
}

// Geometry of fast_conv_kernel for these parameters, or false when the
// parameters are outside what it handles. Depends on the parameters only
// (no device, no pointers): workspace_bytes sizes the fast plan with it.
bool plan_fast_geometry(const ConvParams& p, FastArgs* fa) {
  // C = 64 ("half" mode): a 16-byte K chunk is two pixels of 64 channels,
  // taps dx and dx + 1 where dw = 1, else one tap and an unused upper half
  // (see fast_conv.cuh).
  const bool half = p.c == 64;
  if (p.type == BINARY_WEIGHTS || p.groups != 1 || (!half && p.c % 128 != 0)) return false;
  const long long pch = half ? 1 : p.c / 128;
  if (pch > 64) return false;
  const long long ho = p.ho(), wo = p.wo();
  const long long m = p.n * ho * wo;
  // 32-bit row arithmetic (with multiply-shift division) inside the kernel.
  if ((m + kFastBM) >= (1LL << 31) || p.n * ho >= (1LL << 31)) return false;
  if (p.n * p.h * p.w * pch >= (1LL << 31)) return false;  // chunk indices of x
  if (ho > kFastMaxSide || wo > kFastMaxSide || p.kh * p.kw > kFastMaxTaps) return false;
  FastArgs a{};
  a.p = (int)pch;
  a.t = (int)(p.kh * p.kw);
  a.half = half ? 1 : 0;
  a.tpc = half && p.dil_w == 1 ? 2 : 1;
  a.nj = (int)((p.kw + a.tpc - 1) / a.tpc);
  a.kc = half ? (int)p.kh * a.nj : a.t * a.p;
  a.ks = (a.kc + 1) / 2;
  a.pitch_b = 2 * a.ks + 1;
  a.rmax = (int)((kFastBM - 1) / wo + 2);
  // Slot rows: see load_tile in fast_conv.cuh. A tile's rmax output rows
  // span at most ceil((rmax - 1) / ho) image boundaries.
  const long long wslot = ((wo - 1) * p.stride_w + (p.kw - 1) * p.dil_w + 1 + 7) / 8 * 8;
  if (wslot > (1 << 16)) return false;
  a.wslot = (int)wslot;
  a.rowpitch = (int)(wslot * pch);
  const long long window = (p.kh - 1) * p.dil_h + 1;
  a.erow = (int)std::max<long long>(window - p.stride_h, 0);
  const long long srows =
      (a.rmax - 1) * p.stride_h + (a.rmax - 1 + ho - 1) / ho * a.erow + window;
  if (srows > (1 << 16)) return false;
  a.srows = (int)srows;
  // Input row y sh + dy dh of output row y is input row (y - k) sh + dy' dh
  // of row y - k when dy' = dy + k sh / dh: k sh a multiple of dh, first at
  // k0 = dh / gcd(sh, dh) (later k share less). Row (j, dy) is copied unless
  // row j - k0 of the same image and tile brought it: dy + k0 sh / dh < kh.
  a.dyback = (int)(p.dil_h / std::gcd(p.stride_h, p.dil_h));
  const long long share = a.dyback * p.stride_h / p.dil_h;
  a.dymask = 0;
  for (long long dy = 0; dy < p.kh; ++dy)
    if (dy + share >= p.kh) a.dymask |= 1ull << dy;
  a.div_kh = make_fastdiv((uint32_t)p.kh);
  // Valid-tap box classes per axis (the kernel looks them up the same way).
  auto classes = [](long long extent, long long stride, long long pad, long long size,
                    long long k, long long dil, int* lo_tab, int* hi_tab, int& n) {
    n = 0;
    for (long long v = 0; v < extent; ++v) {
      int lo, hi;
      if (axis_class((int)(v * stride - pad), (int)size, (int)k, (int)dil, lo_tab, hi_tab, n, lo,
                     hi) >= 0)
        continue;
      if (n == kMaxCls) return false;
      lo_tab[n] = lo;
      hi_tab[n++] = hi;
    }
    return true;
  };
  if (!classes(ho, p.stride_h, p.pad_top, p.h, p.kh, p.dil_h, a.cy_a, a.cy_b, a.ncy) ||
      !classes(wo, p.stride_w, p.pad_left, p.w, p.kw, p.dil_w, a.cx_c, a.cx_d, a.ncx))
    return false;
  const long long a_chunks = (long long)a.srows * a.wslot * a.p;
  if (a_chunks > (1 << 20)) return false;
  a.m = (int)m;
  a.n = (int)p.n;
  a.h = (int)p.h;
  a.w = (int)p.w;
  a.ho = (int)ho;
  a.wo = (int)wo;
  a.div_ho = make_fastdiv((uint32_t)ho);
  a.div_wo = make_fastdiv((uint32_t)wo);
  a.o = (int)p.o;
  a.cg = (int)p.c;
  a.kh = (int)p.kh;
  a.kw = (int)p.kw;
  a.sh = (int)p.stride_h;
  a.sw = (int)p.stride_w;
  a.dh = (int)p.dil_h;
  a.dw = (int)p.dil_w;
  a.pt = (int)p.pad_top;
  a.pl = (int)p.pad_left;
  a.mtiles = (int)((m + kFastBM - 1) / kFastBM);
  a.ntiles = (int)((p.o + kFastBN - 1) / kFastBN);
  a.type = p.type;
  a.pv = (int)p.pad_value;
  a.beta = p.beta_scaling ? 1 : 0;
  a.x_packed = p.x_packed ? 1 : 0;
  a.act = p.activation;
  a.slope = p.negative_slope;
  a.amax = a.t * (int)p.c;
  a.amin = p.type == XNOR ? -a.amax : 0;
  a.thr = packed_by_threshold(p) ? 1 : 0;
  a.opad = a.ntiles * kFastBN;
  a.div_kc = make_fastdiv((uint32_t)a.kc);
  *fa = a;
  return true;
}

// Whether this build has sm_90a code (the wgmma kernel): CMake defines
// JAX_BINCONV_HAVE_SM90A when JAX_BINCONV_CUDA_ARCHS lists 90a.
constexpr bool wgmma_built() {
#ifdef JAX_BINCONV_HAVE_SM90A
  return true;
#else
  return false;
#endif
}

// Whether the wgmma kernel can run on this device: sm_90a code in the build,
// compute capability 9.0 exactly.
bool wgmma_device(const DevInfo& di) { return wgmma_built() && di.major == 9 && di.minor == 0; }

// kWgmmaAuto: the wgmma kernel where every SM gets a tile (its block, one
// per SM, runs its tiles on two warpgroups in turn: with fewer tiles than
// SMs the mma.sync kernel's two blocks per SM and shorter prologue win) and
// the K loop has at least 3 steps (with 1 or 2 a warpgroup's epilogue is
// longer than the other's K loop: the 1x1 L6, 2 steps, ran slower on it).
// benchmarks/NOTES-gpu.md, session 11: faster or even on every BENCH row
// that passes this test, slower on some N = 1 rows that do not. Not for
// packed output by the float epilogue (EPI_PACKED: beta with float x, or a
// non-monotone activation), whose wgmma form spills ~1 KB of registers
// (unmeasured). With fewer tiles than SMs: see wgmma_few_tiles_ss.
bool wgmma_pays(const ConvParams& p, const FastArgs& a, const DevInfo& di) {
  const bool epi_packed = !a.thr && p.out_packed;
  return !epi_packed && (long long)a.mtiles * a.ntiles >= di.sms && a.ks >= 3;
}

// kWgmmaAuto with fewer tiles than SMs (wgmma_pays false): the wgmma kernel
// with A from shared memory all the same, where that form runs (else the
// mma.sync kernel: A from registers ran no faster there), for
// - packed x and packed output by thresholds with at least 12 K steps, or 9
//   where the tiles are at most half the SMs. Session 19 (H100, same-process
//   A/B against the mma.sync kernel, min over 4-5 rounds): L4 (18 steps) N =
//   1, 8, 16, 32, 64: 1.23-1.26x, 1.25-1.30x, 1.13x, 1.16-1.25x,
//   1.18-1.19x; L3 (9 steps) N = 1, 8, 16 (4-56 tiles of 128 rows):
//   1.15-1.18x, 1.18-1.20x, 1.08x, but N = 32 (98 tiles) 0.93x, 0.96x,
//   1.05x in three runs; L7 (9 steps) N = 1: 1.12x.
// - float x and float output with at least 12 K steps, or 9 where there are
//   at least 12 tiles. Session 22 (S22-4, same kind of A/B, 5 rounds,
//   float in and out): L4 (18 steps, 4-52 tiles) N = 1, 2, 4, 8, 16, 32:
//   1.19, 1.02, 1.02, 1.03, 1.01, 0.99x (sessions 19-20 at N = 1:
//   1.15-1.22x); L3 (9 steps) N = 1 and 2 (4 and 8 tiles): 0.91x, 0.93x
//   (S20-1: 0.98x, 0.86x), N = 4, 8, 16, 32 (14-98 tiles): 1.07, 1.07,
//   1.09, 1.13-1.29x; L7 (9 steps) N = 1, 2 (50, 100 tiles): 1.18x, 1.09x
//   (S20-1: 1.12x at N = 1); L2 (5 steps) N = 1-16: 0.87-1.00x.
//   Since session 24 also with 9 steps where twice the tiles fit the SMs:
//   the form then runs half tiles (plan_fast; S24-4, L3 N = 1: 1.22-1.24x
//   against the mma.sync kernel; L2, 5 steps, N = 1 and 4: 0.98-1.10x, not
//   taken).
// Other combinations (float x to packed output, packed x to float output)
// were not measured and keep the mma.sync kernel.
bool wgmma_few_tiles_ss(const ConvParams& p, const FastArgs& a, const DevInfo& di) {
  const long long tiles = (long long)a.mtiles * a.ntiles;
  if (tiles >= di.sms) return false;
  if (a.thr && p.x_packed && p.out_packed)
    return a.ks >= 12 || (a.ks >= 9 && 2 * tiles <= di.sms);
  const bool half_tiles = half_tiles_on() && 2 * tiles <= di.sms;
  if (!p.x_packed && !p.out_packed)
    return a.ks >= 12 || (a.ks >= 9 && (tiles >= 12 || half_tiles));
  return false;
}

// kWgmmaAuto, among the wgmma kernel's two forms: A from shared memory
// (plan_wgmma_ss) for packed output by thresholds (EPI_THR) with at least
// 12 K steps, or 9 where Wo is a multiple of 8 (no pixel of a group of 8
// wasted), else A from registers. benchmarks/NOTES-gpu.md, session 12 (H100,
// N = 256 packed, same runs): L4 (18 steps) 0.0246 / 0.0261 ms against
// 0.0271 / 0.0275; L7 (9 steps) even (0.177 / 0.179); L2 and L3 (5, 9
// steps; Wo = 28, 14: an eighth of the rows wasted, more tiles) slower by
// 8-13%; float output slower by 1-6% on all four. Session 14 (after
// session 13's late prefetch in that form), S14-15, 3 alternations: L7
// 0.186 / 0.179 / 0.189 against 0.205 / 0.201 / 0.205 ms; L2, L3 within
// noise.
bool wgmma_ss_pays(const ConvParams& p, const FastArgs& a) {
  return a.thr && p.out_packed && (a.ks >= 12 || (a.ks >= 9 && a.wo % 8 == 0));
}

// The wgmma kernel's weight layout: K in blocks of 8 chunks (wg_b_offset),
// zeros past kc; pitch_b = the chunks that covers.
void plan_wgmma(FastArgs* a) {
  a->wg = 1;
  a->wg_kblocks = (a->kc + 7) / 8;
  a->pitch_b = 8 * a->wg_kblocks;
}

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder();

// The wgmma kernel with A from shared memory (FastArgs wg = 2, the ss_ fields) on top of
// plan_wgmma, or false where these parameters rule it out: C = 64, stride
// along x other than 1 (a group's 8 pixels must be 16 bytes apart), odd p >
// 1 (a K step's chunks would straddle taps backwards: negative LBO), a box
// dimension past 256, no tensor maps (the slots come only by tensor map).
bool plan_wgmma_ss(const ConvParams& p, FastArgs* a) {
  if (a->half || p.stride_w != 1 || (a->p > 1 && a->p % 2 != 0)) return false;
  if (!g_tma_slots.load(std::memory_order_relaxed) || tensor_map_encoder() == nullptr)
    return false;
  const long long w8 = 8 + (p.kw - 1) * p.dil_w, rows = (p.kh - 1) * p.dil_h + 1;
  if (w8 > 256 || rows > 256 || a->p > 256) return false;
  const long long gpr = (a->wo + 7) / 8;
  const long long groups = (long long)a->n * a->ho * gpr;
  if (groups * 8 + kFastBM >= (1LL << 31)) return false;
  const long long gp = (16 * w8 * a->p * rows + 127) / 128 * 128;  // box bytes, 128-aligned
  if (16 * gp > (1 << 20)) return false;
  a->wg = 2;
  a->ss_gpr = (int)gpr;
  a->div_gpr = make_fastdiv((uint32_t)gpr);
  a->ss_groups = (int)groups;
  a->ss_w8 = (int)w8;
  a->ss_rows = (int)rows;
  a->ss_gp = (int)gp;
  a->ss_gt = 16;
  a->mtiles = (int)((groups + 15) / 16);
  return true;
}

// plan_fast_geometry, and whether this call can run it: x and w are the
// operand pointers (packed x: 16-byte chunks must be aligned; float x is
// packed into 256-byte aligned scratch), and the shared memory must fit the
// current device. False: the general kernels run.
bool plan_fast(const ConvParams& p, const void* x, const void* w, FastArgs* fa, int* smem) {
  if (reinterpret_cast<uintptr_t>(w) % 16 != 0) return false;
  if (p.x_packed && reinterpret_cast<uintptr_t>(x) % 16 != 0) return false;
  FastArgs a;
  if (!plan_fast_geometry(p, &a)) return false;
  DevInfo di;
  if (dev_info(&di) != cudaSuccess) return false;
  // The wgmma kernel, where turned on and its shared memory fits too: A
  // from shared memory where that runs (not in mode kWgmmaRs), else from
  // registers.
  const int wmode = g_wgmma.load(std::memory_order_relaxed);
  const bool few_ss = wmode == kWgmmaAuto && wgmma_few_tiles_ss(p, a, di);
  if (!a.half && wgmma_device(di) && wmode != kWgmmaOff &&
      (wmode == kWgmmaOn || wmode == kWgmmaRs || few_ss || wgmma_pays(p, a, di))) {
    FastArgs g = a;
    plan_wgmma(&g);
    FastArgs s = g;
    if (wmode != kWgmmaRs && plan_wgmma_ss(p, &s) &&
        (wmode != kWgmmaAuto || few_ss || wgmma_ss_pays(p, s))) {
      // Half tiles (FastArgs::ss_gt = 8), float output or packed output by
      // thresholds (see wg_skip_half), where twice the tiles still fit the
      // SMs: each block's K loop and epilogue run 64 rows, on twice as many
      // SMs (N = 1: L3 4 -> 8 blocks, L7 50 -> 98).
      const long long half = (s.ss_groups + 7) / 8;
      if ((!p.out_packed || s.thr) && half_tiles_on() && half > s.mtiles &&
          (half * s.ntiles <= di.sms || g_wg_half_always.load(std::memory_order_relaxed))) {
        s.ss_gt = 8;
        s.mtiles = (int)half;
      }
      const FastSmem Ls = fast_smem(s);
      if (Ls.total <= di.optin) {
        *fa = s;
        *smem = Ls.total;
        return true;
      }
    }
    const FastSmem Lg = fast_smem(g);
    if (!few_ss && Lg.total <= di.optin) {
      *fa = g;
      *smem = Lg.total;
      return true;
    }
  }
  const FastSmem L = fast_smem(a);
  if (L.total > di.optin) return false;
  *fa = a;
  *smem = L.total;
  return true;
}

// cuTensorMapEncodeTiled, looked up once (null where the driver lacks it).
PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  return encode;
}

// A 5-d map of 8-byte elements at ptr (16-byte aligned), dense boxes, zeros
// outside the tensor; false where the driver has no encoder or refuses.
bool encode_map_5d(CUtensorMap* map, const void* ptr, const cuuint64_t (&dims)[5],
                   const cuuint64_t (&strides)[4], const cuuint32_t (&box)[5],
                   CUtensorMapL2promotion promotion,
                   CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = tensor_map_encoder();
  if (encode == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 != 0) return false;
  const cuuint32_t estride[5] = {1, 1, 1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT64, 5, const_cast<void*>(ptr), dims, strides, box,
                estride, CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, promotion,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The 5-d tensor map of packed x for the slot copies (sm_90): dimensions,
// innermost first, 2 x 8 bytes (one 16-byte chunk), W, p chunks, H, N (the
// pixel before the chunk: a box lands chunk-planar); a box is a whole slot
// row, wslot pixels x p chunks of one input row; for the wgmma kernel with
// A from shared memory (a.wg == 2) one group's input, ss_w8 pixels x p chunks x
// ss_rows input rows ([row][chunk plane][pixel][16 bytes], FastArgs' ss_ fields).
// False where the driver has no cuTensorMapEncodeTiled or refuses these
// dimensions: the kernel then copies with cp.async (wg 2: no fallback).
bool make_x_tensor_map(const FastArgs& a, const void* x, CUtensorMap* map) {
  const cuuint32_t box_w = a.wg == 2 ? a.ss_w8 : a.wslot,
                  box_rows = a.wg == 2 ? a.ss_rows : 1;
  if (box_w > 256 || a.p > 256) return false;
  const cuuint64_t p = (cuuint64_t)a.p, w = (cuuint64_t)a.w, h = (cuuint64_t)a.h;
  const cuuint64_t dims[5] = {2, w, p, h, (cuuint64_t)a.n};
  const cuuint64_t strides[4] = {16 * p, 16, 16 * p * w, 16 * p * w * h};
  const cuuint32_t box[5] = {2, box_w, (cuuint32_t)a.p, box_rows, 1};
  return encode_map_5d(map, x, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_128B);
}

// The 5-d tensor map of the weights ([O][kc] 16-byte chunks) that copies a
// block's 128 channel rows in one box, in fast_chan_of_col order: channel
// 32 s + 8 tq + 2 nf + jj of slab s goes to shared row 32 s + 8 nf + 2 tq +
// jj. Dimensions, innermost first: 2 x 8 bytes per chunk, kc chunks (the
// box reads pitch_b: zeros past kc, the padding chunk included), jj (2), tq
// (4), nf (4), slabs (O / 32). Only for O a multiple of 32 (a partial slab
// would read rows past the tensor) and pitch_b <= 128 (the box's 256
// elements); otherwise, or where the driver refuses, the rows are copied one
// by one. float_order: the float epilogue's order (fast_chan_of_col_float).
bool make_w_tensor_map(const FastArgs& a, const void* w, bool float_order, CUtensorMap* map) {
  if (a.o % 32 != 0 || a.pitch_b > 128) return false;
  const cuuint64_t row = 16 * (cuuint64_t)a.kc;  // bytes per channel row
  if (float_order) {
    // fast_chan_of_col_float: channel 16 nh + 4 tq + 2 nl + jj of shared
    // row jj + 2 tq + 8 nl + 16 nh (nh and the slab merge into one dimension
    // of O / 16 half-slabs, stride 16 rows; the box reads the block's 8).
    const cuuint64_t dims[5] = {2 * (cuuint64_t)a.kc, 2, 4, 2, (cuuint64_t)a.o / 16};
    const cuuint64_t strides[4] = {row, 4 * row, 2 * row, 16 * row};
    const cuuint32_t box[5] = {2 * (cuuint32_t)a.pitch_b, 2, 4, 2, kFastBN / 16};
    return encode_map_5d(map, w, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
  }
  const cuuint64_t dims[5] = {2 * (cuuint64_t)a.kc, 2, 4, 4, (cuuint64_t)a.o / 32};
  const cuuint64_t strides[4] = {row, 8 * row, 2 * row, 32 * row};
  const cuuint32_t box[5] = {2 * (cuuint32_t)a.pitch_b, 2, 4, 4, kFastBN / 32};
  return encode_map_5d(map, w, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B);
}

// The wgmma kernel's weight map (O a multiple of 128): a box is K block kb
// (8 chunks = 16 x 8 bytes from element 16 kb; zeros past kc) of a block's
// 128 channel rows in wg_chan_of_col order, with the 128-byte swizzle
// (wg_b_offset). Shared row f = 16 g + 8 h + 2 tq + jj holds channel n0 +
// jj + S tq + 2 h + G g (S, G = 32, 4; EPI_FLOAT 4, 16). Dimensions,
// innermost first: 2 kc elements of 8 bytes, jj (2, a channel apart), tq
// (4, S channels), h (2, 2 channels), g (O / G, G channels: the block's
// first is n0 / G).
bool make_w_tensor_map_wg(const FastArgs& a, const void* w, bool float_order, CUtensorMap* map) {
  if (a.o % kFastBN != 0) return false;
  const cuuint64_t row = 16 * (cuuint64_t)a.kc;
  const cuuint64_t sq = float_order ? 4 : 32, g = float_order ? 16 : 4;
  const cuuint64_t dims[5] = {2 * (cuuint64_t)a.kc, 2, 4, 2, (cuuint64_t)a.o / g};
  const cuuint64_t strides[4] = {row, sq * row, 2 * row, g * row};
  const cuuint32_t box[5] = {16, 2, 4, 2, 8};
  return encode_map_5d(map, w, dims, strides, box, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                       CU_TENSOR_MAP_SWIZZLE_128B);
}

// Programmatic dependent launch (sm_90) of the fast kernels; where a launch
// is refused with it, once, never again in this process.
std::atomic<bool> g_pdl_ok{true};
template <typename... KArgs, typename... Args>
cudaError_t launch_pdl(cudaLaunchConfig_t cfg, void (*kernel)(KArgs...), Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  if (g_pdl.load(std::memory_order_relaxed) && g_pdl_ok.load(std::memory_order_relaxed)) {
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaLaunchKernelEx(&cfg, kernel, args...) == cudaSuccess) return cudaSuccess;
    cudaGetLastError();  // clear it, and launch without
    g_pdl_ok.store(false, std::memory_order_relaxed);
  }
  cfg.attrs = nullptr;
  cfg.numAttrs = 0;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

// fast_tables_kernel without x packing, where the wgmma kernel follows
// with more tiles than SMs: 32 channels (warps) a block, so that fewer SMs
// are held while the convolution's blocks start (those start late: see
// FastArgs::wg_dlate). Else 8 a block: that kernel then ends ~1 us sooner
// (S14-7, L2-L4: 4.1-4.3 against 5.3 us), which counts where a block has
// one tile and its epilogue waits for the table (N = 1).
bool fast_tables_wide(const FastArgs& a) {
  DevInfo di;
  return a.wg && dev_info(&di) == cudaSuccess && (long long)a.mtiles * a.ntiles > di.sms;
}
int fast_tables_blocks(const FastArgs& a, bool wide) { return wide ? (a.opad + 31) / 32 : a.opad / 8; }

// The tables, after pa.xblocks blocks of x packing (0: none; prep_x's blocks
// are kThreads wide, and so the tables' 8 channels a block then).
cudaError_t launch_fast_tables(const PrepArgs& pa, const FastArgs& a, cudaStream_t stream) {
  cudaLaunchConfig_t cfg{};
  const bool wide = !pa.xblocks && fast_tables_wide(a);
  cfg.gridDim = dim3((unsigned)(pa.xblocks + fast_tables_blocks(a, wide)));
  cfg.blockDim = dim3(wide ? 1024 : kThreads);
  cfg.stream = stream;
  return a.half ? launch_pdl(cfg, fast_tables_kernel<true>, pa, a)
                : launch_pdl(cfg, fast_tables_kernel<false>, pa, a);
}

template <int EPI, bool HALF, int WG>
cudaError_t launch_fast_epi(const FastArgs& a, const CUtensorMap& map, const CUtensorMap& wmap,
                            int smem, cudaStream_t stream) {
  static std::atomic<uint64_t> attr_set{0};
  DevInfo di;
  int dev = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = dev_info(&di);
  if (err != cudaSuccess) return err;
  const uint64_t bit = uint64_t(1) << (dev & 63);
  if (!(attr_set.load(std::memory_order_relaxed) & bit)) {
    err = cudaFuncSetAttribute(fast_conv_kernel<EPI, HALF, WG>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               di.optin);
    if (err != cudaSuccess) return err;
    attr_set.fetch_or(bit, std::memory_order_relaxed);
  }
  // Blocks per SM: registers allow 2 (__launch_bounds__; the wgmma kernel:
  // 1), shared memory as computed here (what
  // cudaOccupancyMaxActiveBlocksPerMultiprocessor gives, without its cost
  // on every call).
  const int per_sm = std::max(1, std::min(WG ? 1 : 2, di.smem_sm / (smem + di.reserved)));
  const int sms = di.sms;
  const long long items = (long long)a.mtiles * a.ntiles;
  const long long cap = (long long)sms * std::max(per_sm, 1);
  long long grid = items <= cap ? items : std::max<long long>(cap / a.ntiles, 1) * a.ntiles;
  // The wgmma kernel's tile order (wg_tile). fast_tables_kernel's blocks,
  // launched just before with PDL, hold that many SMs while they run (a
  // block per SM; 3.4-4.6 us in S14-3's timelines): the convolution's
  // blocks of the highest indices start that much later. The first dlate
  // rounds of tiles then go to the others: dlate minimizes the estimated
  // end, the most tiles of an early block times a tile's time per block
  // against the delay plus a late block's most tiles times it (S14-3: ~1.9
  // us at 5-9 K steps, ~3.2 us at 18; a 4 us delay). Only where the blocks
  // loop over tiles and the x slots need no wait for the tables kernel
  // (x_late: every block waits for it).
  FastArgs b = a;
  b.wg_early = b.wg_dlate = 0;
  const bool tables_pdl = !BINCONV_SW(a, 1) && g_pdl.load(std::memory_order_relaxed) &&
                          g_pdl_ok.load(std::memory_order_relaxed);
  if (WG && items > cap && tables_pdl && !a.x_late) {
    // (the tables kernel's blocks as launch_fast_tables launches them: here,
    // with more tiles than SMs, its wide form)
    const long long late = std::min<long long>(fast_tables_blocks(a, fast_tables_wide(a)), grid);
    const int mstep = (int)(grid / a.ntiles);
    const int early = (int)((grid - late) / a.ntiles);
    auto tiles = [&](int d, int p) { return wg_tile_count(a.mtiles, mstep, early, d, p); };
    const int forced = g_dbg_dlate.load(std::memory_order_relaxed);
    int dlate = forced;
    if (forced < 0) {
      const double t_tile = 1.2 + 0.11 * a.ks, t_late = 4.0;  // us
      double best = 1e30;
      for (int d = 0; d <= 4 && (long long)d * early <= a.mtiles; ++d) {
        const double end = std::max(tiles(d, 0) * t_tile, t_late + tiles(d, early) * t_tile);
        if (end < best - 1e-9) {
          best = end;
          dlate = d;
        }
      }
    }
    while (dlate > 0 && (long long)dlate * early > a.mtiles) --dlate;
    if (early >= 1 && early < mstep && dlate > 0) {
      b.wg_early = early;
      b.wg_dlate = dlate;
    }
  }
  if (WG) g_last_dlate.store(b.wg_dlate, std::memory_order_relaxed);
  // The shared-memory form with one tile a block: warpgroup 1 takes the
  // epilogue of its channels 64-127 (FastArgs::wg_split; float output only),
  // where there are at most a quarter as many tiles as SMs (S23-9, same
  // process, split / not: N = 4 L3, 14 tiles, 1.08-1.15x; L4 N = 1, 4
  // tiles, 1.02x; L7 N = 1, 50 tiles, 0.97-1.07x; L4 N = 64, 112 tiles,
  // 0.96-0.98x). The handover needs 3 K blocks of weights' shared memory
  // (36864 bytes), so C = 128 at 3x3 (2 K blocks) does not split.
  b.wg_split = WG == 2 && EPI == EPI_FLOAT && items * 4 <= sms && a.wg_kblocks >= 3 &&
               g_wg_split.load(std::memory_order_relaxed);
  if (WG) g_last_wg_split.store(b.wg_split, std::memory_order_relaxed);
  b.wg_skip_half = WG == 2 && g_wg_skip_half.load(std::memory_order_relaxed);
  if (WG) g_last_half_tiles.store(WG == 2 && a.ss_gt == 8, std::memory_order_relaxed);
  // Programmatic dependent launch on fast_tables_kernel (see pdl_wait).
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3((unsigned)grid);
  cfg.blockDim = dim3(kFastThreads);
  cfg.dynamicSmemBytes = (size_t)smem;
  cfg.stream = stream;
  return launch_pdl(cfg, fast_conv_kernel<EPI, HALF, WG>, b, map, wmap);
}

cudaError_t launch_fast(FastArgs a, int epi, int smem, cudaStream_t stream) {
  CUtensorMap map{}, wmap{};
  DevInfo di;
  const bool sm90 = dev_info(&di) == cudaSuccess && di.major >= 9;
  // C = 64: both by cp.async (a slot unit is two 8-byte pixels, a weight
  // chunk two 8-byte taps: no tensor-map box has those layouts).
  if (a.wg == 2) {
    // (plan_wgmma_ss found an encoder; this map has no cp.async fallback)
    a.tma_x = make_x_tensor_map(a, a.x, &map);
    if (!a.tma_x) return cudaErrorNotSupported;
  } else {
    a.tma_x = !a.half && sm90 && g_tma_slots.load() && make_x_tensor_map(a, a.x, &map);
  }
  g_last_tma.store(a.tma_x, std::memory_order_relaxed);
  const int want = g_wcopy.load(std::memory_order_relaxed);
  if (a.wg) {
    // Swizzled K blocks (wg_b_offset): a tensor-map box per K block (O a
    // multiple of 128), else cp.async (a row is not contiguous: no bulk mode).
    a.wcopy = want == kWeightsTensorMap && make_w_tensor_map_wg(a, a.wt, epi == EPI_FLOAT, &wmap)
                  ? kWeightsTensorMap
                  : kWeightsCpAsync;
  } else {
    a.wcopy = a.half || !sm90 || want == kWeightsCpAsync ? kWeightsCpAsync
              : want == kWeightsTensorMap && make_w_tensor_map(a, a.wt, epi == EPI_FLOAT, &wmap)
                  ? kWeightsTensorMap
                  : kWeightsBulk;
  }
  g_last_wcopy.store(a.wcopy, std::memory_order_relaxed);
  g_last_wgmma.store(a.wg, std::memory_order_relaxed);
  auto launch = [&](auto half, auto wg) {
    constexpr bool HALF = decltype(half)::value;
    constexpr int WG = decltype(wg)::value;
    if (epi == EPI_THR) return launch_fast_epi<EPI_THR, HALF, WG>(a, map, wmap, smem, stream);
    if (epi == EPI_PACKED) return launch_fast_epi<EPI_PACKED, HALF, WG>(a, map, wmap, smem, stream);
    return launch_fast_epi<EPI_FLOAT, HALF, WG>(a, map, wmap, smem, stream);
  };
  using I0 = std::integral_constant<int, 0>;
  if (a.half) return launch(std::true_type{}, I0{});
  if (a.wg == 2 && wgmma_built()) return launch(std::false_type{}, std::integral_constant<int, 2>{});
  if (a.wg && wgmma_built()) return launch(std::false_type{}, std::integral_constant<int, 1>{});
  return launch(std::false_type{}, I0{});
}

void set_kernel_policy(int policy) { g_policy.store(policy, std::memory_order_relaxed); }
int kernel_policy() { return g_policy.load(std::memory_order_relaxed); }
int last_kernel_path() { return g_last_path.load(std::memory_order_relaxed); }
void set_tma_slots(bool on) { g_tma_slots.store(on, std::memory_order_relaxed); }
void set_fast_pdl(bool on) { g_pdl.store(on, std::memory_order_relaxed); }
bool fast_pdl() { return g_pdl.load(std::memory_order_relaxed); }
void set_fast_weight_copy(int mode) { g_wcopy.store(mode, std::memory_order_relaxed); }
int fast_weight_copy() { return g_wcopy.load(std::memory_order_relaxed); }
int last_weight_copy() { return g_last_wcopy.load(std::memory_order_relaxed); }
void set_fast_fused_prep(bool on) { g_fused_prep.store(on, std::memory_order_relaxed); }
bool fast_fused_prep() { return g_fused_prep.load(std::memory_order_relaxed); }
void set_fast_fused_tables_first(bool on) {
  g_fused_tables_first.store(on, std::memory_order_relaxed);
}
bool fast_fused_tables_first() { return g_fused_tables_first.load(std::memory_order_relaxed); }
bool tma_slots() { return g_tma_slots.load(std::memory_order_relaxed); }
int last_tma_slots() { return g_last_tma.load(std::memory_order_relaxed); }
void set_fast_wgmma(int mode) { g_wgmma.store(mode, std::memory_order_relaxed); }
int fast_wgmma() { return g_wgmma.load(std::memory_order_relaxed); }
int last_wgmma() { return g_last_wgmma.load(std::memory_order_relaxed); }
void set_fast_wg_split(bool on) { g_wg_split.store(on, std::memory_order_relaxed); }
bool fast_wg_split() { return g_wg_split.load(std::memory_order_relaxed); }
int last_wg_split() { return g_last_wg_split.load(std::memory_order_relaxed); }
void set_fast_wg_skip_half(bool on) { g_wg_skip_half.store(on, std::memory_order_relaxed); }
bool fast_wg_skip_half() { return g_wg_skip_half.load(std::memory_order_relaxed); }
void set_fast_wg_half_tiles(bool on) { g_wg_half_tiles.store(on, std::memory_order_relaxed); }
bool fast_wg_half_tiles() { return g_wg_half_tiles.load(std::memory_order_relaxed); }
void set_fast_wg_half_tiles_always(bool on) {
  g_wg_half_always.store(on, std::memory_order_relaxed);
}
bool fast_wg_half_tiles_always() { return g_wg_half_always.load(std::memory_order_relaxed); }
int last_wg_half_tiles() { return g_last_half_tiles.load(std::memory_order_relaxed); }
void set_debug_weight_delay(int us) { g_dbg_wdelay_us.store(us, std::memory_order_relaxed); }
int debug_weight_delay() { return g_dbg_wdelay_us.load(std::memory_order_relaxed); }
void set_debug_tile_rounds(int rounds) { g_dbg_dlate.store(rounds, std::memory_order_relaxed); }
int debug_tile_rounds() { return g_dbg_dlate.load(std::memory_order_relaxed); }
int last_tile_rounds() { return g_last_dlate.load(std::memory_order_relaxed); }
cudaError_t timeline_read(std::vector<unsigned char>* bytes, int* record_bytes) {
#ifdef JAX_BINCONV_TIMELINE
  cudaError_t err = cudaDeviceSynchronize();
  unsigned n = 0;
  if (err == cudaSuccess) err = cudaMemcpyFromSymbol(&n, g_tl_n, sizeof n);
  n = std::min(n, kTlMax);
  bytes->resize((size_t)n * sizeof(TlRec));
  if (err == cudaSuccess && n) err = cudaMemcpyFromSymbol(bytes->data(), g_tl, bytes->size());
  const unsigned zero = 0;
  if (err == cudaSuccess) err = cudaMemcpyToSymbol(g_tl_n, &zero, sizeof zero);
  *record_bytes = (int)sizeof(TlRec);
  return err;
#else
  (void)bytes;
  *record_bytes = 0;
  return cudaErrorNotSupported;
#endif
}
bool wgmma_available() {
  DevInfo di;
  return dev_info(&di) == cudaSuccess && wgmma_device(di);
}

size_t scratch_bytes(const ConvParams& p, const ConvBuffers& b, bool* fast) {
  FastArgs fa;
  int smem = 0;
  *fast = g_policy.load(std::memory_order_relaxed) != KERNEL_GENERAL &&
          plan_fast(p, b.x, b.w, &fa, &smem);
  return make_plan(p, *fast ? &fa : nullptr).total;
}

bool fast_slot_plan(const ConvParams& p, FastSlotPlan* out) {
  FastArgs a;
  if (!plan_fast_geometry(p, &a)) return false;
  *out = FastSlotPlan{a.rmax, a.srows, a.erow, a.wslot, a.mtiles, a.dyback, a.dymask};
  return true;
}

size_t workspace_bytes(const ConvParams& p) {
  // Either kernel may run (the policy, the operands' alignment and the
  // device decide per call): room for the larger plan.
  size_t bytes = make_plan(p, nullptr).total;
  FastArgs fa;
  if (plan_fast_geometry(p, &fa)) bytes = std::max(bytes, make_plan(p, &fa).total);
  return bytes + kWorkspaceAlign;
}

cudaError_t launch_conv(const ConvParams& p, const ConvBuffers& b, void* scratch, bool fast_in,
                        cudaStream_t stream) {
  FastArgs fa;
  int fsmem = 0;
  // Same inputs as in scratch_bytes, so the same answer (the policy is not
  // read twice: another thread may change it in between).
  const bool fast = fast_in && plan_fast(p, b.x, b.w, &fa, &fsmem);
  const Plan pl = make_plan(p, fast ? &fa : nullptr);
  const long long ho = p.ho(), wo = p.wo();
  if (pl.m == 0 || p.o == 0) return cudaSuccess;
  cudaError_t err = cudaGetLastError();  // do not report an unrelated earlier error as ours
  (void)err;

  int* popc = at<int>(scratch, pl.off_popc);
  float* aimg = at<float>(scratch, pl.off_a);
  int* pre = at<int>(scratch, pl.off_pre);
  EpiArgs e{};
  e.popc = popc;
  e.aimg = aimg;
  e.pre = pre;
  e.osc = b.output_scale;
  e.obias = b.output_bias;
  e.out = b.out;
  e.m = pl.m;
  e.h = (int)p.h;
  e.w = (int)p.w;
  e.c = (int)p.c;
  e.o = (int)p.o;
  e.g = pl.g;
  e.cg = pl.cg;
  e.og = pl.og;
  e.kh = (int)p.kh;
  e.kw = (int)p.kw;
  e.sh = (int)p.stride_h;
  e.sw = (int)p.stride_w;
  e.dh = (int)p.dil_h;
  e.dw = (int)p.dil_w;
  e.pt = (int)p.pad_top;
  e.pl = (int)p.pad_left;
  e.ho = (int)ho;
  e.wo = (int)wo;
  e.t = pl.t;
  e.type = p.type;
  e.pv = (int)p.pad_value;
  e.pvf = p.pad_value;
  e.beta = p.beta_scaling ? 1 : 0;
  e.x_packed = p.x_packed ? 1 : 0;
  e.act = p.activation;
  e.slope = p.negative_slope;
  e.out_packed = p.out_packed ? 1 : 0;
  e.out_atomic = (p.out_packed && pl.g > 1 && pl.og % 32 != 0) ? 1 : 0;
  e.out_vec2 = (p.o % 2 == 0 && pl.og % 2 == 0) ? 1 : 0;
  e.out_vec4 = (p.o % 4 == 0 && pl.og % 4 == 0) ? 1 : 0;
  // XNOR: coefficient 2 + 2pv (zero for pv = -1); AND: pv.
  e.pad_corr = (p.type == XNOR) ? (e.pv != -1) : (p.type == AND ? (e.pv != 0) : 0);

  if (e.out_atomic) {
    const size_t bytes = sizeof(uint32_t) * pl.m * p.out_words();
    err = cudaMemsetAsync(b.out, 0, bytes, stream);
    if (err != cudaSuccess) return err;
  }

  // ---- prep
  PrepArgs pa{};
  pa.nhw = pl.nhw;
  pa.c = (int)p.c;
  pa.g = pl.g;
  pa.cg = pl.cg;
  pa.wg = pl.wg;
  pa.w = b.w;
  pa.ws = at<uint32_t>(scratch, pl.off_ws);
  pa.pre = pre;
  pa.o = (int)p.o;
  pa.og = pl.og;
  pa.ogpad = pl.ogpad;
  pa.t = pl.t;
  pa.k = pl.k;
  pa.kpad = pl.kpad;
  pa.kh = (int)p.kh;
  pa.kw = (int)p.kw;
  pa.wblocks = pl.binary && !fast ? (int)((pl.g * (long long)pl.ogpad + 7) / 8) : 0;
  pa.thr = at<int2>(scratch, pl.off_thr);
  pa.osc = b.output_scale;
  pa.obias = b.output_bias;
  pa.act = p.activation;
  pa.slope = p.negative_slope;
  pa.amax = pl.t * pl.cg;
  pa.amin = p.type == XNOR ? -pa.amax : 0;
  e.thr = pa.thr;
  const int warps_per_block = kThreads / 32;
  if (!p.x_packed && (pl.binary || p.beta_scaling)) {
    const bool vec_ok = p.c % 4 == 0 && (pl.g == 1 || pl.cg % 32 == 0) &&
                        reinterpret_cast<uintptr_t>(b.x) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(b.input_bias) % 16 == 0 &&
                        reinterpret_cast<uintptr_t>(b.input_scale) % 16 == 0;
    pa.mode_x = vec_ok ? 3 : 1;
    pa.x = static_cast<const float*>(b.x);
    pa.ib = b.input_bias;
    pa.is = b.input_scale;
    pa.xp = at<uint32_t>(scratch, pl.off_xp);
    pa.popc = popc;
    pa.aimg = aimg;
    const int nq = (int)(p.c / 4);
    pa.ppw = pa.mode_x == 3 && p.c % 32 == 0 && 32 % nq == 0 ? 64 / nq : 1;
    const long long warps = (pl.nhw + pa.ppw - 1) / pa.ppw;
    pa.xblocks = (int)((warps + warps_per_block - 1) / warps_per_block);
  } else if (p.x_packed && p.type == XNOR && !fast) {
    pa.mode_x = 2;
    pa.xpk = static_cast<const uint32_t*>(b.x);
    pa.popc = popc;
    pa.xblocks = (int)((pl.nhw * pl.g + kThreads - 1) / kThreads);
  }
  // The fast kernel with float x: the packing and the tables in one kernel
  // (fast_tables_kernel, launched below) where its grid is at most
  // kFusedPrepMaxBlocks blocks. It lets the convolution start at once (its
  // blocks then wait in pdl_wait, holding SMs): measured faster up to L3 at
  // N = 256 (6304 blocks, 1.05x) and slower for L7 at N = 256 (100k blocks,
  // 0.94x), where the two kernels in turn run instead.
  constexpr long long kFusedPrepMaxBlocks = 8192;
  // (Counted as one pixel per warp, the packing of the measurements.)
  const bool fused_prep = fast && pa.mode_x != 0 && pa.wblocks == 0 &&
                          g_fused_prep.load(std::memory_order_relaxed) &&
                          (pl.nhw + warps_per_block - 1) / warps_per_block + fa.opad / 8 <=
                              kFusedPrepMaxBlocks;
  const long long prep_blocks = (long long)pa.wblocks + (pa.mode_x ? pa.xblocks : 0);
  if (prep_blocks > 0 && !fused_prep) {
    const size_t smem = sizeof(int) * warps_per_block * pl.t;
    if (smem > 48 * 1024) {
      err = cudaFuncSetAttribute(prep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem);
      if (err != cudaSuccess) return err;
    }
    prep_kernel<<<(unsigned)prep_blocks, kThreads, smem, stream>>>(pa);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }

  // ---- main kernel
  if (fast) {
    g_last_path.store(KERNEL_PATH_FAST, std::memory_order_relaxed);
    fa.x = reinterpret_cast<const uint4*>(p.x_packed ? b.x : at<uint32_t>(scratch, pl.off_xp));
    fa.wt = reinterpret_cast<const uint4*>(b.w);
    fa.aimg = aimg;
    fa.osc = b.output_scale;
    fa.obias = b.output_bias;
    fa.out = b.out;
    fa.tab = at<int>(scratch, pl.off_ftab);
    fa.x_late = fused_prep ? 1 : 0;
    fa.dbg_wdelay_us = g_dbg_wdelay_us.load(std::memory_order_relaxed);
#ifdef JAX_BINCONV_SWITCHES
    if (const char* sw = std::getenv("JAX_BINCONV_SW")) fa.dbg_sw = std::atoi(sw);
#endif
    if (fused_prep) pa.tfirst = g_fused_tables_first.load(std::memory_order_relaxed) ? 1 : 0;
    if (!BINCONV_SW(fa, 1)) {
      err = launch_fast_tables(fused_prep ? pa : PrepArgs{}, fa, stream);
      if (err != cudaSuccess) return err;
    }
    return launch_fast(fa, fa.thr ? EPI_THR : (p.out_packed ? EPI_PACKED : EPI_FLOAT), fsmem,
                       stream);
  }
  g_last_path.store(pl.binary ? KERNEL_PATH_GENERAL : KERNEL_PATH_BINARY_WEIGHTS,
                    std::memory_order_relaxed);
  if (!pl.binary) {
    BwArgs ba{};
    ba.e = e;
    ba.x = static_cast<const float*>(b.x);
    ba.ib = b.input_bias;
    ba.is = b.input_scale;
    ba.w = b.w;
    ba.wg = pl.wg;
    dim3 grid((unsigned)((pl.m + kBwBM - 1) / kBwBM), (unsigned)((pl.og + kBwBN - 1) / kBwBN),
              (unsigned)pl.g);
    bw_kernel<<<grid, kThreads, 0, stream>>>(ba);
    return cudaGetLastError();
  }

  GemmArgs ga{};
  ga.e = e;
  ga.xp = p.x_packed ? static_cast<const uint32_t*>(b.x) : at<uint32_t>(scratch, pl.off_xp);
  ga.ws = pa.ws;
  ga.wg = pl.wg;
  ga.ps = pl.g * pl.wg;
  ga.k = pl.k;
  ga.kpad = pl.kpad;
  ga.ogpad = pl.ogpad;
  ga.dt = kBK / pl.wg;
  ga.dj = kBK % pl.wg;
  ga.dt_y = ga.dt / (int)p.kw;
  ga.dt_x = ga.dt % (int)p.kw;
  int vec = pl.vec;
  if (reinterpret_cast<uintptr_t>(ga.xp) % (4 * vec) != 0) vec = 1;
  if (pl.bn == 64) {
    if (vec == 4) return launch_gemm<64, 4>(ga, pl, stream);
    if (vec == 2) return launch_gemm<64, 2>(ga, pl, stream);
    return launch_gemm<64, 1>(ga, pl, stream);
  }
  if (vec == 4) return launch_gemm<128, 4>(ga, pl, stream);
  if (vec == 2) return launch_gemm<128, 2>(ga, pl, stream);
  return launch_gemm<128, 1>(ga, pl, stream);
}

}  // namespace cuda
}  // namespace binconv
