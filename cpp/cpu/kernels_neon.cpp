// AArch64 Advanced SIMD (NEON) kernels, for Apple Silicon and Linux ARM.
// Tile: 4 pixels x 8 output channels (4 q registers of 2 x 64-bit lanes).
// Popcount: VCNT gives per-byte counts (<= 8), UADALP folds byte pairs into
// 16-bit lane sums (one instruction per step); 16-bit lanes grow by <= 16 a
// step, so they are folded into 32-bit sums every 4000 steps.
#if defined(__aarch64__)  // a universal (multi-arch) build compiles every file per slice
#include <arm_neon.h>

#define BINCONV_ISA_NS isa_neon
#include "conv_driver.h"

namespace binconv {
namespace cpu {
namespace {

struct NeonTraits : detail::PortableTraits<4, 8, 4, 16> {
  static uint64_t popcount64(uint64_t v) { return static_cast<uint64_t>(__builtin_popcountll(v)); }

  template <bool IDENT>
  static void pack_float_bits(const float* x, const float* ib, const float* is, int64_t C,
                              uint64_t* bits, float* abs_sum) {
    const float32x4_t zero = vdupq_n_f32(0.0f);
    const uint32_t wts[4] = {1, 2, 4, 8};
    const uint32x4_t weights = vld1q_u32(wts);
    float32x4_t s = zero;
    float tail = 0.0f;
    const int64_t nw = (C + 63) / 64;
    for (int64_t w = 0; w < nw; ++w) {
      uint64_t v = 0;
      for (int h = 0; h < 16; ++h) {
        const int64_t c = 64 * w + 4 * h;
        if (c >= C) break;
        if (C - c >= 4) {
          float32x4_t xv = vld1q_f32(x + c);
          if (!IDENT) xv = vmulq_f32(vaddq_f32(xv, vld1q_f32(ib + c)), vld1q_f32(is + c));
          // ordered "less than": NaN is not negative, as bin() requires
          const uint32_t neg = vaddvq_u32(vandq_u32(vcltq_f32(xv, zero), weights));
          v |= static_cast<uint64_t>(~neg & 0xfu) << (4 * h);
          s = vaddq_f32(s, vabsq_f32(xv));
        } else {
          for (int64_t i = 0; c + i < C; ++i) {
            const float xv = IDENT ? x[c + i] : (x[c + i] + ib[c + i]) * is[c + i];
            v |= static_cast<uint64_t>(!(xv < 0.0f)) << (4 * h + i);
            tail += std::fabs(xv);
          }
        }
      }
      bits[w] = v;
    }
    if (abs_sum) {
      float l[4];
      vst1q_f32(l, s);
      *abs_sum = ((l[0] + l[1]) + (l[2] + l[3])) + tail;
    }
  }

  template <bool AND>
  static void bin_tile(const uint64_t* const* xp, const int64_t* koff, int64_t KT,
                       const uint64_t* w, int32_t* raw) {
    uint16x8_t a[kP][4];
    uint32x4_t s[kP][4];
    for (int p = 0; p < kP; ++p)
      for (int r = 0; r < 4; ++r) a[p][r] = vdupq_n_u16(0), s[p][r] = vdupq_n_u32(0);
    int steps = 0;
    for (int64_t i = 0; i < KT; ++i) {
      const int64_t k = koff[i];
      {
        uint8x16_t wv[4];
        for (int r = 0; r < 4; ++r) wv[r] = vreinterpretq_u8_u64(vld1q_u64(w + 2 * r));
        w += 8;
        for (int p = 0; p < kP; ++p) {
          const uint8x16_t xb = vreinterpretq_u8_u64(vdupq_n_u64(xp[p][k]));
          for (int r = 0; r < 4; ++r)
            a[p][r] = vpadalq_u8(a[p][r], vcntq_u8(AND ? vandq_u8(xb, wv[r]) : veorq_u8(xb, wv[r])));
        }
        if (++steps == 4000) {
          steps = 0;
          for (int p = 0; p < kP; ++p)
            for (int r = 0; r < 4; ++r) s[p][r] = vpadalq_u16(s[p][r], a[p][r]), a[p][r] = vdupq_n_u16(0);
        }
      }
    }
    for (int p = 0; p < kP; ++p)
      for (int r = 0; r < 4; ++r) {
        const uint64x2_t l = vpaddlq_u32(vpadalq_u16(s[p][r], a[p][r]));
        raw[p * kObw + 2 * r] = static_cast<int32_t>(vgetq_lane_u64(l, 0));
        raw[p * kObw + 2 * r + 1] = static_cast<int32_t>(vgetq_lane_u64(l, 1));
      }
  }
};

}  // namespace

std::string conv2d_neon(const ConvCall& call, const Executor& ex) {
  return detail::run_conv<NeonTraits>(call, ex);
}

}  // namespace cpu
}  // namespace binconv

#endif  // __aarch64__
