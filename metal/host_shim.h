// Just enough of the Metal Shading Language, in C++17, for binconv.metal to
// compile unchanged with g++ and run on the host through shim/shim_runner.cc.
// It is reached only through shim_include/metal_stdlib, i.e. from the
// `#include <metal_stdlib>` at the top of the kernel source, in a translation
// unit (shim/kernels_shim.cc) that contains nothing else but thin wrappers:
// the macros below (device, thread, kernel, ...) must never leak into
// ordinary C++.
//
// What is emulated and how:
//   - address spaces: device/thread vanish, constant becomes const;
//     threadgroup becomes `static thread_local`, so an array a kernel declares
//     in threadgroup memory is one object shared by all lanes of the
//     threadgroup (the runner executes a threadgroup's lanes as fibers on one
//     OS thread, one threadgroup at a time per OS thread). A threadgroup
//     pointer or parameter would not compile (static in a parameter) or
//     would be initialized once (a static pointer): binconv.metal uses
//     neither, and tests/test_metal_shim.py checks the source for them;
//   - attributes: each MSL attribute the kernels use is a macro that expands
//     to nothing, leaving `[[]]`; any other attribute stays unknown to g++,
//     which -Werror=attributes turns into a build error, so kernels cannot
//     start using something the runner does not provide;
//   - threadgroup_barrier: yields the lane's fiber to the runner, which
//     resumes the lanes only when all of them have arrived and fails the
//     dispatch if some lanes finish while others wait (divergent barrier,
//     undefined in Metal);
//   - atomics: std::atomic, relaxed, like Metal's only memory order;
//   - math: the float overloads of <cmath>; popcount via the GCC builtin.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>

namespace metal {

typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;

// Small vectors with the .x/.y/.z/.w members and element-wise arithmetic of
// MSL's uint2/uint3/float4...; swizzles are not provided.
template <typename T, int N> struct vec;
template <typename T> struct vec<T, 2> {
  T x, y;
  vec() : x(), y() {}
  explicit vec(T s) : x(s), y(s) {}
  vec(T x_, T y_) : x(x_), y(y_) {}
  T& operator[](int i) { return i == 0 ? x : y; }
  T operator[](int i) const { return i == 0 ? x : y; }
};
template <typename T> struct vec<T, 3> {
  T x, y, z;
  vec() : x(), y(), z() {}
  explicit vec(T s) : x(s), y(s), z(s) {}
  vec(T x_, T y_, T z_) : x(x_), y(y_), z(z_) {}
  T& operator[](int i) { return i == 0 ? x : (i == 1 ? y : z); }
  T operator[](int i) const { return i == 0 ? x : (i == 1 ? y : z); }
};
template <typename T> struct vec<T, 4> {
  T x, y, z, w;
  vec() : x(), y(), z(), w() {}
  explicit vec(T s) : x(s), y(s), z(s), w(s) {}
  vec(T x_, T y_, T z_, T w_) : x(x_), y(y_), z(z_), w(w_) {}
  T& operator[](int i) { return i == 0 ? x : (i == 1 ? y : (i == 2 ? z : w)); }
  T operator[](int i) const { return i == 0 ? x : (i == 1 ? y : (i == 2 ? z : w)); }
};
#define BINCONV_SHIM_VEC_OP(op)                                              \
  template <typename T, int N>                                               \
  vec<T, N> operator op(const vec<T, N>& a, const vec<T, N>& b) {            \
    vec<T, N> r;                                                             \
    for (int i = 0; i < N; ++i) r[i] = a[i] op b[i];                         \
    return r;                                                                \
  }                                                                          \
  template <typename T, int N>                                               \
  vec<T, N> operator op(const vec<T, N>& a, T b) {                           \
    vec<T, N> r;                                                             \
    for (int i = 0; i < N; ++i) r[i] = a[i] op b;                            \
    return r;                                                                \
  }
BINCONV_SHIM_VEC_OP(+)
BINCONV_SHIM_VEC_OP(-)
BINCONV_SHIM_VEC_OP(*)
BINCONV_SHIM_VEC_OP(/)
BINCONV_SHIM_VEC_OP(&)
BINCONV_SHIM_VEC_OP(|)
BINCONV_SHIM_VEC_OP(^)
#undef BINCONV_SHIM_VEC_OP

typedef vec<uint, 2> uint2;
typedef vec<uint, 3> uint3;
typedef vec<uint, 4> uint4;
typedef vec<int, 2> int2;
typedef vec<int, 3> int3;
typedef vec<int, 4> int4;
typedef vec<float, 2> float2;
typedef vec<float, 3> float3;
typedef vec<float, 4> float4;

// Integer and float built-ins (MSL section 6.2 and 6.5 names).
inline uint popcount(uint v) { return static_cast<uint>(__builtin_popcount(v)); }
inline uint min(uint a, uint b) { return a < b ? a : b; }
inline uint max(uint a, uint b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline float abs(float v) { return std::fabs(v); }
inline int abs(int v) { return v < 0 ? -v : v; }
inline float fabs(float v) { return std::fabs(v); }
inline float exp(float v) { return std::exp(v); }
inline float tanh(float v) { return std::tanh(v); }
inline bool isnan(float v) { return std::isnan(v); }
namespace precise {
inline float exp(float v) { return std::exp(v); }
inline float tanh(float v) { return std::tanh(v); }
}  // namespace precise

// Barriers: implemented by the runner (shim/shim_runner.cc).
enum class mem_flags : uint { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
}  // namespace metal

void binconv_shim_threadgroup_barrier();

namespace metal {
inline void threadgroup_barrier(mem_flags) { binconv_shim_threadgroup_barrier(); }

// Atomics: Metal offers only relaxed ordering.
typedef std::atomic<uint> atomic_uint;
typedef std::atomic<int> atomic_int;
using std::memory_order;
using std::memory_order_relaxed;
using std::atomic_load_explicit;
using std::atomic_store_explicit;
using std::atomic_fetch_add_explicit;
using std::atomic_fetch_or_explicit;
using std::atomic_fetch_and_explicit;
}  // namespace metal

static_assert(sizeof(metal::atomic_uint) == 4, "a device atomic_uint must alias one uint32 word");

// Address-space qualifiers.
#define device
#define thread
#define constant const
#define threadgroup static thread_local
#define kernel

// Attributes the kernels use (each leaves an empty, valid `[[]]`).
#define buffer(index)
#define thread_position_in_grid
#define thread_position_in_threadgroup
#define thread_index_in_threadgroup
#define threadgroup_position_in_grid
#define threads_per_threadgroup
#define threadgroups_per_grid
