// macOS host side of the Metal path: binconv::metal_try_conv2d
// (cpp/common/metal_dispatch.h), called by the CPU FFI handler of
// jax_binconv._cpu before its own kernel.
//
// Objective-C++ with ARC against the system Metal framework (not metal-cpp):
// no extra dependency to vendor, and ARC plus @autoreleasepool handle object
// lifetimes on XLA's worker threads, which have no autorelease pool of their
// own. docs/apple.md explains the choice and lists the API review.
//
// What happens per call:
//   1. JAX_BINCONV_BACKEND decides whether Metal is wanted at all (before any
//      Metal object exists, so `cpu` costs nothing);
//   2. the process-wide context (device, queue, the four pipelines) is
//      created once, thread-safely (a function-local static);
//   3. binconv_plan.h turns the call into at most three dispatches, which are
//      encoded into one compute encoder of one command buffer;
//   4. operands are wrapped without a copy when pointer and length are
//      page-aligned (newBufferWithBytesNoCopy's requirement), copied otherwise;
//   5. the caller's thread blocks until the GPU is done (an XLA CPU custom call
//      must have written its result when it returns), then any copied result
//      is copied back.
#import <Foundation/Foundation.h>
#import <Metal/Metal.h>

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "binconv_metal_source.h"
#include "binconv_plan.h"
#include "metal_dispatch.h"

#if !__has_feature(objc_arc)
#error "metal_host.mm relies on ARC: compile it with -fobjc-arc"
#endif

