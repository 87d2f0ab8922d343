// The one C++ mirror of docs/semantics.md: enums, the packed layout and the
// scalar epilogue math shared by every backend (CPU, CUDA host side, Metal
// host side and the Metal shim). Plain C++17, no XLA or Python headers, so
// that nvcc and the Metal host code can include it.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define BINCONV_HD __host__ __device__ __forceinline__
#else
#define BINCONV_HD inline
#endif

namespace binconv {

// Values are part of the FFI contract (docs/ffi.md): never renumber.
enum ConvType : int32_t { BINARY_WEIGHTS = 0, XNOR = 1, AND = 2 };

enum Activation : int32_t {
  ACT_LINEAR = 0,
  ACT_RELU = 1,
  ACT_RELU6 = 2,
  ACT_LEAKY_RELU = 3,
  ACT_SIGMOID = 4,
  ACT_TANH = 5,
  ACT_HARD_TANH = 6,
  ACT_SIGN = 7,
};
constexpr int32_t kNumActivations = 8;

// SPEC section 7: bit i (LSB first) of uint32 word j holds channel 32*j + i.
constexpr int kBitsPerWord = 32;
BINCONV_HD int64_t packed_words(int64_t channels) {
  return (channels + kBitsPerWord - 1) / kBitsPerWord;
}

// SPEC section 2: bin(v) = -1 if v < 0 else +1; so 0, -0.0 and NaN give +1.
// As a bit: 1 means +1.
BINCONV_HD uint32_t bin_bit(float v) { return (v < 0.0f) ? 0u : 1u; }
BINCONV_HD float bin_value(float v) { return (v < 0.0f) ? -1.0f : 1.0f; }

// Every geometric and epilogue parameter of one call, validated by the
// handler before any kernel sees it. Layout is always NHWC in and out.
struct ConvParams {
  int32_t type = XNOR;
  int64_t n = 0;            // product of all leading (batch) dims of x
  int64_t h = 0, w = 0, c = 0;  // c: logical channel count of x
  int64_t o = 0;            // output channels
  int64_t kh = 0, kw = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t dil_h = 1, dil_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t groups = 1;
  float pad_value = 0.0f;
  bool beta_scaling = false;
  int32_t activation = ACT_LINEAR;
  float negative_slope = 0.0f;
  bool x_packed = false;    // x given as uint32 words [N,H,W,ceil(C/32)]
  bool out_packed = false;  // result as uint32 words [N,Ho,Wo,ceil(O/32)]

  BINCONV_HD int64_t cg() const { return c / groups; }   // channels per group
  BINCONV_HD int64_t og() const { return o / groups; }   // outputs per group
  BINCONV_HD int64_t eff_kh() const { return (kh - 1) * dil_h + 1; }
  BINCONV_HD int64_t eff_kw() const { return (kw - 1) * dil_w + 1; }
  BINCONV_HD int64_t ho() const {
    int64_t span = h + pad_top + pad_bottom - eff_kh();
    return span < 0 ? 0 : span / stride_h + 1;
  }
  BINCONV_HD int64_t wo() const {
    int64_t span = w + pad_left + pad_right - eff_kw();
    return span < 0 ? 0 : span / stride_w + 1;
  }
  BINCONV_HD int64_t w_words() const { return packed_words(cg()); }  // per (o, dy, dx)
  BINCONV_HD int64_t x_words() const { return packed_words(c); }     // per pixel, packed x
  BINCONV_HD int64_t out_words() const { return packed_words(o); }   // per pixel, packed out
};

// SPEC section 6, the named activation applied last.
BINCONV_HD float apply_activation(float v, int32_t act, float negative_slope) {
  switch (act) {
    // Comparisons are written so that NaN propagates (NaN < x is false).
    case ACT_RELU: return v < 0.0f ? 0.0f : v;
    case ACT_RELU6: return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);
    case ACT_LEAKY_RELU: return v < 0.0f ? v * negative_slope : v;
    case ACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case ACT_TANH: return tanhf(v);
    case ACT_HARD_TANH: return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);
    case ACT_SIGN: return bin_value(v);
    default: return v;
  }
}

// Float products and sums rounded one by one: nvcc contracts a * b + c into
// one FMA (one rounding) unless told not to, which would break the order
// SPEC section 6 fixes.
#if defined(__CUDA_ARCH__)
#define BINCONV_FMUL(a, b) __fmul_rn((a), (b))
#define BINCONV_FADD(a, b) __fadd_rn((a), (b))
#else
#define BINCONV_FMUL(a, b) ((a) * (b))
#define BINCONV_FADD(a, b) ((a) + (b))
#endif

// z = acc * output_scale * beta + output_bias, before the activation.
BINCONV_HD float epilogue_affine(float acc, float out_scale, float beta, float out_bias) {
  float z = BINCONV_FMUL(acc, out_scale);
  z = BINCONV_FMUL(z, beta);
  return BINCONV_FADD(z, out_bias);
}

// SPEC section 6: out = activation(acc * output_scale * beta + output_bias),
// evaluated in exactly this order in float32 by every backend.
BINCONV_HD float epilogue(float acc, float out_scale, float beta, float out_bias,
                          int32_t act, float negative_slope) {
  return apply_activation(epilogue_affine(acc, out_scale, beta, out_bias), act, negative_slope);
}

// apply_activation as compares and selects on per-call constants, for
// kernels that apply one activation to many values: no switch per value
// (inlined per value, the switch with expf and tanhf is a lot of code). The
// same function for every activation except sigmoid and tanh, which have
// `general` set and go through apply_activation. NaN propagates as there
// (every compare with NaN is false), -0.0 stays -0.0 (-0.0 < 0 is false).
struct ActSelect {
  float lo, lo_val, hi, slope;  // v < lo: lo_val (or v * slope when leaky); v > hi: hi
  bool leaky, sign, general;
};
BINCONV_HD ActSelect act_select(int32_t act, float negative_slope) {
  ActSelect s{-INFINITY, 0.0f, INFINITY, negative_slope, false, false, false};
  switch (act) {
    case ACT_RELU: s.lo = 0.0f; break;
    case ACT_RELU6: s.lo = 0.0f; s.hi = 6.0f; break;
    case ACT_LEAKY_RELU: s.lo = 0.0f; s.leaky = true; break;
    case ACT_HARD_TANH: s.lo = -1.0f; s.lo_val = -1.0f; s.hi = 1.0f; break;
    case ACT_SIGN: s.sign = true; break;
    case ACT_SIGMOID:
    case ACT_TANH: s.general = true; break;
    default: break;
  }
  return s;
}
// apply_activation(v, act, negative_slope) for s = act_select(act, ...), unless s.general.
BINCONV_HD float apply_act_select(float v, const ActSelect& s) {
  float r = v < s.lo ? (s.leaky ? BINCONV_FMUL(v, s.slope) : s.lo_val) : v;
  r = v > s.hi ? s.hi : r;
  return s.sign ? bin_value(v) : r;
}

}  // namespace binconv
