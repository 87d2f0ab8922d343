// How one call of the operation becomes Metal dispatches: which kernels of
// binconv.metal run, in which order, on which buffers, over which grid.
// Plain C++17 (no Metal, no XLA): the macOS host (metal_host.mm) encodes
// exactly this plan, and the Linux shim (shim/shim_handler.cc) executes the
// same plan through the C++-compiled kernels, so the tests cover the
// dispatch geometry and the argument block too, not only the kernel math.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "binconv_args.h"
#include "binconv_params.h"

namespace binconv {
namespace metal_plan {

static_assert(sizeof(BinconvArgs) == 32 * 4, "BinconvArgs must stay 32 packed 32-bit fields");

enum Kernel : int {
  K_PACK_INPUT = 0,
  K_MEAN_ABS = 1,
  K_CONV_BITS = 2,
  K_CONV_FLOAT = 3,
  kNumKernels = 4,
};

inline const char* kernel_name(int k) {
  switch (k) {
    case K_PACK_INPUT: return "binconv_pack_input";
    case K_MEAN_ABS: return "binconv_mean_abs";
    case K_CONV_BITS: return "binconv_conv_bits";
    case K_CONV_FLOAT: return "binconv_conv_float";
    default: return "?";
  }
}

// Logical buffers. The first seven are the FFI operands and result; the
// last two are scratch that the host allocates per call.
enum Buffer : int {
  B_X = 0, B_W, B_INPUT_BIAS, B_INPUT_SCALE, B_OUTPUT_SCALE, B_OUTPUT_BIAS, B_OUT,
  B_XPK,       // packed input words [N*H*W][groups][wpg]
  B_MEAN_ABS,  // A[n, y, x] for beta scaling
  kNumBuffers,
};

constexpr int kMaxBindings = 10;

struct Step {
  int kernel = 0;
  int num_buffers = 0;              // bound at [[buffer(0..num_buffers-1)]]
  int buffers[kMaxBindings] = {};   // logical Buffer per binding index;
                                    // the BinconvArgs block goes at index num_buffers
  uint32_t threadgroups[3] = {1, 1, 1};
  uint32_t threads_per_threadgroup[3] = {1, 1, 1};
};

struct Plan {
  BinconvArgs args = {};
  int num_steps = 0;
  Step steps[3];
  // Bytes of every logical buffer, operands included; scratch that a plan
  // does not use still gets a minimal size so that every binding is valid.
  size_t bytes[kNumBuffers] = {};
  bool zero_output = false;  // packed words are OR-ed together: clear first
};

// Lanes per threadgroup for the 1-D helper kernels and the convolutions.
// 64 = two Apple SIMD-groups: enough to hide the latency of the tile load,
// small enough that a 7x7 output (49 pixels) does not waste a whole
// threadgroup. The host lowers it when a pipeline allows fewer threads.
constexpr uint32_t kDefaultLanes = 64;

// Binary multiply-accumulates of the call (BENCH.md's measure).
inline double binary_macs(const ConvParams& p) {
  return static_cast<double>(p.n) * p.ho() * p.wo() * p.o * p.kh * p.kw * p.cg();
}

inline uint32_t ceil_div(uint64_t a, uint64_t b) { return static_cast<uint32_t>((a + b - 1) / b); }

// Fills *plan for a call that the handler has already validated against
// docs/ffi.md. Returns false (with *why) when the call cannot run on the
// GPU kernels as written: an index would not fit in 32 bits.
inline bool make_plan(const ConvParams& p, uint32_t lanes, Plan* plan, std::string* why) {
  *plan = Plan();
  const uint64_t kLimit = (uint64_t{1} << 31) - 1;
  const uint64_t ho = static_cast<uint64_t>(p.ho()), wo = static_cast<uint64_t>(p.wo());
  const uint64_t in_pixels = static_cast<uint64_t>(p.n * p.h * p.w);
  const uint64_t out_pixels = static_cast<uint64_t>(p.n) * ho * wo;
  const uint64_t wpg = static_cast<uint64_t>(p.w_words());
  const uint64_t x_words = static_cast<uint64_t>(p.groups) * wpg;
  const uint64_t ktot = static_cast<uint64_t>(p.kh * p.kw) * wpg;
  const uint64_t counts[] = {
      in_pixels * static_cast<uint64_t>(p.c), in_pixels * x_words,
      out_pixels * static_cast<uint64_t>(p.o), static_cast<uint64_t>(p.o) * ktot,
      // yo * stride + dy * dilation <= 2 * padded extent, computed as int.
      2 * static_cast<uint64_t>(p.h + p.pad_top + p.pad_bottom),
      2 * static_cast<uint64_t>(p.w + p.pad_left + p.pad_right),
  };
  for (uint64_t v : counts) {
    if (v > kLimit) {
      *why = "the call is too large for the Metal kernels' 32-bit indexing";
      return false;
    }
  }
  if (lanes == 0) lanes = 1;

  BinconvArgs& a = plan->args;
  a.n = static_cast<unsigned>(p.n);
  a.h = static_cast<unsigned>(p.h);
  a.w = static_cast<unsigned>(p.w);
  a.c = static_cast<unsigned>(p.c);
  a.o = static_cast<unsigned>(p.o);
  a.kh = static_cast<unsigned>(p.kh);
  a.kw = static_cast<unsigned>(p.kw);
  a.stride_h = static_cast<unsigned>(p.stride_h);
  a.stride_w = static_cast<unsigned>(p.stride_w);
  a.dil_h = static_cast<unsigned>(p.dil_h);
  a.dil_w = static_cast<unsigned>(p.dil_w);
  a.pad_top = static_cast<unsigned>(p.pad_top);
  a.pad_left = static_cast<unsigned>(p.pad_left);
  a.ho = static_cast<unsigned>(ho);
  a.wo = static_cast<unsigned>(wo);
  a.groups = static_cast<unsigned>(p.groups);
  a.cg = static_cast<unsigned>(p.cg());
  a.og = static_cast<unsigned>(p.og());
  a.wpg = static_cast<unsigned>(wpg);
  a.x_words = static_cast<unsigned>(x_words);
  a.out_words = static_cast<unsigned>(p.out_words());
  a.obpg = ceil_div(static_cast<uint64_t>(p.og()), 32);
  a.in_pixels = static_cast<unsigned>(in_pixels);
  a.out_pixels = static_cast<unsigned>(out_pixels);
  a.type = p.type;
  a.activation = p.activation;
  a.pad_value = p.pad_value;
  a.negative_slope = p.negative_slope;
  a.beta_scaling = p.beta_scaling ? 1u : 0u;
  a.beta_from_ones = p.x_packed ? 1u : 0u;
  a.out_packed = p.out_packed ? 1u : 0u;
  // A packed word is owned by one thread unless a group boundary falls
  // inside it.
  a.out_atomic = (p.out_packed && p.groups > 1 && p.og() % 32 != 0) ? 1u : 0u;
  plan->zero_output = a.out_atomic != 0u;

  size_t* b = plan->bytes;
  b[B_X] = static_cast<size_t>(in_pixels) * (p.x_packed ? x_words : static_cast<uint64_t>(p.c)) * 4;
  b[B_W] = static_cast<size_t>(p.o) * ktot * 4;
  b[B_INPUT_BIAS] = b[B_INPUT_SCALE] = static_cast<size_t>(p.c) * 4;
  b[B_OUTPUT_SCALE] = b[B_OUTPUT_BIAS] = static_cast<size_t>(p.o) * 4;
  b[B_OUT] = static_cast<size_t>(out_pixels) * (p.out_packed ? p.out_words() : p.o) * 4;
  const bool bits = p.type != BINARY_WEIGHTS;
  const bool need_xpk = bits && !p.x_packed;
  const bool need_mean = p.beta_scaling && !p.x_packed;
  b[B_XPK] = need_xpk ? static_cast<size_t>(in_pixels * x_words) * 4 : 4;
  b[B_MEAN_ABS] = need_mean ? static_cast<size_t>(in_pixels) * 4 : 4;

  auto one_d = [&](int kernel, uint64_t threads, int out_buffer) {
    Step& s = plan->steps[plan->num_steps++];
    s.kernel = kernel;
    s.num_buffers = 4;
    s.buffers[0] = B_X;
    s.buffers[1] = B_INPUT_BIAS;
    s.buffers[2] = B_INPUT_SCALE;
    s.buffers[3] = out_buffer;
    s.threadgroups[0] = ceil_div(threads, lanes);
    s.threads_per_threadgroup[0] = lanes;
  };
  if (need_xpk) one_d(K_PACK_INPUT, in_pixels * x_words, B_XPK);
  if (need_mean) one_d(K_MEAN_ABS, in_pixels, B_MEAN_ABS);

  Step& s = plan->steps[plan->num_steps++];
  s.threadgroups[0] = ceil_div(out_pixels, lanes);
  s.threadgroups[1] = static_cast<uint32_t>(p.groups) * a.obpg;
  s.threads_per_threadgroup[0] = lanes;
  if (bits) {
    s.kernel = K_CONV_BITS;
    const int bind[] = {p.x_packed ? B_X : B_XPK, B_W, B_OUTPUT_SCALE, B_OUTPUT_BIAS,
                        B_MEAN_ABS, B_OUT, B_OUT};
    s.num_buffers = 7;
    for (int i = 0; i < 7; ++i) s.buffers[i] = bind[i];
  } else {
    s.kernel = K_CONV_FLOAT;
    const int bind[] = {B_X, B_W, B_INPUT_BIAS, B_INPUT_SCALE, B_OUTPUT_SCALE,
                        B_OUTPUT_BIAS, B_MEAN_ABS, B_OUT, B_OUT};
    s.num_buffers = 9;
    for (int i = 0; i < 9; ++i) s.buffers[i] = bind[i];
  }
  return true;
}

}  // namespace metal_plan
}  // namespace binconv
