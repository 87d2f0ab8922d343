// Host-side interface of the CUDA kernels. Plain C++ plus the CUDA runtime
// types: both nvcc (binconv_kernels.cu) and the host compiler (the FFI
// handler) read it, and it never sees XLA or Python headers.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "binconv_params.h"

namespace binconv {
namespace cuda {

// Device pointers of one call. Operands are the FFI buffers (docs/ffi.md);
// x is float or packed words depending on p.x_packed; out is float or packed
// words depending on p.out_packed.
struct ConvBuffers {
  const void* x = nullptr;
  const uint32_t* w = nullptr;  // [O, KH, KW, ceil(Cg/32)]
  const float* input_bias = nullptr;
  const float* input_scale = nullptr;
  const float* output_scale = nullptr;
  const float* output_bias = nullptr;
  void* out = nullptr;
};

// Device scratch needed by launch_conv for these parameters and operands
// (bytes); the handler allocates it from its stream-ordered pool.
// `fast` receives the kernel choice, to be passed on to launch_conv.
size_t scratch_bytes(const ConvParams& p, const ConvBuffers& b, bool* fast);

// Bytes of the workspace result of jax_binconv_conv2d_cuda_v2 (docs/ffi.md)
// for these parameters: enough for whichever kernel a call then picks
// (scratch_bytes of any operands), plus kWorkspaceAlign so that the handler
// can align the buffer's start. Needs no device: Python sizes the result
// with it when it lowers (also when exporting on a machine without a GPU).
constexpr size_t kWorkspaceAlign = 256;
size_t workspace_bytes(const ConvParams& p);

// The fast kernel's input-slot plan for these parameters (fast_conv.cuh,
// load_tile), or false where the fast kernel does not apply. Needs no
// device: tests check on the CPU that every slot row a tile reads lies in
// the buffer and was copied with the right input row.
struct FastSlotPlan {
  int rmax, srows, erow, wslot, mtiles, dyback;
  uint64_t dymask;
};
bool fast_slot_plan(const ConvParams& p, FastSlotPlan* out);

// Which kernel runs the popcount types: KERNEL_AUTO picks the fast kernel
// (fast_conv.cuh) where it applies, KERNEL_GENERAL always the general one
// (tests use it to cover both). Process-wide; read at every call.
enum KernelPolicy { KERNEL_AUTO = 0, KERNEL_GENERAL = 1 };
void set_kernel_policy(int policy);
int kernel_policy();
// The kernel the last call ran (any thread): 0 none yet.
enum KernelPath {
  KERNEL_PATH_FAST = 1,
  KERNEL_PATH_GENERAL = 2,
  KERNEL_PATH_BINARY_WEIGHTS = 3
};
int last_kernel_path();
// Input slots of the fast kernel by tensor-map copies (sm_90, the default)
// or by cp.async (older GPUs, or where the map cannot be encoded). Tests
// turn it off to cover the cp.async path on sm_90. Process-wide.
void set_tma_slots(bool on);
bool tma_slots();
// Whether the last fast-kernel call used tensor-map copies: 1, 0, or -1
// before any fast call.
int last_tma_slots();
// Programmatic dependent launch of the fast kernel's two kernels (default
// on; a benchmark knob, same results either way). Process-wide, read at
// every call.
void set_fast_pdl(bool on);
bool fast_pdl();
// How the fast kernel copies its weights into shared memory, the most
// wanted of: 2, one tensor-map box per block (sm_90, O a multiple of 32,
// the default); 1, one bulk copy per channel row (sm_90); 0, 16-byte
// cp.async spread over the block (what older GPUs run). A call runs the
// first of these, from the wanted one down, that it can. A benchmark knob,
// same results. Process-wide, read at every call.
void set_fast_weight_copy(int mode);
int fast_weight_copy();
// What the last fast-kernel call ran (2, 1, 0 as above), -1 before any.
int last_weight_copy();
// Float x on the fast kernel: its packing and the epilogue tables in one
// kernel (default; where that kernel's grid is at most 8192 blocks, e.g. L3
// at N = 256) or in two kernels in turn. A benchmark knob, same results.
// Process-wide, read at every call.
void set_fast_fused_prep(bool on);
bool fast_fused_prep();
void set_fast_fused_tables_first(bool on);
bool fast_fused_tables_first();
// The fast kernel's K loop on wgmma (warpgroup MMAs, sm_90a code) or on
// mma.sync. wgmma runs only where the current GPU is compute capability 9.0,
// the build has sm_90a code, C != 64 and its shared memory fits; there
// kWgmmaAuto (the default) picks it where it pays (wgmma_pays: every SM
// gets a tile, at least 3 K steps, not packed output by the float
// epilogue; with fewer tiles, packed x and output by thresholds with at
// least 12 K steps, or 9 with at most half as many tiles as SMs, in its
// shared-memory form only: wgmma_few_tiles_ss),
// kWgmmaOn wherever it can run, kWgmmaOff never. Its A operand
// comes from shared memory where that form runs (stride 1 along x, p = C /
// 128 one or even, see plan_wgmma_ss), else from registers; kWgmmaRs: the
// wgmma kernel wherever it can run, always with A from registers (a
// benchmark and test mode). Same results either way. Process-wide, read at
// every call.
enum WgmmaMode { kWgmmaOff = 0, kWgmmaOn = 1, kWgmmaAuto = 2, kWgmmaRs = 3 };
void set_fast_wgmma(int mode);
int fast_wgmma();
// Whether the last fast-kernel call ran the wgmma kernel: 2 (A from shared
// memory), 1 (A from registers), 0 (mma.sync), or -1 (no fast call yet).
int last_wgmma();
// Whether this build and the current GPU can run the wgmma kernel.
bool wgmma_available();
// Test knob: the wgmma kernel, where its weights come by tensor map, fills
// their shared memory with ones and issues their copies `us` microseconds
// late (0, the default: no delay), so that a K loop that reads the weights
// before they land gives a wrong result instead of passing by luck.
void set_debug_weight_delay(int us);
int debug_weight_delay();
// Test and tuning knob: the wgmma kernel's early rounds (FastArgs::wg_dlate:
// how many tiles fewer its last blocks take, those that start late behind
// fast_tables_kernel); -1, the default: estimated per call.
void set_debug_tile_rounds(int rounds);
int debug_tile_rounds();
// The early rounds of the last wgmma-kernel call (0: plain order; -1: none yet).
int last_tile_rounds();
// The wgmma kernel's shared-memory form with at most a quarter as many tiles
// as SMs (one a block), weights of 3 K blocks or more and float output:
// warpgroup 1 runs the epilogue of
// the tile's channels 64-127 (FastArgs::wg_split; default on; a benchmark
// knob, results are the same).
void set_fast_wg_split(bool on);
bool fast_wg_split();
// Whether the last wgmma-kernel call ran with that split allowed (1), not
// (0), or -1: no such call yet.
int last_wg_split();
// The wgmma kernel's shared-memory form, float output or packed output by
// thresholds: a tile whose rows 64-127 hold no pixel issues the MMAs and
// the epilogue of rows 0-63 only (FastArgs::wg_skip_half; default on; a
// benchmark knob, results are the same).
void set_fast_wg_skip_half(bool on);
bool fast_wg_skip_half();
// The shared-memory form's half tiles (8 groups, 64 rows, a tile; float
// output or packed output by thresholds) where twice the tiles still fit
// the SMs (FastArgs::ss_gt; default on; a benchmark knob, results are the
// same); whether the last wgmma-kernel call ran them (1), not (0), or -1:
// no such call yet.
void set_fast_wg_half_tiles(bool on);
bool fast_wg_half_tiles();
void set_fast_wg_half_tiles_always(bool on);
bool fast_wg_half_tiles_always();
int last_wg_half_tiles();
// Builds with -DJAX_BINCONV_TIMELINE only (else cudaErrorNotSupported): the
// fast kernels' timeline records so far (TlRec in fast_conv.cuh, each
// *record_bytes long) on the current device, after a device sync; the
// buffer then starts empty again.
cudaError_t timeline_read(std::vector<unsigned char>* bytes, int* record_bytes);

// Enqueues the whole convolution on `stream`. `scratch` holds
// scratch_bytes(p) bytes, aligned to 64 (16 would do). Returns the first CUDA error
// (launch configuration or an earlier asynchronous fault); kernels run
// asynchronously, so a fault inside them surfaces at a later sync.
// `p` must already be validated (the handler does it).
cudaError_t launch_conv(const ConvParams& p, const ConvBuffers& b, void* scratch, bool fast,
                        cudaStream_t stream);

// Ceilings for benchmarks/gpu.py, measured on the current device: the issue
// rate of the b1 MMA (binary MACs per second, many warps each issuing
// independent m16n8k256 AND+POPC MMAs) and device-to-device copy bandwidth
// (bytes read + bytes written per second, cudaMemcpy of `copy_bytes`).
struct Ceilings {
  double mma_macs_per_s = 0;
  double copy_bytes_per_s = 0;
};
cudaError_t measure_ceilings(Ceilings* out, size_t copy_bytes);

}  // namespace cuda
}  // namespace binconv
