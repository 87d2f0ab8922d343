// FFI binding, validation and launch of jax_binconv_conv2d_cuda_v1.
// The contract (operands, attributes, result) is docs/ffi.md; every mismatch
// is returned as an FFI error, never an abort.
#include "cuda_handler.h"

#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <mutex>
#include <string>
#include <unordered_map>

#include "binconv_kernels.h"
#include "binconv_params.h"
#include "ffi_conv.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace binconv {
namespace cuda {
namespace {

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


// Both targets. v1 takes its scratch from our stream-ordered pool; v2
// (workspace != null) from its second result, sized by workspace_bytes, so
// that it does nothing but launches on the stream: XLA may capture it into
// a CUDA graph (command buffer) and replay it without calling it again.
std::atomic<uint64_t> g_handler_calls{0};

ffi::Error Conv2dCommon(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                        ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                        ffi::AnyBuffer out, const ConvAttrs& attrs, ffi::AnyBuffer* workspace,
                        const char* target_name) {
  g_handler_calls.fetch_add(1, std::memory_order_relaxed);
  const std::string target = target_name;
  auto invalid = [&](const std::string& msg) {
    return ffi::Error::InvalidArgument(target + ": " + msg);
  };
  auto cuda_error = [&](const char* what, cudaError_t err) {
    return ffi::Error::Internal(target + ": " + what + ": " + cudaGetErrorName(err) + ": " +
                                cudaGetErrorString(err));
  };
  ConvParams p;
  if (auto e = parse_conv2d(target, x, w, input_bias, input_scale, output_scale, output_bias, out,
                            attrs, &p);
      e.failure())
    return e;
  const int64_t ho = p.ho(), wo = p.wo();
  // Groups of packed input must start on a word (Python unpacks otherwise).
  if (p.x_packed && p.groups > 1 && p.cg() % 32 != 0)
    return invalid("packed x with groups > 1 needs C/groups % 32 == 0");

  // The kernels index with 32-bit ints where a single image, channel count
  // or kernel dimension is involved.
  constexpr int64_t kI32 = std::numeric_limits<int32_t>::max();
  if (p.h > kI32 / 4 || p.w > kI32 / 4 || p.c > kI32 / 4 || p.o > kI32 / 4 ||
      p.kh * p.kw * p.w_words() > kI32 / 4 || ho * wo > kI32 / 4 || p.h * p.w > kI32 / 4 ||
      p.kh >= 32768 || p.kw >= 32768 || (p.kh + 1) * (p.kw + 1) * p.o > kI32 / 2)
    return invalid("a dimension is too large for the CUDA kernels");

  // The popcount GEMM indexes packed words of x with 32-bit offsets.
  if (p.type != BINARY_WEIGHTS && p.n * p.h * p.w * p.groups * p.w_words() > kI32)
    return invalid("x is too large for the CUDA kernels (more than 2^31 packed words)");

  if (p.n == 0 || ho == 0 || wo == 0) return ffi::Error::Success();

  ConvBuffers b;
  b.x = x.untyped_data();
  b.w = static_cast<const uint32_t*>(w.untyped_data());
  b.input_bias = static_cast<const float*>(input_bias.untyped_data());
  b.input_scale = static_cast<const float*>(input_scale.untyped_data());
  b.output_scale = static_cast<const float*>(output_scale.untyped_data());
  b.output_bias = static_cast<const float*>(output_bias.untyped_data());
  b.out = out.untyped_data();

  void* scratch_ptr = nullptr;
  bool fast = false;
  const size_t bytes = scratch_bytes(p, b, &fast);
  if (workspace) {
    // The workspace was sized by workspace_bytes(p) (Python, at lowering):
    // check it, never trust it.
    if (workspace->element_type() != ffi::DataType::U8 || workspace->dimensions().size() != 1)
      return invalid("the workspace result must be a 1-D uint8 buffer");
    const uintptr_t base = reinterpret_cast<uintptr_t>(workspace->untyped_data());
    const uintptr_t aligned = (base + kWorkspaceAlign - 1) & ~uintptr_t(kWorkspaceAlign - 1);
    const size_t have = workspace->size_bytes();
    if (bytes > 0 && (aligned - base > have || have - (aligned - base) < bytes))
      return invalid("the workspace result has " + std::to_string(have) + " bytes; this call needs " +
                     std::to_string(bytes + (aligned - base)) +
                     " (size it with jax_binconv._cuda.workspace_bytes)");
    const cudaError_t err = launch_conv(p, b, reinterpret_cast<void*>(aligned), fast, stream);
    if (err != cudaSuccess) return cuda_error("launch", err);
    return ffi::Error::Success();
  }
  if (bytes > 0) {
    cudaMemPool_t pool;
    cudaError_t err = scratch_pool(stream, &pool);
    if (err != cudaSuccess) return cuda_error("scratch pool", err);
    err = cudaMallocFromPoolAsync(&scratch_ptr, bytes, pool, stream);
    if (err != cudaSuccess)
      return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                        target + ": could not allocate " + std::to_string(bytes) +
                            " bytes of scratch: " + cudaGetErrorString(err));
  }
  const cudaError_t err = launch_conv(p, b, scratch_ptr, fast, stream);
  // Freed in stream order even when a launch failed (nothing then uses it).
  const cudaError_t free_err = scratch_ptr ? cudaFreeAsync(scratch_ptr, stream) : cudaSuccess;
  if (err != cudaSuccess) return cuda_error("launch", err);
  if (free_err != cudaSuccess) return cuda_error("scratch free", free_err);
  return ffi::Error::Success();
}

ffi::Error Conv2dV1Impl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                        ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                        ffi::Result<ffi::AnyBuffer> out, ConvAttrs attrs) {
  return Conv2dCommon(stream, x, w, input_bias, input_scale, output_scale, output_bias, *out, attrs,
                      nullptr, "jax_binconv_conv2d_cuda_v1");
}

