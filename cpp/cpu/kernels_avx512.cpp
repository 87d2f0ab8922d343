// AVX-512 kernels (F + BW + DQ + VPOPCNTDQ), built with their own -m flags and
// run only when the CPU and the OS support them (see handler.cpp).
//
// Binary tile: 12 output pixels x 32 output channels in 32-bit lanes. The 32
// channels' weight dwords for one (tap, dword) sit in 2 zmm registers; each
// pixel's input dword is broadcast once and XOR/AND-ed against both, then
// VPOPCNTD and a 32-bit add into one of 24 register accumulators. Per input
// dword that is 3 vector ops for 512 binary MACs, with 14 loads per 72 ops.
// The counts come out as 32-bit lanes in output order, ready for the fused
// epilogue; the 12-pixel tile has half the tiles (epilogue drains, set-up)
// of the 6 x 32 tile in 64-bit lanes it replaced.
#if defined(__x86_64__)  // a universal (multi-arch) build compiles every file per slice
#include <immintrin.h>

#define BINCONV_ISA_NS isa_avx512
#include "conv_driver.h"

namespace binconv {
namespace cpu {
namespace {

struct Avx512Traits {
  static constexpr int kP = 12;
  static constexpr int kObw = 32;
  static constexpr bool kDwordLanes = true;
  static constexpr int kPf = 6;
  static constexpr int kObwf = 32;

  static uint64_t popcount64(uint64_t v) { return static_cast<uint64_t>(__builtin_popcountll(v)); }

  static uint32_t sign_bits32(const float* v) {
    const __m512 zero = _mm512_setzero_ps();
    const __mmask16 lo = _mm512_cmp_ps_mask(_mm512_loadu_ps(v), zero, _CMP_NLT_UQ);
    const __mmask16 hi = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + 16), zero, _CMP_NLT_UQ);
    return _cvtmask32_u32(_mm512_kunpackw(hi, lo));
  }

  // One block row (32 floats) to the output; streaming when asked and aligned.
  static void store_row(float* dst, const float* src, bool stream) {
    const __m512 a = _mm512_load_ps(src), b = _mm512_load_ps(src + 16);
    if (stream && (reinterpret_cast<uintptr_t>(dst) & 63) == 0) {
      _mm512_stream_ps(dst, a);
      _mm512_stream_ps(dst + 16, b);
    } else {
      _mm512_storeu_ps(dst, a);
      _mm512_storeu_ps(dst + 16, b);
    }
  }
  static void store_fence() { _mm_sfence(); }

  // One 64-channel word: x' = (x + ib) * is (x itself when IDENT) in v, and
  // its sign bits ("not less than 0", unordered true: bin() gives +1 for 0,
  // -0.0 and NaN) as the result.
  template <bool IDENT>
  static inline __attribute__((always_inline)) uint64_t sign_word(const float* xw,
                                                                  const float* bw,
                                                                  const float* sw,
                                                                  __m512 (&v)[4]) {
    const __m512 zero = _mm512_setzero_ps();
    for (int h = 0; h < 4; ++h) {
      v[h] = _mm512_loadu_ps(xw + 16 * h);
      if (!IDENT)
        v[h] = _mm512_mul_ps(_mm512_add_ps(v[h], _mm512_loadu_ps(bw + 16 * h)),
                             _mm512_loadu_ps(sw + 16 * h));
    }
    const __mmask16 m0 = _mm512_cmp_ps_mask(v[0], zero, _CMP_NLT_UQ);
    const __mmask16 m1 = _mm512_cmp_ps_mask(v[1], zero, _CMP_NLT_UQ);
    const __mmask16 m2 = _mm512_cmp_ps_mask(v[2], zero, _CMP_NLT_UQ);
    const __mmask16 m3 = _mm512_cmp_ps_mask(v[3], zero, _CMP_NLT_UQ);
    return _cvtmask64_u64(_mm512_kunpackd(_mm512_kunpackw(m3, m2), _mm512_kunpackw(m1, m0)));
  }

