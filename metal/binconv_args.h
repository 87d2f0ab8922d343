// The argument block every kernel of binconv.metal receives (setBytes on the
// host, a plain pointer in the C++ shim). This header is read by three
// compilers: the Metal compiler (included from binconv.metal), clang for the
// Objective-C++ host and g++ for the shim. It therefore uses only types whose
// size and alignment agree in MSL and C++ (32-bit int, unsigned int, float)
// and no includes. Never reorder fields without rebuilding both sides; the
// C++ side static_asserts the size.
#pragma once

// 32-bit fields: the host refuses (auto: CPU fallback, metal: error) any call
// whose element counts do not fit, so that the GPU indexes in 32 bits.
struct BinconvArgs {
  // Geometry (docs/ffi.md names).
  unsigned int n, h, w, c;       // x: N (all batch dims), H, W, logical C
  unsigned int o, kh, kw;        // outputs, kernel size
  unsigned int stride_h, stride_w, dil_h, dil_w;
  unsigned int pad_top, pad_left;  // bottom/right only shape ho/wo
  unsigned int ho, wo;
  unsigned int groups, cg, og;   // channels and outputs per group
  unsigned int wpg;              // packed words per group = ceil(cg/32)
  unsigned int x_words;          // words per pixel of the packed input (= groups*wpg)
  unsigned int out_words;        // words per pixel of a packed result
  unsigned int obpg;             // 32-wide output blocks per group = ceil(og/32)
  unsigned int in_pixels;        // n*h*w
  unsigned int out_pixels;       // n*ho*wo
  // Semantics.
  int type;                      // binconv::ConvType
  int activation;                // binconv::Activation
  float pad_value;
  float negative_slope;
  unsigned int beta_scaling;     // 0/1
  unsigned int beta_from_ones;   // 1: packed x, so |x'| = 1 and A = 1
  unsigned int out_packed;       // 0/1
  unsigned int out_atomic;       // 1: packed words shared between threads (OR into zeroed output)
};
