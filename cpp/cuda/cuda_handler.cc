// FFI binding, validation and launch of jax_binconv_conv2d_cuda_v1.
// The contract (operands, attributes, result) is docs/ffi.md; every mismatch
// is returned as an FFI error, never an abort.
#include "cuda_handler.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>

#include "binconv_kernels.h"
#include "binconv_params.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace binconv {
namespace cuda {
namespace {

std::string dims_str(ffi::AnyBuffer::Dimensions d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(d[i]);
  }
  return s + "]";
}

bool h_span_empty(const ConvParams& p) {
  return p.h + p.pad_top + p.pad_bottom < p.eff_kh() || p.w + p.pad_left + p.pad_right < p.eff_kw();
}

// Scratch comes from our own stream-ordered CUDA memory pool, one per device,
// that keeps what it has (release threshold: never). XLA's FFI scratch
// allocator refused every request on the GPU machine (jax 0.11.2), and a
// stream-ordered pool gives the same guarantee: memory freed with
// cudaFreeAsync after the kernels on the same stream is reused only by work
// ordered after them.
cudaError_t scratch_pool(cudaStream_t stream, cudaMemPool_t* pool) {
  int dev = 0;
#if CUDART_VERSION >= 12080
  cudaError_t err = cudaStreamGetDevice(stream, &dev);
#else
  // Older runtimes: XLA runs the handler with the stream's device current.
  (void)stream;
  cudaError_t err = cudaGetDevice(&dev);
#endif
  if (err != cudaSuccess) return err;
  static std::mutex mu;
  static std::unordered_map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mu);
  auto it = pools.find(dev);
  if (it != pools.end()) {
    *pool = it->second;
    return cudaSuccess;
  }
  cudaMemPoolProps props = {};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = dev;
  err = cudaMemPoolCreate(pool, &props);
  if (err != cudaSuccess) return err;
  uint64_t keep = std::numeric_limits<uint64_t>::max();
  err = cudaMemPoolSetAttribute(*pool, cudaMemPoolAttrReleaseThreshold, &keep);
  if (err != cudaSuccess) return err;
  pools[dev] = *pool;
  return cudaSuccess;
}

