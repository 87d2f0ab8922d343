// Kernels that check the shim's threadgroup emulation itself (not part of
// the product). Written in the same MSL subset as binconv.metal; run by
// tests/test_metal_shim.py through jax_binconv._metal_shim.run_selftest.
#include <metal_stdlib>
using namespace metal;

// Each threadgroup reverses its slice through threadgroup memory: correct only
// if every lane's write is visible to every lane after the barrier.
kernel void selftest_reverse(device const uint* in [[buffer(0)]],
                             device uint* out [[buffer(1)]],
                             uint lane [[thread_index_in_threadgroup]],
                             uint2 tg_pos [[threadgroup_position_in_grid]],
                             uint2 tg_size [[threads_per_threadgroup]]) {
  threadgroup uint slice[1024];
  const uint base = tg_pos.x * tg_size.x;
  slice[lane] = in[base + lane];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[base + lane] = slice[tg_size.x - 1u - lane];
}

// The same without the barrier: a data race on the GPU, which the shim must
// expose (lanes before the barrier-less read see writes not yet made).
kernel void selftest_reverse_racy(device const uint* in [[buffer(0)]],
                                  device uint* out [[buffer(1)]],
                                  uint lane [[thread_index_in_threadgroup]],
                                  uint2 tg_pos [[threadgroup_position_in_grid]],
                                  uint2 tg_size [[threads_per_threadgroup]]) {
  threadgroup uint slice[1024];
  const uint base = tg_pos.x * tg_size.x;
  slice[lane] = in[base + lane];
  out[base + lane] = slice[tg_size.x - 1u - lane];
}

// Half the lanes skip the barrier: undefined in Metal, an error in the shim.
kernel void selftest_divergent(device const uint* in [[buffer(0)]],
                               device uint* out [[buffer(1)]],
                               uint lane [[thread_index_in_threadgroup]],
                               uint2 tg_pos [[threadgroup_position_in_grid]],
                               uint2 tg_size [[threads_per_threadgroup]]) {
  const uint i = tg_pos.x * tg_size.x + lane;
  if (lane % 2u == 0u) return;
  threadgroup_barrier(mem_flags::mem_threadgroup);
  out[i] = in[i];
}
