// Portable kernels: plain C++, no ISA assumptions (SWAR popcount). The
// reference point for the vector paths and the fallback on any machine.
#define BINCONV_ISA_NS isa_scalar
#include "conv_driver.h"

namespace binconv {
namespace cpu {
namespace {

struct ScalarTraits {
  static constexpr int kP = 4;
  static constexpr int kObw = 4;
  static constexpr int kPf = 4;
  static constexpr bool kFused = false;  // no fused tile epilogue: bin_tile + finish_tile
  static constexpr int kObwf = 8;

  static uint64_t popcount64(uint64_t v) { return detail::popcount_swar(v); }

  static uint32_t sign_bits32(const float* v) { return detail::sign_bits32_generic(v); }

  static void store_row(float* dst, const float* src, bool) {
    std::memcpy(dst, src, sizeof(float) * kObw);
  }
  static void store_fence() {}

  template <bool IDENT>
  static void pack_float_bits(const float* x, const float* ib, const float* is, int64_t C,
                              uint64_t* bits, float* abs_sum) {
    detail::pack_float_bits_generic<IDENT>(x, ib, is, C, bits, abs_sum);
  }
  template <bool AND>
  static void bin_tile(const uint64_t* const* xp, const int64_t* koff, int64_t KT,
                       const uint64_t* w, int32_t* raw) {
    detail::bin_tile_generic<kP, kObw, AND>(xp, koff, KT, w, raw);
  }
  static void float_tile(const float* const* xp, const int64_t* tapoff, int64_t T, int64_t Cg,
                         const float* w, float* acc) {
    detail::float_tile_generic<kPf, kObwf>(xp, tapoff, T, Cg, w, acc);
  }
};

}  // namespace

std::string conv2d_scalar(const ConvCall& call, const Executor& ex) {
  return detail::run_conv<ScalarTraits>(call, ex);
}

}  // namespace cpu
}  // namespace binconv