  template <bool IDENT>
  static void pack_float_bits(const float* x, const float* ib, const float* is, int64_t C,
                              uint64_t* bits, float* abs_sum) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    __m512 s = zero;
    const int64_t nw = (C + 63) / 64;
    const int64_t full = C / 64;
    // Whole words: four unmasked 16-channel compares joined into one 64-bit mask.
    for (int64_t w = 0; w < full; ++w) {
      __m512 v[4];
      bits[w] = sign_word<IDENT>(x + 64 * w, IDENT ? nullptr : ib + 64 * w,
                                 IDENT ? nullptr : is + 64 * w, v);
      if (abs_sum)
        for (int h = 0; h < 4; ++h) s = _mm512_add_ps(s, _mm512_and_ps(v[h], absmask));
    }
    for (int64_t w = full; w < nw; ++w) {
      uint64_t v = 0;
      for (int h = 0; h < 4; ++h) {
        const int64_t c = 64 * w + 16 * h;
        if (c >= C) break;
        const int64_t rem = C - c;
        const __mmask16 m = rem >= 16 ? __mmask16(0xffff) : __mmask16((1u << rem) - 1);
        __m512 xv = _mm512_maskz_loadu_ps(m, x + c);
        if (!IDENT)
          xv = _mm512_mul_ps(_mm512_add_ps(xv, _mm512_maskz_loadu_ps(m, ib + c)),
                             _mm512_maskz_loadu_ps(m, is + c));
        // "not less than 0", unordered true: bin() gives +1 for 0, -0.0 and NaN.
        const __mmask16 pos = _mm512_mask_cmp_ps_mask(m, xv, zero, _CMP_NLT_UQ);
        v |= static_cast<uint64_t>(pos) << (16 * h);
        if (abs_sum) s = _mm512_add_ps(s, _mm512_and_ps(xv, absmask));
      }
      bits[w] = v;
    }
    if (abs_sum) *abs_sum = _mm512_reduce_add_ps(s);
  }

  // npix contiguous pixels of C channels, C a multiple of 64 (see
  // pack_float_pixels): words in order, no per-pixel set-up. IDENT: the
  // pixels are one flat run of words.
  static constexpr bool kRowPack = true;
  template <bool IDENT>
  static void pack_float_row(const float* x, const float* ib, const float* is, int64_t C,
                             int64_t npix, uint64_t* bits) {
    const int64_t nw = C / 64;
    auto word = [](const float* xw, const float* bw, const float* sw) {
      __m512 v[4];
      return sign_word<IDENT>(xw, bw, sw, v);
    };
    if (IDENT) {
      const int64_t total = npix * nw;
      // The input comes from L2 or further: ask for the lines 2 KiB ahead.
      for (int64_t w = 0; w < total; ++w) {
        const char* pf = reinterpret_cast<const char*>(x + 64 * w + 512);
        _mm_prefetch(pf, _MM_HINT_T0);
        _mm_prefetch(pf + 64, _MM_HINT_T0);
        _mm_prefetch(pf + 128, _MM_HINT_T0);
        _mm_prefetch(pf + 192, _MM_HINT_T0);
        bits[w] = word(x + 64 * w, nullptr, nullptr);
      }
    } else {
      for (int64_t i = 0; i < npix; ++i)
        for (int64_t w = 0; w < nw; ++w)
          bits[i * nw + w] = word(x + i * C + 64 * w, ib + 64 * w, is + 64 * w);
    }
  }

  template <bool AND>
  static inline __m512i op(__m512i a, __m512i b) {
    return AND ? _mm512_and_si512(a, b) : _mm512_xor_si512(a, b);
  }

