// Portable kernels: plain C++, no ISA assumptions (SWAR popcount). The
// reference point for the vector paths and the fallback on any machine.
#define BINCONV_ISA_NS isa_scalar
#include "conv_driver.h"

namespace binconv {
namespace cpu {
namespace {

struct ScalarTraits : detail::PortableTraits<4, 4, 4, 8> {
  static uint64_t popcount64(uint64_t v) { return detail::popcount_swar(v); }

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
};

}  // namespace

std::string conv2d_scalar(const ConvCall& call, const Executor& ex) {
  return detail::run_conv<ScalarTraits>(call, ex);
}

}  // namespace cpu
}  // namespace binconv