ffi::Error Conv2dV2Impl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                        ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                        ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> workspace,
                        ConvAttrs attrs) {
  ffi::AnyBuffer ws = *workspace;
  return Conv2dCommon(stream, x, w, input_bias, input_scale, output_scale, output_bias, *out, attrs,
                      &ws, "jax_binconv_conv2d_cuda_v2");
}

// v3: v2 with the four per-channel vectors as one "affine" operand (see
// bind_conv2d_affine): at their defaults XLA then runs no broadcast kernels.
ffi::Error Conv2dV3Impl(cudaStream_t stream, ffi::AnyBuffer x, ffi::AnyBuffer w,
                        ffi::AnyBuffer affine, ffi::Result<ffi::AnyBuffer> out,
                        ffi::Result<ffi::AnyBuffer> workspace, ConvAttrs attrs) {
  constexpr const char* kTarget = "jax_binconv_conv2d_cuda_v3";
  AffineViews v;
  if (auto e = split_affine(kTarget, affine, w, attrs, &v); e.failure()) return e;
  ffi::AnyBuffer ws = *workspace;
  return Conv2dCommon(stream, x, w, v.view(0), v.view(1), v.view(2), v.view(3), *out, attrs, &ws,
                      kTarget);
}

}  // namespace

uint64_t handler_calls() { return g_handler_calls.load(std::memory_order_relaxed); }

// v1: kept for programs exported before v2 (same operands, one result).
XLA_FFI_DEFINE_HANDLER_SYMBOL(Conv2dCudaV1, Conv2dV1Impl,
                              bind_conv2d(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()));

// v2: the workspace as a second result; command-buffer compatible.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    Conv2dCudaV2, Conv2dV2Impl,
    bind_conv2d<true>(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()),
    {ffi::Traits::kCmdBufferCompatible});

// v3: v2's results, one affine operand; command-buffer compatible.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    Conv2dCudaV3, Conv2dV3Impl,
    bind_conv2d_affine<true>(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()),
    {ffi::Traits::kCmdBufferCompatible});

}  // namespace cuda
}  // namespace binconv
