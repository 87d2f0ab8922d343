// Binary (1-bit) convolution kernels, Metal Shading Language.
//
// The whole of docs/ffi.md ("What a kernel computes") for Apple GPUs. The host
// (metal_host.mm) runs, in one compute encoder, the steps that
// binconv_plan.h lays out:
//   1. binconv_pack_input  (float x, XNOR/AND): x' = (x + ib) * is, binarized
//      and packed per group into uint32 words (SPEC section 7).
//   2. binconv_mean_abs    (beta scaling with float x): A = sum_c |x'| / C.
//   3. binconv_conv_bits   (XNOR/AND) or binconv_conv_float (BINARY_WEIGHTS):
//      the tiled convolution with the fused epilogue and optional packed output.
//
// The same file is compiled unchanged as C++ by g++ through host_shim.h, and
// the test suite runs the whole reference grid through it (docs/apple.md).
// To keep that emulation faithful this file sticks to a small subset of MSL:
//   - threadgroup memory only as arrays declared at the top of a kernel
//     (never `threadgroup` pointers or parameters: the shim maps the
//     qualifier to per-threadgroup static storage);
//   - every lane of a threadgroup reaches every threadgroup_barrier (lanes
//     past the end of the grid still help load tiles); the shim fails a
//     dispatch whose lanes diverge at a barrier;
//   - only the built-ins host_shim.h provides.
// Indices are 32-bit: the host only dispatches calls whose buffers have fewer
// than 2^31 elements.

#include <metal_stdlib>
#include "binconv_args.h"

using namespace metal;

// Outputs per thread: one packed output word, so a thread can write a
// packed result with a single store when the 32 channels share a group.
#define BINCONV_OUT_BLOCK 32u
// Packed weight words per K-chunk staged in threadgroup memory:
// 32 x 32 words = 4 KiB, far below the 32 KiB every Apple GPU offers, so
// several threadgroups fit on one core.
#define BINCONV_K_TILE 32u

namespace binconv_msl {

// SPEC section 2: -1 only for v < 0, so 0, -0.0 and NaN give +1 (bit 1).
inline uint bin_bit(float v) { return v < 0.0f ? 0u : 1u; }
inline float bin_value(float v) { return v < 0.0f ? -1.0f : 1.0f; }

// Mirrors binconv::apply_activation (cpp/common/binconv_params.h); the
// comparisons are written so that NaN propagates. precise:: keeps the
// transcendental functions accurate even if a build enables fast math.
inline float apply_activation(float v, int act, float negative_slope) {
  switch (act) {
    case 1: return v < 0.0f ? 0.0f : v;                              // relu
    case 2: return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v);          // relu6
    case 3: return v < 0.0f ? v * negative_slope : v;                // leaky_relu
    case 4: return 1.0f / (1.0f + precise::exp(-v));                 // sigmoid
    case 5: return precise::tanh(v);                                 // tanh
    case 6: return v < -1.0f ? -1.0f : (v > 1.0f ? 1.0f : v);        // hard_tanh
    case 7: return bin_value(v);                                     // sign
    default: return v;                                               // linear
  }
}

// SPEC section 6, in exactly the order binconv::epilogue uses.
inline float epilogue(float acc, float out_scale, float beta, float out_bias,
                      int act, float negative_slope) {
  float z = acc * out_scale;
  z = z * beta;
  z = z + out_bias;
  return apply_activation(z, act, negative_slope);
}

// Valid bits of packed word j of one group (the last word may be partial).
inline uint word_mask(uint j, uint wpg, uint cg) {
  const uint tail = cg % 32u;
  return (j + 1u == wpg && tail != 0u) ? ((1u << tail) - 1u) : 0xffffffffu;
}

// SPEC section 5: beta = (sum of A over the in-image taps) / (KH * KW).
inline float beta_at(device const float* mean_abs, constant BinconvArgs& a,
                     uint n, int y0, int x0) {
  float s = 0.0f;
  for (uint dy = 0; dy < a.kh; ++dy) {
    const int iy = y0 + int(dy * a.dil_h);
    if (iy < 0 || iy >= int(a.h)) continue;
    for (uint dx = 0; dx < a.kw; ++dx) {
      const int ix = x0 + int(dx * a.dil_w);
      if (ix < 0 || ix >= int(a.w)) continue;
      s += a.beta_from_ones != 0u
               ? 1.0f
               : mean_abs[(n * a.h + uint(iy)) * a.w + uint(ix)];
    }
  }
  return s / float(a.kh * a.kw);
}

