// Interface between the FFI handler (which knows XLA) and the per-ISA
// convolution kernels (which must not: the ARM self-test cross-compiles them
// without jaxlib headers).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "binconv_params.h"

namespace binconv {
namespace cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

// One validated call. Pointers follow docs/ffi.md.
struct ConvCall {
  ConvParams p;
  const void* x = nullptr;  // float32 NHWC, or uint32 words when p.x_packed
  const uint32_t* w = nullptr;
  const float* input_bias = nullptr;
  const float* input_scale = nullptr;
  const float* output_scale = nullptr;
  const float* output_bias = nullptr;
  void* out = nullptr;  // float32 NHWC, or uint32 words when p.out_packed
};

// Runs fn(i) for every i in [0, n), possibly on several threads, and returns
// when all are done. Work items never depend on which thread runs them, so
// results are identical for any thread count.
class Executor {
 public:
  virtual ~Executor() = default;
  virtual int num_threads() const = 0;
  virtual void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) const = 0;
};

// Single-threaded executor (self-tests, tiny calls).
class SerialExecutor final : public Executor {
 public:
  int num_threads() const override { return 1; }
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) const override {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }
};

// One spin-wait pause (the handler's thread pool and the kernels' one-time
// tasks). static: each translation unit, whatever its ISA flags, has its own.
static inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

// Each returns "" on success or an error message (allocation failure).
std::string conv2d_scalar(const ConvCall& call, const Executor& ex);
#if defined(__x86_64__) || defined(_M_X64)
std::string conv2d_avx2(const ConvCall& call, const Executor& ex);
std::string conv2d_avx512(const ConvCall& call, const Executor& ex);
#endif
#if defined(__aarch64__)
std::string conv2d_neon(const ConvCall& call, const Executor& ex);
#endif

}  // namespace cpu
}  // namespace binconv
