// AVX2 kernels (no vector popcount): popcount by the nibble lookup (two
// VPSHUFB per 256 bits), counts accumulated as bytes and folded into 64-bit
// lanes with VPSADBW every 31 steps (31 * 8 < 256, so bytes never overflow).
// Tile: 3 pixels x 8 output channels (2 ymm of 4 x 64-bit lanes); 16 ymm
// registers limit the tile.
#if defined(__x86_64__)  // a universal (multi-arch) build compiles every file per slice
#include <immintrin.h>

#define BINCONV_ISA_NS isa_avx2
#include "conv_driver.h"

namespace binconv {
namespace cpu {
namespace {

struct Avx2Traits : detail::PortableTraits<3, 8, 4, 16> {
  static uint64_t popcount64(uint64_t v) { return static_cast<uint64_t>(__builtin_popcountll(v)); }

  template <bool IDENT>
  static void pack_float_bits(const float* x, const float* ib, const float* is, int64_t C,
                              uint64_t* bits, float* abs_sum) {
    const __m256 zero = _mm256_setzero_ps();
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 s = zero;
    float tail = 0.0f;
    const int64_t nw = (C + 63) / 64;
    for (int64_t w = 0; w < nw; ++w) {
      uint64_t v = 0;
      for (int h = 0; h < 8; ++h) {
        const int64_t c = 64 * w + 8 * h;
        if (c >= C) break;
        if (C - c >= 8) {
          __m256 xv = _mm256_loadu_ps(x + c);
          if (!IDENT) xv = _mm256_mul_ps(_mm256_add_ps(xv, _mm256_loadu_ps(ib + c)), _mm256_loadu_ps(is + c));
          // ordered "less than": NaN is not negative, as bin() requires
          const int neg = _mm256_movemask_ps(_mm256_cmp_ps(xv, zero, _CMP_LT_OQ));
          v |= static_cast<uint64_t>(~neg & 0xff) << (8 * h);
          s = _mm256_add_ps(s, _mm256_and_ps(xv, absmask));
        } else {
          for (int64_t i = 0; c + i < C; ++i) {
            const float xv = IDENT ? x[c + i] : (x[c + i] + ib[c + i]) * is[c + i];
            v |= static_cast<uint64_t>(!(xv < 0.0f)) << (8 * h + i);
            tail += std::fabs(xv);
          }
        }
      }
      bits[w] = v;
    }
    if (abs_sum) {
      alignas(32) float l[8];
      _mm256_store_ps(l, s);
      *abs_sum = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7])) + tail;
    }
  }

  template <bool AND>
  static void bin_tile(const uint64_t* const* xp, const int64_t* koff, int64_t KT,
                       const uint64_t* w, int32_t* raw) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i zero = _mm256_setzero_si256();
    __m256i s[kP][2];  // 64-bit lane sums
    __m256i b[kP][2];  // byte counts since the last fold
    for (int p = 0; p < kP; ++p) s[p][0] = s[p][1] = b[p][0] = b[p][1] = zero;
    int steps = 0;
    for (int64_t i = 0; i < KT; ++i) {
      const int64_t k = koff[i];
      {
        const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
        const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(w + 4));
        w += 8;
#pragma GCC unroll 4
        for (int p = 0; p < kP; ++p) {
          const __m256i xb = _mm256_set1_epi64x(static_cast<long long>(xp[p][k]));
          __m256i v0 = AND ? _mm256_and_si256(xb, w0) : _mm256_xor_si256(xb, w0);
          __m256i v1 = AND ? _mm256_and_si256(xb, w1) : _mm256_xor_si256(xb, w1);
          v0 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v0, m4)),
                               _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v0, 4), m4)));
          v1 = _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_and_si256(v1, m4)),
                               _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(v1, 4), m4)));
          b[p][0] = _mm256_add_epi8(b[p][0], v0);
          b[p][1] = _mm256_add_epi8(b[p][1], v1);
        }
        if (++steps == 31) {
          steps = 0;
          for (int p = 0; p < kP; ++p)
            for (int r = 0; r < 2; ++r) {
              s[p][r] = _mm256_add_epi64(s[p][r], _mm256_sad_epu8(b[p][r], zero));
              b[p][r] = zero;
            }
        }
      }
    }
    for (int p = 0; p < kP; ++p)
      for (int r = 0; r < 2; ++r) {
        s[p][r] = _mm256_add_epi64(s[p][r], _mm256_sad_epu8(b[p][r], zero));
        alignas(32) int64_t l[4];
        _mm256_store_si256(reinterpret_cast<__m256i*>(l), s[p][r]);
        for (int j = 0; j < 4; ++j) raw[p * kObw + r * 4 + j] = static_cast<int32_t>(l[j]);
      }
  }
};

}  // namespace

std::string conv2d_avx2(const ConvCall& call, const Executor& ex) {
  return detail::run_conv<Avx2Traits>(call, ex);
}

}  // namespace cpu
}  // namespace binconv

#endif  // __x86_64__