// The shared tail of both convolution kernels: epilogue, then either float
// stores or one packed word (bit = bin(out)). Packed words that straddle two
// groups (groups > 1 and og % 32 != 0) are OR-ed into a zeroed result by
// the threads that share them (a.out_atomic).
inline void store_block(thread const float* z, uint o_base, uint o_count,
                        uint pix, constant BinconvArgs& a,
                        device float* out, device atomic_uint* out_bits) {
  // Loops run to the constant 32 with a guard, so that z (and the callers'
  // accumulators) are only ever indexed by unrolled constants and stay in
  // registers instead of spilling to thread memory.
  if (a.out_packed == 0u) {
    for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo)
      if (oo < o_count) out[pix * a.o + o_base + oo] = z[oo];
    return;
  }
  uint lo = 0u, hi = 0u;
  const uint word0 = o_base / 32u;
  for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo) {
    if (oo >= o_count) continue;
    const uint o = o_base + oo;
    const uint bit = bin_bit(z[oo]) << (o % 32u);
    if (o / 32u == word0) lo |= bit; else hi |= bit;
  }
  const uint w0 = pix * a.out_words + word0;
  if (a.out_atomic == 0u) {
    // o_base is a multiple of 32 here and the block owns the whole word.
    atomic_store_explicit(&out_bits[w0], lo, memory_order_relaxed);
  } else {
    if (lo != 0u) atomic_fetch_or_explicit(&out_bits[w0], lo, memory_order_relaxed);
    if (hi != 0u) atomic_fetch_or_explicit(&out_bits[w0 + 1u], hi, memory_order_relaxed);
  }
}

}  // namespace binconv_msl

// Step 1: one thread per (input pixel, packed word of a group). A group's
// channels start a fresh word, so that a K-step of the convolution never
// mixes two groups: layout [N*H*W][groups][wpg].
kernel void binconv_pack_input(device const float* x [[buffer(0)]],
                               device const float* input_bias [[buffer(1)]],
                               device const float* input_scale [[buffer(2)]],
                               device uint* xpk [[buffer(3)]],
                               constant BinconvArgs& a [[buffer(4)]],
                               uint gid [[thread_position_in_grid]]) {
  if (gid >= a.in_pixels * a.x_words) return;
  const uint pix = gid / a.x_words;
  const uint word = gid - pix * a.x_words;
  const uint g = word / a.wpg;
  const uint j = word - g * a.wpg;
  const uint c_begin = g * a.cg + j * 32u;
  const uint c_end = min(c_begin + 32u, (g + 1u) * a.cg);
  device const float* xp = x + pix * a.c;
  uint bits = 0u;
  for (uint c = c_begin; c < c_end; ++c) {
    const float v = (xp[c] + input_bias[c]) * input_scale[c];
    bits |= binconv_msl::bin_bit(v) << (c - c_begin);
  }
  xpk[gid] = bits;  // trailing bits stay 0 (SPEC section 7)
}

// Step 2: A[n, y, x] = sum over all C channels of |x'| / C (SPEC section 5).
kernel void binconv_mean_abs(device const float* x [[buffer(0)]],
                             device const float* input_bias [[buffer(1)]],
                             device const float* input_scale [[buffer(2)]],
                             device float* mean_abs [[buffer(3)]],
                             constant BinconvArgs& a [[buffer(4)]],
                             uint gid [[thread_position_in_grid]]) {
  if (gid >= a.in_pixels) return;
  device const float* xp = x + gid * a.c;
  float s = 0.0f;
  for (uint c = 0; c < a.c; ++c) s += abs((xp[c] + input_bias[c]) * input_scale[c]);
  mean_abs[gid] = s / float(a.c);
}