namespace binconv {
namespace {

// auto mode sends a call to the GPU only from this many binary MACs
// (N * Ho * Wo * O * KH * KW * C/groups) on. How it was chosen (an estimate,
// not a measurement: no Mac was available while writing this):
//   - a blocking Metal round trip (command buffer, encode, commit,
//     waitUntilCompleted wake-up) costs on the order of 0.1-0.3 ms on Apple
//     silicon, before any work;
//   - the NEON popcount CPU kernel is expected to reach roughly 1e11 binary
//     MAC/s on the performance cores of an M-series chip, so 2^25 (33.5 M)
//     MACs take about 0.3 ms there: below that the fixed GPU cost cannot be
//     won back, above it the GPU (several times the CPU's popcount rate)
//     wins by a growing margin.
// Every BENCH.md layer (the smallest, L6 at N=1, has 51 M MACs) goes to the
// GPU. JAX_BINCONV_METAL_MIN_MACS overrides it; docs/apple.md gives the
// benchmark command to re-measure the crossover on a given Mac.
constexpr double kAutoMinBinaryMacs = 33554432.0;  // 2^25

enum class Backend { kAuto, kCpu, kMetal, kInvalid };

Backend backend_from_env(std::string* raw) {
  const char* v = std::getenv("JAX_BINCONV_BACKEND");
  *raw = v ? v : "";
  std::string s;
  for (char ch : *raw)
    if (ch != ' ' && ch != '\t') s += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (s.empty() || s == "auto") return Backend::kAuto;
  if (s == "cpu") return Backend::kCpu;
  if (s == "metal") return Backend::kMetal;
  return Backend::kInvalid;
}

double auto_threshold() {
  const char* v = std::getenv("JAX_BINCONV_METAL_MIN_MACS");
  if (v == nullptr || *v == '\0') return kAutoMinBinaryMacs;
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(v, &end);
  // A malformed override must not silently change where work runs.
  if (errno != 0 || end == v || *end != '\0' || !(d >= 0.0)) return kAutoMinBinaryMacs;
  return d;
}

std::string describe(NSError* e) {
  if (e == nil) return "unknown error";
  NSString* d = [e localizedDescription];
  return d ? std::string([d UTF8String]) : std::string("unknown error");
}

// The directory of the loaded module that contains this code (_cpu.so):
// binconv.metallib is installed next to it.
std::string module_directory() {
  Dl_info info;
  if (dladdr(reinterpret_cast<const void*>(&metal_try_conv2d), &info) == 0 || info.dli_fname == nullptr)
    return std::string();
  std::string path(info.dli_fname);
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

struct MetalContext {
  id<MTLDevice> device = nil;
  id<MTLCommandQueue> queue = nil;
  id<MTLComputePipelineState> pipelines[metal_plan::kNumKernels];
  uint32_t lanes = metal_plan::kDefaultLanes;  // threads per threadgroup for every step
  std::string library_origin;  // where the kernels came from (diagnostics)
  std::string error;           // non-empty: Metal is unusable in this process
};

id<MTLDevice> pick_device() {
  // MTLCreateSystemDefaultDevice can return nil in processes that do not
  // link CoreGraphics (we link it, see CMakeLists.txt); MTLCopyAllDevices
  // is the documented macOS alternative.
  id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  if (device == nil) {
    NSArray<id<MTLDevice>>* all = MTLCopyAllDevices();
    if (all.count > 0) device = all[0];
  }
  return device;
}

id<MTLLibrary> load_library(id<MTLDevice> device, std::string* origin, std::string* error) {
  std::string path;
  if (const char* env = std::getenv("JAX_BINCONV_METALLIB"); env && *env) {
    path = env;
  } else {
    const std::string dir = module_directory();
    if (!dir.empty()) path = dir + "/binconv.metallib";
  }
  std::string metallib_problem;
  if (!path.empty() && access(path.c_str(), R_OK) == 0) {
    NSError* err = nil;
    NSURL* url = [NSURL fileURLWithPath:[NSString stringWithUTF8String:path.c_str()]];
    id<MTLLibrary> lib = [device newLibraryWithURL:url error:&err];
    if (lib != nil) {
      *origin = path;
      return lib;
    }
    // A metallib built for another OS/GPU generation: the source still works.
    metallib_problem = " (" + path + " did not load: " + describe(err) + ")";
  }

  MTLCompileOptions* options = [[MTLCompileOptions alloc] init];
  // IEEE semantics: the epilogue relies on NaN comparisons (bin(NaN) = +1)
  // and accurate exp/tanh. Same as -fno-fast-math for the offline metallib.
#if defined(__MAC_15_0) && __MAC_OS_X_VERSION_MAX_ALLOWED >= __MAC_15_0
  if (@available(macOS 15.0, *)) {
    options.mathMode = MTLMathModeSafe;
  } else {
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
    options.fastMathEnabled = NO;
#pragma clang diagnostic pop
  }
#else
  options.fastMathEnabled = NO;
#endif
  NSError* err = nil;
  NSString* source = [NSString stringWithUTF8String:kMetalSource];
  id<MTLLibrary> lib = [device newLibraryWithSource:source options:options error:&err];
  if (lib == nil) {
    *error = "compiling the embedded Metal source failed: " + describe(err) + metallib_problem;
    return nil;
  }
  *origin = "embedded source" + metallib_problem;
  return lib;
}

MetalContext* create_context() {
  auto* ctx = new MetalContext();  // lives for the process: pipelines are reused by every call
  @autoreleasepool {
    ctx->device = pick_device();
    if (ctx->device == nil) {
      ctx->error = "no Metal device is available";
      return ctx;
    }
    ctx->queue = [ctx->device newCommandQueue];
    if (ctx->queue == nil) {
      ctx->error = "could not create a Metal command queue";
      return ctx;
    }
    id<MTLLibrary> lib = load_library(ctx->device, &ctx->library_origin, &ctx->error);
    if (lib == nil) return ctx;
    for (int k = 0; k < metal_plan::kNumKernels; ++k) {
      const char* name = metal_plan::kernel_name(k);
      id<MTLFunction> fn = [lib newFunctionWithName:[NSString stringWithUTF8String:name]];
      if (fn == nil) {
        ctx->error = std::string("kernel ") + name + " is missing from " + ctx->library_origin;
        return ctx;
      }
      NSError* err = nil;
      ctx->pipelines[k] = [ctx->device newComputePipelineStateWithFunction:fn error:&err];
      if (ctx->pipelines[k] == nil) {
        ctx->error = std::string("pipeline for ") + name + " failed: " + describe(err);
        return ctx;
      }
      // A register-heavy pipeline may allow fewer threads than we ask for;
      // the kernels work with any lane count (tests/test_metal_shim.py).
      ctx->lanes = std::min<uint32_t>(
          ctx->lanes, static_cast<uint32_t>(ctx->pipelines[k].maxTotalThreadsPerThreadgroup));
    }
    if (ctx->lanes == 0) ctx->error = "a pipeline allows no threads per threadgroup";
  }
  return ctx;
}

MetalContext& context() {
  static MetalContext* ctx = create_context();  // C++11: initialized once, thread-safe
  return *ctx;
}

// Wraps caller memory without a copy when Metal allows it, else copies
// (inputs) or allocates (the output, copied back after the GPU is done).
id<MTLBuffer> wrap(id<MTLDevice> device, const void* ptr, size_t bytes, bool is_output, bool* copied) {
  static const size_t page = static_cast<size_t>(getpagesize());  // 16 KiB on Apple silicon
  const uintptr_t addr = reinterpret_cast<uintptr_t>(ptr);
  if (bytes > 0 && addr % page == 0 && bytes % page == 0) {
    // Metal does not write to input buffers: the const_cast only satisfies
    // the API's signature. deallocator nil: XLA owns the memory, and we wait
    // for the GPU before returning.
    id<MTLBuffer> b = [device newBufferWithBytesNoCopy:const_cast<void*>(ptr)
                                                length:bytes
                                               options:MTLResourceStorageModeShared
                                           deallocator:nil];
    if (b != nil) {
      *copied = false;
      return b;
    }
  }
  *copied = true;
  const size_t len = std::max<size_t>(bytes, 4);  // a zero-length MTLBuffer is not allowed
  if (is_output || bytes == 0)
    return [device newBufferWithLength:len options:MTLResourceStorageModeShared];
  return [device newBufferWithBytes:ptr length:bytes options:MTLResourceStorageModeShared];
}

// Runs the plan; returns the error text, empty on success.
std::string run_plan(MetalContext& ctx, const metal_plan::Plan& plan, const void* const operands[7],
                     void* out) {
  using namespace metal_plan;
  id<MTLBuffer> buffers[kNumBuffers];
  bool out_copied = false;
  for (int i = 0; i <= B_OUT; ++i) {
    bool copied = false;
    buffers[i] = wrap(ctx.device, operands[i], plan.bytes[i], i == B_OUT, &copied);
    if (buffers[i] == nil)
      return "could not create a Metal buffer of " + std::to_string(plan.bytes[i]) + " bytes";
    if (i == B_OUT) out_copied = copied;
  }
  // Scratch never leaves the GPU: private storage.
  for (int i : {B_XPK, B_MEAN_ABS}) {
    buffers[i] = [ctx.device newBufferWithLength:std::max<size_t>(plan.bytes[i], 4)
                                         options:MTLResourceStorageModePrivate];
    if (buffers[i] == nil)
      return "could not allocate " + std::to_string(plan.bytes[i]) + " bytes of Metal scratch";
  }
  if (plan.zero_output) {
    // Shared storage: the CPU's write is visible to the GPU once the command
    // buffer is committed.
    std::memset([buffers[B_OUT] contents], 0, plan.bytes[B_OUT]);
  }

  id<MTLCommandBuffer> cb = [ctx.queue commandBuffer];
  if (cb == nil) return "could not create a Metal command buffer";
  // Serial dispatch (the default encoder): each step sees the previous
  // step's writes to the scratch buffers.
  id<MTLComputeCommandEncoder> enc = [cb computeCommandEncoder];
  if (enc == nil) return "could not create a Metal compute encoder";
  for (int s = 0; s < plan.num_steps; ++s) {
    const Step& step = plan.steps[s];
    [enc setComputePipelineState:ctx.pipelines[step.kernel]];
    for (int i = 0; i < step.num_buffers; ++i)
      [enc setBuffer:buffers[step.buffers[i]] offset:0 atIndex:static_cast<NSUInteger>(i)];
    // 128 bytes, well under setBytes' 4 KB limit.
    [enc setBytes:&plan.args length:sizeof(BinconvArgs) atIndex:static_cast<NSUInteger>(step.num_buffers)];
    [enc dispatchThreadgroups:MTLSizeMake(step.threadgroups[0], step.threadgroups[1], step.threadgroups[2])
        threadsPerThreadgroup:MTLSizeMake(step.threads_per_threadgroup[0], step.threads_per_threadgroup[1],
                                          step.threads_per_threadgroup[2])];
  }
  [enc endEncoding];
  [cb commit];
  [cb waitUntilCompleted];
  if ([cb status] != MTLCommandBufferStatusCompleted)
    return "the Metal command buffer failed: " + describe([cb error]);
  if (out_copied) std::memcpy(out, [buffers[B_OUT] contents], plan.bytes[B_OUT]);
  return std::string();
}

}  // namespace

bool metal_try_conv2d(const ConvParams& p, const void* x, const uint32_t* w, const float* input_bias,
                      const float* input_scale, const float* output_scale, const float* output_bias,
                      void* out, std::string* error) {
  error->clear();
  std::string raw;
  const Backend backend = backend_from_env(&raw);
  if (backend == Backend::kInvalid) {
    *error = "JAX_BINCONV_BACKEND must be auto, cpu or metal; got '" + raw + "'";
    return true;
  }
  if (backend == Backend::kCpu) return false;
  if (backend == Backend::kAuto && metal_plan::binary_macs(p) < auto_threshold()) return false;

  MetalContext& ctx = context();
  if (!ctx.error.empty()) {
    if (backend == Backend::kAuto) return false;  // no usable GPU: the CPU kernel runs
    *error = "JAX_BINCONV_BACKEND=metal, but " + ctx.error;
    return true;
  }
  if (p.n == 0 || p.ho() == 0 || p.wo() == 0) return true;  // nothing to compute

  metal_plan::Plan plan;
  std::string why;
  if (!metal_plan::make_plan(p, ctx.lanes, &plan, &why)) {
    if (backend == Backend::kAuto) return false;
    *error = "JAX_BINCONV_BACKEND=metal, but " + why;
    return true;
  }
  const void* const operands[7] = {x, w, input_bias, input_scale, output_scale, output_bias, out};
  @autoreleasepool {
    *error = run_plan(ctx, plan, operands, out);
  }
  return true;
}

}  // namespace binconv