  // The register-tiled accumulation of NP pixels x 32 outputs in 32-bit
  // lanes: per step, the 32 outputs' weight dwords in 2 zmm and each pixel's
  // input dword broadcast against both, VPOPCNTD and a 32-bit add into
  // acc[p][0] (outputs 0-15) and acc[p][1] (16-31). Step i reads dword
  // koff[i] of pixel p at xp[p]. Step 0 sets the accumulators (KS >= 1).
  template <bool AND, int NP>
  static inline __attribute__((always_inline)) void accumulate(const uint32_t* const* xp,
                                                                const int64_t* koff, int64_t KS,
                                                                const uint32_t* w,
                                                                __m512i (&acc)[NP][2]) {
    {
      const int64_t k = koff[0];
      const __m512i w0 = _mm512_load_si512(w), w1 = _mm512_load_si512(w + 16);
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) {
        const __m512i xb = _mm512_set1_epi32(static_cast<int>(xp[p][k]));
        acc[p][0] = _mm512_popcnt_epi32(op<AND>(xb, w0));
        acc[p][1] = _mm512_popcnt_epi32(op<AND>(xb, w1));
      }
    }
#pragma GCC unroll 2  // selftest 1 thread: L2 packed 48.3 -> 47.2 us, L3 45.8 -> 45.1
    for (int64_t i = 1; i < KS; ++i) {
      const int64_t k = koff[i];
      const uint32_t* wi = w + i * 32;
      const __m512i w0 = _mm512_load_si512(wi), w1 = _mm512_load_si512(wi + 16);
#pragma GCC unroll 16
      for (int p = 0; p < NP; ++p) {
        const __m512i xb = _mm512_set1_epi32(static_cast<int>(xp[p][k]));
        acc[p][0] = _mm512_add_epi32(acc[p][0], _mm512_popcnt_epi32(op<AND>(xb, w0)));
        acc[p][1] = _mm512_add_epi32(acc[p][1], _mm512_popcnt_epi32(op<AND>(xb, w1)));
      }
    }
  }

  template <bool AND>
  static void bin_tile(const uint64_t* const* xp, const int64_t* koff, int64_t KS,
                       const uint64_t* w, int32_t* raw) {
    const uint32_t* x32[kP];
    for (int p = 0; p < kP; ++p) x32[p] = reinterpret_cast<const uint32_t*>(xp[p]);
    __m512i acc[kP][2];
    accumulate<AND, kP>(x32, koff, KS, reinterpret_cast<const uint32_t*>(w), acc);
#pragma GCC unroll 16
    for (int p = 0; p < kP; ++p) {
      _mm512_storeu_si512(raw + p * 32, acc[p][0]);
      _mm512_storeu_si512(raw + p * 32 + 16, acc[p][1]);
    }
  }

  // The epilogue of one pixel from its two accumulators (16 32-bit counts
  // each, outputs in order); os0/os1 and ob0/ob1: the block's 32 output
  // scales and biases, loaded once per tile. Linear or ReLU activation,
  // written as 32 floats at dst or, PACKED, as one owned uint32 word of
  // bin(out) bits at dst32. Same formula and rounding order as
  // binconv::epilogue: ((acc * os) * beta) + ob; beta == nullptr: no beta
  // scaling (beta 1, and z * 1 == z). crow (null: no correction): the
  // pixel's correction table row at this block's first output.
  template <bool AND, bool RELU, bool PACKED>
  static inline __attribute__((always_inline)) void finish_pixel(
      __m512i lo, __m512i hi, int32_t base, const int32_t* crow, __m512 os0, __m512 os1,
      __m512 ob0, __m512 ob1, const float* beta, float* dst, uint32_t* dst32, bool stream) {
    const __m512 zero = _mm512_setzero_ps();
    if (!AND) {
      const __m512i vbase = _mm512_set1_epi32(base);
      lo = _mm512_sub_epi32(vbase, _mm512_add_epi32(lo, lo));
      hi = _mm512_sub_epi32(vbase, _mm512_add_epi32(hi, hi));
    }
    if (crow) {
      lo = _mm512_add_epi32(lo, _mm512_loadu_si512(crow));
      hi = _mm512_add_epi32(hi, _mm512_loadu_si512(crow + 16));
    }
    __m512 z0 = _mm512_mul_ps(_mm512_cvtepi32_ps(lo), os0);
    __m512 z1 = _mm512_mul_ps(_mm512_cvtepi32_ps(hi), os1);
    if (beta) {  // beta == 1 otherwise: z * 1 is z exactly
      const __m512 bt = _mm512_set1_ps(*beta);
      z0 = _mm512_mul_ps(z0, bt);
      z1 = _mm512_mul_ps(z1, bt);
    }
    z0 = _mm512_add_ps(z0, ob0);
    z1 = _mm512_add_ps(z1, ob1);
    if (RELU) {  // max(0, z): z for NaN and -0.0, as v < 0 ? 0 : v
      z0 = _mm512_max_ps(zero, z0);
      z1 = _mm512_max_ps(zero, z1);
    }
    if (PACKED) {
      const __mmask16 m0 = _mm512_cmp_ps_mask(z0, zero, _CMP_NLT_UQ);
      const __mmask16 m1 = _mm512_cmp_ps_mask(z1, zero, _CMP_NLT_UQ);
      *dst32 = _cvtmask32_u32(_mm512_kunpackw(m1, m0));
    } else if (stream) {
      _mm512_stream_ps(dst, z0);
      _mm512_stream_ps(dst + 16, z1);
    } else {
      _mm512_storeu_ps(dst, z0);
      _mm512_storeu_ps(dst + 16, z1);
    }
  }

  // The tile of NP pixels with its epilogue applied straight from the
  // accumulators (no round trip through memory), for the first np <= NP of
  // them (pixels past np repeat a real pixel's offset: read, never stored).
  // Pixel p reads words xbase + off[p]; crow[p] is its correction table row
  // (null: none), read from output o0; float rows at dst + p*dst_stride, or
  // packed words at dst32 + p*dst32_stride.
  template <bool AND, bool RELU, bool PACKED, int NP>
  static void tile_fused(const uint64_t* xbase, const int64_t* off, const int64_t* koff,
                         int64_t KS, const uint64_t* w, int np, int32_t base,
                         const int32_t* const* crow, int64_t o0, const float* os,
                         const float* ob, const float* betas, float* dst, uint32_t* dst32,
                         int64_t dst_stride, int64_t dst32_stride, bool stream) {
    const uint32_t* x32[NP];
    for (int p = 0; p < NP; ++p) x32[p] = reinterpret_cast<const uint32_t*>(xbase + off[p]);
    __m512i acc[NP][2];
    accumulate<AND, NP>(x32, koff, KS, reinterpret_cast<const uint32_t*>(w), acc);
    const __m512 os0 = _mm512_loadu_ps(os), os1 = _mm512_loadu_ps(os + 16);
    const __m512 ob0 = _mm512_loadu_ps(ob), ob1 = _mm512_loadu_ps(ob + 16);
#pragma GCC unroll 16
    for (int p = 0; p < NP; ++p)
      if (p < np)
        finish_pixel<AND, RELU, PACKED>(acc[p][0], acc[p][1], base,
                                        crow[p] ? crow[p] + o0 : nullptr, os0, os1, ob0, ob1,
                                        betas ? betas + p : nullptr, dst + p * dst_stride,
                                        dst32 + p * dst32_stride, stream);
  }

  static constexpr bool kFused = true;
  // One tile of np <= kP pixels: the full 12-pixel tile, or a narrower one
  // for a layer's last pixels (one pixel, or the even width >= np).
  template <bool AND, bool RELU, bool PACKED>
  static void bin_tile_fused(const uint64_t* xbase, const int64_t* off, const int64_t* koff,
                             int64_t KS, const uint64_t* w, int np, int32_t base,
                             const int32_t* const* crow, int64_t o0, const float* os,
                             const float* ob, const float* betas, float* dst, uint32_t* dst32,
                             int64_t dst_stride, int64_t dst32_stride, bool stream) {
    // Streaming (non-temporal) float stores when asked and every row is 64-byte aligned.
    stream = stream && ((reinterpret_cast<uintptr_t>(dst) | (dst_stride * 4)) & 63) == 0;
    if (np == 1) {  // L4 at N=1: 49 pixels; a 2-pixel tile here cost ~2% of the layer
      tile_fused<AND, RELU, PACKED, 1>(xbase, off, koff, KS, w, np, base, crow, o0, os, ob,
                                       betas, dst, dst32, dst_stride, dst32_stride, stream);
      return;
    }
    switch ((np + 1) / 2) {
#define BINCONV_WIDTH(HALF)                                                                    \
  case HALF:                                                                                   \
    tile_fused<AND, RELU, PACKED, 2 * HALF>(xbase, off, koff, KS, w, np, base, crow, o0, os,   \
                                            ob, betas, dst, dst32, dst_stride, dst32_stride,   \
                                            stream);                                           \
    return;
      BINCONV_WIDTH(1)
      BINCONV_WIDTH(2)
      BINCONV_WIDTH(3)
      BINCONV_WIDTH(4)
      BINCONV_WIDTH(5)
#undef BINCONV_WIDTH
      default:
        tile_fused<AND, RELU, PACKED, kP>(xbase, off, koff, KS, w, np, base, crow, o0, os, ob,
                                          betas, dst, dst32, dst_stride, dst32_stride, stream);
    }
  }

  // BINARY_WEIGHTS: x * (+-1) is exact, so mul+add here rounds exactly like the
  // scalar path's loop; lanes are output channels, channel order is fixed.
  static void float_tile(const float* const* xp, const int64_t* tapoff, int64_t T, int64_t Cg,
                         const float* w, float* acc) {
    __m512 c[kPf][2];
    for (int p = 0; p < kPf; ++p) c[p][0] = c[p][1] = _mm512_setzero_ps();
    for (int64_t t = 0; t < T; ++t) {
      const int64_t off = tapoff[t];
      const float* wt = w + t * Cg * kObwf;
      for (int64_t ch = 0; ch < Cg; ++ch) {
        const __m512 w0 = _mm512_load_ps(wt + ch * kObwf);
        const __m512 w1 = _mm512_load_ps(wt + ch * kObwf + 16);
#pragma GCC unroll 8
        for (int p = 0; p < kPf; ++p) {
          const __m512 xb = _mm512_set1_ps(xp[p][off + ch]);
          c[p][0] = _mm512_add_ps(c[p][0], _mm512_mul_ps(xb, w0));
          c[p][1] = _mm512_add_ps(c[p][1], _mm512_mul_ps(xb, w1));
        }
      }
    }
    for (int p = 0; p < kPf; ++p) {
      _mm512_storeu_ps(acc + p * kObwf, c[p][0]);
      _mm512_storeu_ps(acc + p * kObwf + 16, c[p][1]);
    }
  }
};

}  // namespace

std::string conv2d_avx512(const ConvCall& call, const Executor& ex) {
  return detail::run_conv<Avx512Traits>(call, ex);
}

}  // namespace cpu
}  // namespace binconv

#endif  // __x86_64__