// Step 3, XNOR and AND. Threadgroup = `lanes` output pixels x one block of
// 32 output channels of one group (grid: [pixel blocks, groups * obpg]).
// Each thread owns one pixel and keeps 32 popcount accumulators in
// registers; the block's packed weights are staged in threadgroup memory
// one K-chunk at a time and read by all lanes at the same address
// (a broadcast). K runs over (dy, dx, word) in the weights' own order, so a
// chunk is a contiguous slice of every weight row.
//
// Padding (SPEC section 4): an out-of-image tap is skipped when
// pad_value == 0, and otherwise reads an all-ones (+1) or all-zeros (-1)
// word. XNOR: acc = K - 2 * popcount(x ^ w), K = Cg bits per tap taken;
// AND: acc = popcount(x & w). Trailing bits of x and w words are masked, so
// garbage there cannot change a result.
kernel void binconv_conv_bits(device const uint* xpk [[buffer(0)]],
                              device const uint* wpk [[buffer(1)]],
                              device const float* output_scale [[buffer(2)]],
                              device const float* output_bias [[buffer(3)]],
                              device const float* mean_abs [[buffer(4)]],
                              device float* out [[buffer(5)]],
                              device atomic_uint* out_bits [[buffer(6)]],
                              constant BinconvArgs& a [[buffer(7)]],
                              uint2 tg_pos [[threadgroup_position_in_grid]],
                              uint lane [[thread_index_in_threadgroup]],
                              uint2 tg_size [[threads_per_threadgroup]]) {
  threadgroup uint tile_w[BINCONV_OUT_BLOCK * BINCONV_K_TILE];

  // 1-D threadgroups. tg_size is uint2 because MSL wants the grid
  // attributes of one kernel to have the same number of components.
  const uint lanes = tg_size.x;

  const uint pix = tg_pos.x * lanes + lane;
  const bool active = pix < a.out_pixels;
  const uint g = tg_pos.y / a.obpg;
  const uint o_first = (tg_pos.y - g * a.obpg) * BINCONV_OUT_BLOCK;  // within the group
  const uint o_count = min(BINCONV_OUT_BLOCK, a.og - o_first);
  const uint o_base = g * a.og + o_first;
  const uint ktot = a.kh * a.kw * a.wpg;
  const bool is_and = a.type == 2;
  const bool pad_taken = a.pad_value != 0.0f;
  const uint pad_word = a.pad_value > 0.0f ? 0xffffffffu : 0u;

  uint n = 0u, yo = 0u, xo = 0u;
  if (active) {
    xo = pix % a.wo;
    const uint t = pix / a.wo;
    yo = t % a.ho;
    n = t / a.ho;
  }
  const int y0 = int(yo * a.stride_h) - int(a.pad_top);
  const int x0 = int(xo * a.stride_w) - int(a.pad_left);

  uint acc[BINCONV_OUT_BLOCK];
  for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo) acc[oo] = 0u;
  uint taps_taken = 0u;

  // Walk state over K = (dy, dx, j), carried across chunks.
  uint dy = 0u, dx = 0u, j = 0u;
  bool inside = false, taken = false;
  uint row = 0u;  // word offset of (n, iy, ix, group g) in xpk

  for (uint k0 = 0; k0 < ktot; k0 += BINCONV_K_TILE) {
    const uint kn = min(BINCONV_K_TILE, ktot - k0);
    for (uint e = lane; e < BINCONV_OUT_BLOCK * BINCONV_K_TILE; e += lanes) {
      const uint oo = e / BINCONV_K_TILE;
      const uint kk = e - oo * BINCONV_K_TILE;
      uint v = 0u;
      if (oo < o_count && kk < kn) {
        const uint k = k0 + kk;
        v = wpk[(o_base + oo) * ktot + k] & binconv_msl::word_mask(k % a.wpg, a.wpg, a.cg);
      }
      tile_w[e] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    if (active) {
      for (uint kk = 0; kk < kn; ++kk) {
        if (j == 0u) {  // a new tap
          const int iy = y0 + int(dy * a.dil_h);
          const int ix = x0 + int(dx * a.dil_w);
          inside = iy >= 0 && iy < int(a.h) && ix >= 0 && ix < int(a.w);
          taken = inside || pad_taken;
          if (taken) ++taps_taken;
          if (inside) row = ((n * a.h + uint(iy)) * a.w + uint(ix)) * a.x_words + g * a.wpg;
        }
        if (taken) {
          const uint m = binconv_msl::word_mask(j, a.wpg, a.cg);
          const uint xw = (inside ? xpk[row + j] : pad_word) & m;
          if (is_and) {
            for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo)
              acc[oo] += popcount(xw & tile_w[oo * BINCONV_K_TILE + kk]);
          } else {
            for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo)
              acc[oo] += popcount(xw ^ tile_w[oo * BINCONV_K_TILE + kk]);
          }
        }
        if (++j == a.wpg) {
          j = 0u;
          if (++dx == a.kw) { dx = 0u; ++dy; }
        }
      }
    }
    // The next chunk overwrites tile_w: every lane must be done reading.
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  if (!active) return;
  const float beta = a.beta_scaling != 0u ? binconv_msl::beta_at(mean_abs, a, n, y0, x0) : 1.0f;
  const int k_bits = int(taps_taken * a.cg);
  float z[BINCONV_OUT_BLOCK];
  for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo) {
    z[oo] = 0.0f;
    if (oo >= o_count) continue;
    const int v = is_and ? int(acc[oo]) : k_bits - 2 * int(acc[oo]);
    const uint o = o_base + oo;
    z[oo] = binconv_msl::epilogue(float(v), output_scale[o], beta, output_bias[o],
                                  a.activation, a.negative_slope);
  }
  binconv_msl::store_block(z, o_base, o_count, pix, a, out, out_bits);
}

