// The seam between the CPU FFI handler and the Metal host code (macOS only).
// The CPU handler calls binconv_metal_try_conv2d() first when the build has
// Metal (JAX_BINCONV_HAVE_METAL); it returns false when Metal should not run
// this call (no device, layer too small, JAX_BINCONV_BACKEND=cpu), and the
// CPU kernel runs instead. A Metal failure after dispatch is an error, not a
// silent fallback: it returns true with *error set.
#pragma once

#include <cstdint>
#include <string>

#include "binconv_params.h"

namespace binconv {

// Pointers follow docs/ffi.md: x is float32 NHWC or packed uint32 words
// (p.x_packed), w packed uint32, the four vectors float32, out float32 or
// packed uint32 (p.out_packed). Returns true when Metal handled the call;
// then *error is empty on success or holds the reason it failed.
bool metal_try_conv2d(const ConvParams& p, const void* x, const uint32_t* w,
                      const float* input_bias, const float* input_scale,
                      const float* output_scale, const float* output_bias,
                      void* out, std::string* error);

}  // namespace binconv