ffi::Error cuda_error(const char* what, cudaError_t err) {
  return ffi::Error::Internal(std::string("jax_binconv_conv2d_cuda_v1: ") + what + ": " +
                              cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

ffi::Error invalid(const std::string& msg) {
  return ffi::Error::InvalidArgument("jax_binconv_conv2d_cuda_v1: " + msg);
}

ffi::Error Conv2dImpl(cudaStream_t stream, ffi::AnyBuffer x,
                      ffi::AnyBuffer w, ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                      ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                      ffi::Result<ffi::AnyBuffer> out, int32_t conv_type, int64_t in_channels,
                      int64_t stride_h, int64_t stride_w, int64_t dilation_h, int64_t dilation_w,
                      int64_t pad_top, int64_t pad_bottom, int64_t pad_left, int64_t pad_right,
                      int64_t groups, float pad_value, bool beta_scaling, int32_t activation,
                      float negative_slope) {
  ConvParams p;
  p.type = conv_type;
  if (conv_type != BINARY_WEIGHTS && conv_type != XNOR && conv_type != AND)
    return invalid("conv_type must be 0, 1 or 2, got " + std::to_string(conv_type));
  if (activation < 0 || activation >= kNumActivations)
    return invalid("unknown activation " + std::to_string(activation));
  if (stride_h < 1 || stride_w < 1 || dilation_h < 1 || dilation_w < 1)
    return invalid("strides and dilations must be >= 1");
  if (pad_top < 0 || pad_bottom < 0 || pad_left < 0 || pad_right < 0)
    return invalid("padding must be >= 0");
  if (groups < 1) return invalid("groups must be >= 1");
  if (in_channels < 1) return invalid("in_channels must be >= 1");

  // x
  const auto xd = x.dimensions();
  if (xd.size() < 4) return invalid("x must have rank >= 4, got " + dims_str(xd));
  if (x.element_type() == ffi::DataType::F32) {
    p.x_packed = false;
    if (xd.back() != in_channels)
      return invalid("x's last dim " + std::to_string(xd.back()) + " != in_channels " +
                     std::to_string(in_channels));
  } else if (x.element_type() == ffi::DataType::U32) {
    p.x_packed = true;
    if (xd.back() != packed_words(in_channels))
      return invalid("packed x's last dim " + std::to_string(xd.back()) + " != ceil(" +
                     std::to_string(in_channels) + "/32)");
  } else {
    return invalid("x must be F32 or U32 (packed)");
  }
  const size_t rank = xd.size();
  int64_t n = 1;
  for (size_t i = 0; i + 3 < rank; ++i) n *= xd[i];
  p.n = n;
  p.h = xd[rank - 3];
  p.w = xd[rank - 2];
  p.c = in_channels;
  if (p.c % groups != 0) return invalid("groups must divide in_channels");

  // w
  if (w.element_type() != ffi::DataType::U32) return invalid("w must be U32 (packed weights)");
  const auto wd = w.dimensions();
  if (wd.size() != 4) return invalid("w must have rank 4, got " + dims_str(wd));
  p.o = wd[0];
  p.kh = wd[1];
  p.kw = wd[2];
  p.groups = groups;
  if (p.o < 1 || p.kh < 1 || p.kw < 1) return invalid("w has an empty dim: " + dims_str(wd));
  if (p.o % groups != 0) return invalid("groups must divide the output channels");
  if (wd[3] != packed_words(p.cg()))
    return invalid("w's last dim " + std::to_string(wd[3]) + " != ceil(Cg/32) = " +
                   std::to_string(packed_words(p.cg())));

  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.dil_h = dilation_h;
  p.dil_w = dilation_w;
  p.pad_top = pad_top;
  p.pad_bottom = pad_bottom;
  p.pad_left = pad_left;
  p.pad_right = pad_right;
  p.pad_value = pad_value;
  p.beta_scaling = beta_scaling;
  p.activation = activation;
  p.negative_slope = negative_slope;

  // type-dependent rules
  if (p.x_packed && conv_type == BINARY_WEIGHTS)
    return invalid("packed x needs type XNOR or AND");
  if (p.x_packed && groups > 1 && p.cg() % 32 != 0)
    return invalid("packed x with groups > 1 needs C/groups % 32 == 0");
  if (conv_type == XNOR && !(pad_value == -1.0f || pad_value == 0.0f || pad_value == 1.0f))
    return invalid("XNOR pad_value must be -1, 0 or +1");
  if (conv_type == AND && !(pad_value == 0.0f || pad_value == 1.0f))
    return invalid("AND pad_value must be 0 or 1");
  if (conv_type == BINARY_WEIGHTS && !std::isfinite(pad_value))
    return invalid("pad_value must be finite");

  // vectors
  auto check_vec = [&](const ffi::AnyBuffer& b, int64_t len, const char* name) -> ffi::Error {
    if (b.element_type() != ffi::DataType::F32)
      return invalid(std::string(name) + " must be F32");
    const auto d = b.dimensions();
    if (d.size() != 1 || d[0] != len)
      return invalid(std::string(name) + " must have shape [" + std::to_string(len) + "], got " +
                     dims_str(d));
    return ffi::Error::Success();
  };
  if (auto e = check_vec(input_bias, p.c, "input_bias"); e.failure()) return e;
  if (auto e = check_vec(input_scale, p.c, "input_scale"); e.failure()) return e;
  if (auto e = check_vec(output_scale, p.o, "output_scale"); e.failure()) return e;
  if (auto e = check_vec(output_bias, p.o, "output_bias"); e.failure()) return e;

  // result
  const int64_t ho = p.ho(), wo = p.wo();
  if (h_span_empty(p)) return invalid("padding leaves an empty output");
  const auto od = out->dimensions();
  if (out->element_type() == ffi::DataType::F32) {
    p.out_packed = false;
  } else if (out->element_type() == ffi::DataType::U32) {
    p.out_packed = true;
  } else {
    return invalid("result must be F32 or U32 (packed)");
  }
  const int64_t out_c = p.out_packed ? p.out_words() : p.o;
  bool shape_ok = od.size() == rank;
  for (size_t i = 0; shape_ok && i + 3 < rank; ++i) shape_ok = od[i] == xd[i];
  shape_ok = shape_ok && od[rank - 3] == ho && od[rank - 2] == wo && od[rank - 1] == out_c;
  if (!shape_ok)
    return invalid("result shape " + dims_str(od) + " does not match the convolution (Ho=" +
                   std::to_string(ho) + ", Wo=" + std::to_string(wo) + ", channels " +
                   std::to_string(out_c) + ")");

  // The kernels index with 32-bit ints where a single image, channel count
  // or kernel dimension is involved.
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  if (p.h > kI32 / 4 || p.w > kI32 / 4 || p.c > kI32 / 4 || p.o > kI32 / 4 ||
      p.kh * p.kw * p.w_words() > kI32 / 4 || ho * wo > kI32 / 4 || p.h * p.w > kI32 / 4 ||
      p.kh >= 32768 || p.kw >= 32768 || (p.kh + 1) * (p.kw + 1) * p.o > kI32 / 2)
    return invalid("a dimension is too large for the CUDA kernels");

  // The popcount GEMM indexes packed words of x with 32-bit offsets.
  if (conv_type != BINARY_WEIGHTS && p.n * p.h * p.w * p.groups * p.w_words() > kI32)
    return invalid("x is too large for the CUDA kernels (more than 2^31 packed words)");

  if (p.n == 0 || ho == 0 || wo == 0) return ffi::Error::Success();

  ConvBuffers b;
  b.x = x.untyped_data();
  b.w = static_cast<const uint32_t*>(w.untyped_data());
  b.input_bias = static_cast<const float*>(input_bias.untyped_data());
  b.input_scale = static_cast<const float*>(input_scale.untyped_data());
  b.output_scale = static_cast<const float*>(output_scale.untyped_data());
  b.output_bias = static_cast<const float*>(output_bias.untyped_data());
  b.out = out->untyped_data();

  void* scratch_ptr = nullptr;
  const size_t bytes = scratch_bytes(p);
  if (bytes > 0) {
    cudaMemPool_t pool;
    cudaError_t err = scratch_pool(stream, &pool);
    if (err != cudaSuccess) return cuda_error("scratch pool", err);
    err = cudaMallocFromPoolAsync(&scratch_ptr, bytes, pool, stream);
    if (err != cudaSuccess)
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        "jax_binconv_conv2d_cuda_v1: could not allocate " + std::to_string(bytes) +
                            " bytes of scratch: " + cudaGetErrorString(err));
  }
  const cudaError_t err = launch_conv(p, b, scratch_ptr, stream);
  // Freed in stream order even when a launch failed (nothing then uses it).
  const cudaError_t free_err = scratch_ptr ? cudaFreeAsync(scratch_ptr, stream) : cudaSuccess;
  if (err != cudaSuccess) return cuda_error("launch", err);
  if (free_err != cudaSuccess) return cuda_error("scratch free", free_err);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv2dCudaV1, Conv2dImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // w
                                  .Arg<ffi::AnyBuffer>()  // input_bias
                                  .Arg<ffi::AnyBuffer>()  // input_scale
                                  .Arg<ffi::AnyBuffer>()  // output_scale
                                  .Arg<ffi::AnyBuffer>()  // output_bias
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int32_t>("conv_type")
                                  .Attr<int64_t>("in_channels")
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("dilation_h")
                                  .Attr<int64_t>("dilation_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<int64_t>("groups")
                                  .Attr<float>("pad_value")
                                  .Attr<bool>("beta_scaling")
                                  .Attr<int32_t>("activation")
                                  .Attr<float>("negative_slope"));

}  // namespace cuda
}  // namespace binconv