// Step 3, BINARY_WEIGHTS: the same tiling, but the input is x' itself in
// float (not binarized): acc = sum x' * bin(w), with a padded tap worth
// pad_value * bin(w). Channels are summed in ascending order per tap.
kernel void binconv_conv_float(device const float* x [[buffer(0)]],
                               device const uint* wpk [[buffer(1)]],
                               device const float* input_bias [[buffer(2)]],
                               device const float* input_scale [[buffer(3)]],
                               device const float* output_scale [[buffer(4)]],
                               device const float* output_bias [[buffer(5)]],
                               device const float* mean_abs [[buffer(6)]],
                               device float* out [[buffer(7)]],
                               device atomic_uint* out_bits [[buffer(8)]],
                               constant BinconvArgs& a [[buffer(9)]],
                               uint2 tg_pos [[threadgroup_position_in_grid]],
                               uint lane [[thread_index_in_threadgroup]],
                               uint2 tg_size [[threads_per_threadgroup]]) {
  threadgroup uint tile_w[BINCONV_OUT_BLOCK * BINCONV_K_TILE];

  // 1-D threadgroups. tg_size is uint2 because MSL wants the grid
  // attributes of one kernel to have the same number of components.
  const uint lanes = tg_size.x;

  const uint pix = tg_pos.x * lanes + lane;
  const bool active = pix < a.out_pixels;
  const uint g = tg_pos.y / a.obpg;
  const uint o_first = (tg_pos.y - g * a.obpg) * BINCONV_OUT_BLOCK;
  const uint o_count = min(BINCONV_OUT_BLOCK, a.og - o_first);
  const uint o_base = g * a.og + o_first;
  const uint ktot = a.kh * a.kw * a.wpg;
  const bool pad_taken = a.pad_value != 0.0f;

  uint n = 0u, yo = 0u, xo = 0u;
  if (active) {
    xo = pix % a.wo;
    const uint t = pix / a.wo;
    yo = t % a.ho;
    n = t / a.ho;
  }
  const int y0 = int(yo * a.stride_h) - int(a.pad_top);
  const int x0 = int(xo * a.stride_w) - int(a.pad_left);

  float acc[BINCONV_OUT_BLOCK];
  for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo) acc[oo] = 0.0f;

  uint dy = 0u, dx = 0u, j = 0u;
  bool inside = false, taken = false;
  uint row = 0u;  // float offset of (n, iy, ix, first channel of group g) in x

  for (uint k0 = 0; k0 < ktot; k0 += BINCONV_K_TILE) {
    const uint kn = min(BINCONV_K_TILE, ktot - k0);
    for (uint e = lane; e < BINCONV_OUT_BLOCK * BINCONV_K_TILE; e += lanes) {
      const uint oo = e / BINCONV_K_TILE;
      const uint kk = e - oo * BINCONV_K_TILE;
      uint v = 0u;
      if (oo < o_count && kk < kn) {
        const uint k = k0 + kk;
        v = wpk[(o_base + oo) * ktot + k];
      }
      tile_w[e] = v;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    if (active) {
      for (uint kk = 0; kk < kn; ++kk) {
        if (j == 0u) {
          const int iy = y0 + int(dy * a.dil_h);
          const int ix = x0 + int(dx * a.dil_w);
          inside = iy >= 0 && iy < int(a.h) && ix >= 0 && ix < int(a.w);
          taken = inside || pad_taken;
          if (inside) row = ((n * a.h + uint(iy)) * a.w + uint(ix)) * a.c + g * a.cg;
        }
        if (taken) {
          uint wrow[BINCONV_OUT_BLOCK];
          for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo)
            wrow[oo] = tile_w[oo * BINCONV_K_TILE + kk];
          // Only the valid bits of the word are visited, so trailing weight
          // bits are never read.
          const uint c_end = min(32u, a.cg - j * 32u);
          for (uint i = 0; i < c_end; ++i) {
            float xv = a.pad_value;
            if (inside) {
              const uint c = g * a.cg + j * 32u + i;
              xv = (x[row + j * 32u + i] + input_bias[c]) * input_scale[c];
            }
            for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo)
              acc[oo] += ((wrow[oo] >> i) & 1u) != 0u ? xv : -xv;
          }
        }
        if (++j == a.wpg) {
          j = 0u;
          if (++dx == a.kw) { dx = 0u; ++dy; }
        }
      }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }

  if (!active) return;
  const float beta = a.beta_scaling != 0u ? binconv_msl::beta_at(mean_abs, a, n, y0, x0) : 1.0f;
  float z[BINCONV_OUT_BLOCK];
  for (uint oo = 0; oo < BINCONV_OUT_BLOCK; ++oo) {
    z[oo] = 0.0f;
    if (oo >= o_count) continue;
    const uint o = o_base + oo;
    z[oo] = binconv_msl::epilogue(acc[oo], output_scale[o], beta, output_bias[o],
                                  a.activation, a.negative_slope);
  }
  binconv_msl::store_block(z, o_base, o_count, pix, a, out, out_bits);
}
