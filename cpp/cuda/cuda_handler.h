// The XLA FFI handler of target jax_binconv_conv2d_cuda_v1 (docs/ffi.md).
#pragma once

#include "xla/ffi/api/c_api.h"

namespace binconv {
namespace cuda {

extern "C" XLA_FFI_Error* Conv2dCudaV1(XLA_FFI_CallFrame* call_frame);

}  // namespace cuda
}  // namespace binconv
