// The XLA FFI handlers of targets jax_binconv_conv2d_cuda_v1 and _v2 (docs/ffi.md).
#pragma once

#include <cstdint>

#include "xla/ffi/api/c_api.h"

namespace binconv {
namespace cuda {

extern "C" XLA_FFI_Error* Conv2dCudaV1(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* Conv2dCudaV2(XLA_FFI_CallFrame* call_frame);
extern "C" XLA_FFI_Error* Conv2dCudaV3(XLA_FFI_CallFrame* call_frame);

// How many times XLA has called the handlers (either target) in this
// process. A call captured into a CUDA graph is replayed without one.
uint64_t handler_calls();

}  // namespace cuda
}  // namespace binconv
