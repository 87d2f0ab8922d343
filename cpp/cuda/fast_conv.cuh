// The fast popcount convolution (XNOR / AND, groups = 1, C = 64 or a
// multiple of 128 up to 8192):
// a persistent implicit GEMM on the b1 tensor cores. Included by
// binconv_kernels.cu inside its anonymous namespace (it uses that file's
// cp.async / ldmatrix / MMA helpers and packed_threshold).
//
// Layout of the work. A block owns one tile of kFastBN output channels for
// the whole launch: their packed weights (read straight from the operand,
// [O][KH][KW][C/32] words, K contiguous per channel; on sm_90 one tensor-map
// box per block where O is a multiple of 32) stay in shared memory,
// together with their rows of the per-call table of epilogue constants. It then walks a
// strided list of M tiles (kFastBM consecutive output pixels in (n, y, x)
// order). For each M tile it copies, one tile ahead, the input rows that
// tile needs into "slot rows": output row j of the tile, of image img0 + d
// (img0: the image of its first row), reads slot rows j * sh + d * E +
// dy * dh for its taps dy (E = max((KH - 1) dh + 1 - sh, 0)), each holding
// every column the window can reach, zero outside the image. Within one
// image the output rows' windows overlap as their input rows do, so each
// input row is copied once per tile (not KH times; fast_slot_row); every image boundary
// inside the tile adds E rows. On sm_90 a slot row is one tensor-map copy
// (a 5-d map of packed x whose out-of-bounds boxes read as zeros: the
// padding), completing on an mbarrier per buffer; older
// GPUs, or slot rows wider than a box (256 pixels), use 16-byte cp.async.
// The A operand of tap (dy, dx) and output pixel (j, x) is then pixel
// x * sw + dx * dw of slot row (j, dy): every lane of an ldmatrix gives its
// own row address, so the implicit im2col costs one add per fragment.
//
// K order is (tap, 16-byte chunk of channels): an MMA k-step (256 bits) is
// chunks 2i and 2i + 1, possibly of two taps (an odd number p of chunks per
// pixel: C = 128, 384, 640, ...). An odd chunk count
// is padded with a chunk whose weights are zero (the A side reads any real
// data there; the X1 MMA masks it).
//
// C = 64 (fast_conv_kernel<EPI, true>): a pixel is 8 bytes, half a chunk. A
// 16-byte slot unit holds pixels u and u + 1 of its slot row (8-byte
// cp.async copies: no tensor map has that layout), so one K chunk is taps
// (dy, dx) and (dy, dx + 1) where dw = 1 (for odd kw the second half of a
// tap row's last chunk is no tap), else one tap and an unused half. Unused
// halves have zero weights, and the X1 MMA masks them with B registers per
// K step and lane half (x1m).
//
// Exactness. The MMA gives P = sum over valid taps of popc(x AND w) (padded
// taps are zero words). With V valid taps, X1 = sum of popc(x) over them and
// W1valid/W1all the popcount of o's weights over the valid / all taps:
//   XNOR: acc = 4P + [V Cg - pv (T - V) Cg - 2 X1] + [2 pv W1all - (2 + 2 pv) W1valid]
//   AND:  acc = P + [pv (W1all - W1valid)]
// The first bracket depends on the row only; the second on the column and on
// the row's valid-tap box. Boxes come in few classes (top/bottom/left/right
// borders and the interior), listed by the host. A small kernel run before
// the convolution (fast_tables_kernel, one warp per output channel, launched
// ahead of it with programmatic dependent launch; for float x together with
// its packing) tabulates per (box class,
// channel) the column term, or for packed output without beta the bound B
// with the column term folded in: the output bit is the sign of
// (kmul P + row term - B), flipped per channel (the monotone activations give
// one-sided acc intervals). A block copies its channels' rows of that table
// after its weights. X1 comes from the tensor cores too: one extra MMA per K
// step against an all-ones B fragment (each of the 4 warps that share a row
// range does it for one of its 4 row fragments and passes the whole row
// term to the other three through shared memory).
//
// MMA columns are permuted (fast_chan_of_col) so that a thread's 8
// accumulators of a row are 8 consecutive channels: a packed byte (sign bits
// shifted in with funnel shifts, 3 instructions per output; the 4 lanes of a
// row group then swap bytes so that each stores two whole 32-channel words).
// For float output (fast_chan_of_col_float) they are two runs of 4
// channels, 16 apart, so that each of the two 16-byte stores of the 4 lanes
// of a row covers 64 contiguous bytes (two whole sectors; with 8 consecutive
// channels per lane each store covered half of four sectors).
//
// The wgmma variant (fast_conv_kernel<EPI, false, true>, sm_90a; the
// host's default where it pays, set_fast_wgmma "auto"): the same prologue
// and tables; one block of two warpgroups per SM in "ping-pong": each
// warpgroup runs whole 128-row tiles (the block's tiles alternate between
// them) with its own two slot buffers, row records and mbarriers, and the
// two meet only at named barriers that keep their K loops in tile order,
// so that one's epilogue runs while the other's wgmmas do. Per K step a
// warpgroup issues two m64n128k256 b1 wgmmas (rows 0-63 and 64-127 of its
// tile; A from registers by ldmatrix as above, four buffers loaded two
// steps ahead; B from shared memory in 128-byte swizzled K blocks,
// wg_b_offset, channels in wg_chan_of_col order, one mbarrier per K block
// so the first tile starts as its first block lands) and for X1 two
// m64n8k256 against all-ones B. The epilogue has every thread's X1 for its
// own rows and 32 accumulators per row (a whole packed word); packed output
// takes its 4 rows at once (wg_tab_at: the table in a bank-conflict-free
// layout). benchmarks/NOTES-gpu.md, sessions 10 and 11. With one tile a
// block (few tiles, float output: FastArgs::wg_split) warpgroup 1, which
// has no tile, runs the epilogue of the tile's channels 64-127 from
// accumulators handed over in shared memory (session 23).
//
// Its form with A from shared memory too (fast_conv_kernel<EPI, false, 2>,
// FastArgs wg = 2; stride 1 along x, p one or even): a tile is 16 groups of 8
// consecutive output pixels of one output row, each group's input one
// tensor-map box ([input rows][chunk planes][8 + (kw - 1) dw pixels][16
// bytes]), so that K step i's A is a descriptor (start: chunk 2 i's
// offset in group 0's box, LBO: the second chunk's offset from it, SBO:
// the box pitch) and a tile's steps are issued back to back with one wait
// (the register-A loop keeps only three steps in flight); the warpgroup's
// next tile's boxes are issued after them (session 13: before them, their
// one-lane-per-box issue delayed the K loop). The descriptors derive from
// warp-uniform values only (else ptxas serializes the wgmmas).
// benchmarks/NOTES-gpu.md, sessions 12 and 13.
//
// Per-tile work outside the MMAs is kept to a few instructions per row: row
// geometry with multiply-shift division, box classes and valid-tap counts
// from per-y and per-x tables built once per block; the slot copies take
// their per-lane offsets from a table built once per block too.

constexpr int kFastThreads = 256;
constexpr int kFastBM = 128;  // output pixels per tile: 2 warps x 64
constexpr int kFastBN = 128;  // output channels per tile: 4 warps x 32
constexpr int kMaxCls = 8;    // distinct valid-tap ranges per axis
constexpr int kFastMaxTaps = 64;
constexpr int kFastMaxSide = 4096;  // Ho and Wo (per-y / per-x tables)

// How a block copies its weights into shared memory (FastArgs::wcopy).
enum FastWeightCopy { kWeightsCpAsync = 0, kWeightsBulk = 1, kWeightsTensorMap = 2 };

// The epilogue variant, a template parameter (register use and code size).
enum FastEpi { EPI_THR = 0, EPI_FLOAT = 1, EPI_PACKED = 2 };

// n / d for 0 <= n < 2^31 by multiply and shift (Granlund-Montgomery).
struct FastDiv {
  uint32_t d, mul, shift;
};
inline FastDiv make_fastdiv(uint32_t d) {
  uint32_t s = 0;
  while ((uint64_t(1) << s) < d) ++s;
  const uint64_t mul = ((uint64_t(1) << 32) * ((uint64_t(1) << s) - d)) / d + 1;
  return FastDiv{d, (uint32_t)mul, s};
}
__device__ __forceinline__ int fdiv(int n, const FastDiv& f) {
  return (int)((__umulhi((uint32_t)n, f.mul) + (uint32_t)n) >> f.shift);
}

struct FastArgs {
  const uint4* x;     // packed x: [N*H*W][p] chunks of 16 bytes
  const uint4* wt;    // weights: [O][kc] chunks
  const float* aimg;  // mean |x'| per pixel (float x with beta), else null
  const float* osc;
  const float* obias;
  int* tab;   // [ncls + thr][opad] ints: bound B (thr) or column term, see fast_tables_kernel
  void* out;
  int m;  // N * Ho * Wo (< 2^31)
  int n, h, w, ho, wo, o, cg, opad;
  FastDiv div_wo, div_ho, div_kc;
  int kh, kw, sh, sw, dh, dw, pt, pl;
  int t, p, rowpitch, kc, ks;  // taps, chunks per pixel (1..64), chunks per slot row, K chunks, K steps
  int rmax, wslot;  // output rows a tile can touch (bound); pixels per slot (multiple of 8)
  int srows, erow;  // slot rows per tile buffer (bound); extra rows per image boundary (E)
  unsigned long long dymask;  // taps dy whose row is new for a row dyback rows into its image
  int dyback;  // rows back that share input rows with a row (k0 = dh / gcd(sh, dh))
  FastDiv div_kh;
  int tma_x;  // slots by tensor-map copies (sm_90, map encoded by the host)
  int x_late;  // x written by the kernel just before (fast_tables_kernel's prep_x): read after pdl_wait
  int wcopy;  // weights by: kWeightsTensorMap, kWeightsBulk (sm_90) or kWeightsCpAsync
  int pitch_b;      // chunks per weight row in shared memory (odd)
  int mtiles, ntiles;
  int type, pv, beta, x_packed, act, thr;
  float slope;
  int amin, amax;
  int ncy, ncx;  // box classes per axis
  int cy_a[kMaxCls], cy_b[kMaxCls], cx_c[kMaxCls], cx_d[kMaxCls];
  // C = 64 (half; fast_conv_kernel<EPI, true>): a 16-byte slot unit holds
  // pixels u and u + 1, a K chunk taps (dy, tpc j) and (dy, tpc j + 1) (tpc
  // = 2 where dw = 1; the second half unused where tpc = 1 or past kw), nj
  // chunks per tap row; p = 1.
  int half, tpc, nj;
  // sm_90a (fast_conv_kernel<EPI, false, wg>, wg 1: A from registers, 2:
  // from shared memory, below; 0: mma.sync): the K loop on wgmma, the
  // weights in 128-byte swizzled K blocks (wg_b_offset), pitch_b = 8 x the
  // number of K blocks (wg_kblocks).
  int wg, wg_kblocks;
  // The wgmma kernel with A from shared memory too (wg = 2;
  // fast_conv_kernel<EPI, false, 2>): a tile is 16 groups of 8 consecutive
  // output pixels of one output row (ss_gpr = ceil(Wo / 8) groups per row,
  // ss_groups in all; pixels past Wo are computed and not stored). Group g's
  // input is one tensor-map box at g ss_gp bytes of the slot buffer:
  // [ss_rows input rows][p chunk planes][ss_w8 pixels][16 bytes], ss_w8 = 8
  // + (kw - 1) dw, ss_rows = (kh - 1) dh + 1. Only for sw = 1 and p = 1 or
  // even (a K step's two chunks then have a non-negative address step: the
  // descriptor's LBO).
  int ss_gpr, ss_groups, ss_w8, ss_rows, ss_gp;
  FastDiv div_gpr;
  // The wgmma kernel's tile order (wg_tile): the first wg_dlate rounds of
  // M tiles go to the first wg_early blocks of each N tile only. The blocks
  // of the highest indices start late where fast_tables_kernel, launched
  // just before, still holds their SMs (S14-3: by 3.4-4.6 us, as long as
  // that kernel runs), so they get wg_dlate tiles fewer. 0: the plain
  // strided order.
  int wg_early, wg_dlate;
  // The shared-memory form with one tile a block (set by the host where
  // there are at most a quarter as many tiles as SMs, every block then
  // having one; set_fast_wg_split) and float output: warpgroup 1, which
  // has no tile of its own, runs the epilogue of the tile's channels 64-127
  // (wg0's accumulators for them handed over through the weights' shared
  // memory once the wgmmas are done), where the weights' region holds the
  // handover (3 K blocks or more).
  int wg_split;
  // Test knob (set_debug_weight_delay; 0 in normal use): the wgmma kernel
  // with weights by tensor map poisons their shared memory, and warpgroup 1
  // issues their copies this many microseconds late, so that a K loop that
  // does not wait for them reads the poison (a wrong result, not a race that
  // passes by luck).
  int dbg_wdelay_us;
  // Experiment switches (builds with -DJAX_BINCONV_SWITCHES only, else 0;
  // results are wrong with any set): see BINCONV_SW.
  int dbg_sw;
  // (Fields added in session 24 come last: the others keep their offsets,
  // and EPI_PACKED's kernels, which do not use these, their code.)
  // The shared-memory form, float output or packed output by thresholds:
  // a tile whose rows 64-127 hold no pixel (its groups 8-15 past the last:
  // L4 at N = 1, 7 groups; the last tile of some calls) issues the wgmmas
  // of rows 0-63 only and runs their epilogue only (set_fast_wg_skip_half;
  // default on).
  int wg_skip_half;
  // Groups a tile (ss): 16, or 8 (half tiles, the same outputs: rows 0-63
  // only, every tile then runs as wg_skip_half's; set by the host where
  // twice the tiles still fit the SMs, set_fast_wg_half_tiles).
  int ss_gt;
};

// BINCONV_SW(bit): an experiment switch of a -DJAX_BINCONV_SWITCHES build
// (env JAX_BINCONV_SW, read by launch_conv): 1 no tables kernel, 2 no weight
// copy and no wait for it, 4 no epilogue, 8 the convolution returns at once,
// 16 the tables kernel returns at once, 32 no table copy or wait, 64 the
// shared-memory form prefetches the next slots before its K loop, 128 it
// reads each step's descriptor fields in the step; for bisecting the wgmma
// K loop's rate against wgmma_probe's: 512 no slot copies after each
// warpgroup's first tile (the later tiles compute on stale slots), 1024
// the shared-memory form writes no row records (4 + 512 + 1024: its K
// loops, barriers and waits alone); 2048 its K loops issue no wgmmas, 4096
// they run twice; 8192 the wgmma kernel's float epilogue computes every
// value but stores none (each thread folds them into one word, stored
// only where a.m < 0: never); 16384 the convolution never triggers its
// dependents early (griddepcontrol.launch_dependents: the next call's
// first kernel then launches when it ends; S22-7's float N = 1 question).
// Always false in other builds.
#ifdef JAX_BINCONV_SWITCHES
#define BINCONV_SW(a, bit) (((a).dbg_sw & (bit)) != 0)
#else
#define BINCONV_SW(a, bit) false
#endif

// The wgmma kernel's k-th M tile (k = 0, 1, ...) of the block at position p
// (0 <= p < mstep) of its N tile: rounds k < wg_dlate give tiles k early + p
// to the first wg_early positions only, then every position takes tiles
// dlate early + p, + mstep, + 2 mstep, ... Every tile once: the first
// dlate early tiles in the early rounds, the rest in the strided ones.
__device__ __forceinline__ int wg_tile(const FastArgs& a, int p, int k, int mstep) {
  if (p < a.wg_early) {
    if (k < a.wg_dlate) return k * a.wg_early + p;
    k -= a.wg_dlate;
  }
  return a.wg_dlate * a.wg_early + k * mstep + p;
}
// How many tiles wg_tile gives the block at position p (< mtiles): its
// early rounds' and those from its first strided tile on. For the host's
// estimate of dlate (launch_fast_epi); the wgmma kernel's ntile is the
// same arithmetic.
__host__ __device__ __forceinline__ int wg_tile_count(int mtiles, int mstep, int early, int dlate,
                                                      int p) {
  const int s = dlate * early + p;
  return (s < mtiles ? (mtiles - s + mstep - 1) / mstep : 0) + (p < early ? dlate : 0);
}

#ifdef JAX_BINCONV_TIMELINE
// Timeline records (a debugging aid: builds with -DJAX_BINCONV_TIMELINE;
// _cuda.timeline_read copies them out, cpp/cuda/tools/timeline.py prints
// them). globaltimer marks (ns) kept in registers while a block runs and
// written to this buffer only when it ends: nothing in between (printf per
// mark, session 13's way, slowed L4's calls 40x).
//   kind 0: fast_tables_kernel, per block: t[0] start, t[1] past its wait
//     for the kernel before, t[2] end (after a block barrier); warp 0's
//     channel: t[3] popcounts added, t[4] threshold found.
//   kind 1 + g: the wgmma kernel's warpgroup g, per block: t[0] start,
//     t[1] first slots issued, t[2] past the prologue's barrier, then the
//     warpgroup's first tile: t[3] slots landed, t[4] K loop start (past
//     the weight wait and the MMA-order barrier), t[5] K loop done, t[6]
//     the table landed, t[7] epilogue done; its second tile: t[8] start,
//     t[9] K loop start, t[10] done, t[11] epilogue done; its third: t[12]
//     K loop start, t[13] done, t[14] epilogue done; t[15] the block's end;
//     the second tile's steps before its K loop: t[16] row records
//     written, t[17] slots landed, t[18] past the warpgroup's barrier,
//     t[19] next slots' copies issued (A from registers: before the K loop).
// Unused marks are 0.
struct TlRec {
  unsigned long long grid;  // %gridid: one per launch
  int kind, block, smid, pad;
  unsigned long long t[20];
};
constexpr unsigned kTlMax = 1u << 15;
__device__ TlRec g_tl[kTlMax];
__device__ unsigned int g_tl_n;
__device__ __forceinline__ unsigned long long tl_now() {
  unsigned long long v;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v)::"memory");
  return v;
}
__device__ void tl_put(int kind, const unsigned long long* t, int n) {
  const unsigned i = atomicAdd(&g_tl_n, 1u);
  if (i >= kTlMax) return;
  TlRec& r = g_tl[i];
  unsigned long long grid;
  unsigned smid;
  asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
  asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
  r.grid = grid;
  r.kind = kind;
  r.block = (int)blockIdx.x;
  r.smid = (int)smid;
  r.pad = 0;
  for (int k = 0; k < 20; ++k) r.t[k] = k < n ? t[k] : 0;
}
#endif

// The valid-tap range [lo, hi) along one axis of the output position whose
// first tap is at i0, and its index among the n classes (lo_tab[i],
// hi_tab[i]) listed so far, or -1. The host lists the classes with it, the
// kernel looks them up with it.
__host__ __device__ __forceinline__ int axis_class(int i0, int size, int k, int dil,
                                                   const int* lo_tab, const int* hi_tab, int n,
                                                   int& lo, int& hi) {
  tap_range(i0, size, k, dil, lo, hi);
  for (int i = 0; i < n; ++i)
    if (lo_tab[i] == lo && hi_tab[i] == hi) return i;
  return -1;
}

// C = 64 (a.half): half hf (0, 1) of K chunk k < kc holds tap (dy, dx) of
// the kernel; true where that is a tap (false for the unused halves: tpc =
// 1, or past kw). The weight copy, the A offsets and the X1 masks all read
// the chunk layout from here.
__host__ __device__ __forceinline__ bool half_chunk_tap(const FastArgs& a, int k, int hf, int& dy,
                                                        int& dx) {
  dy = k / a.nj;
  dx = (k - dy * a.nj) * a.tpc + hf;
  return k < a.kc && hf < a.tpc && dx < a.kw;
}

// Rows of the (class, channel) table: one per box class, plus the flip row
// with thresholds.
__host__ __device__ inline int fast_tab_rows(const FastArgs& a) { return a.ncy * a.ncx + a.thr; }

// Shared-memory row of the weights (and MMA column) of channel slot r of a
// block: within each 32-channel slab, fragment column f = 8 nf + 2 tq + jj
// holds channel 8 tq + 2 nf + jj, so that the 8 accumulators of a thread
// are 8 consecutive channels (its byte of the packed output word, whose bit
// p is then channel p of the slab, as the output layout wants).
__host__ __device__ inline int fast_chan_of_col(int f) {  // column f -> channel
  return (f & ~31) | (((f & 7) >> 1) << 3) | (((f >> 3) & 3) << 1) | (f & 1);
}
// EPI_FLOAT's order: column f = 8 nf + 2 tq + jj holds channel 16 (nf >> 1)
// + 4 tq + 2 (nf & 1) + jj: a thread's accumulators (nf, jj) are channels
// 4 tq .. 4 tq + 3 (nf 0, 1) and 16 + 4 tq .. 16 + 4 tq + 3 (nf 2, 3).
__host__ __device__ inline int fast_chan_of_col_float(int f) {
  return (f & ~31) | (((f >> 4) & 1) << 4) | (((f >> 1) & 3) << 2) | (((f >> 3) & 1) << 1) |
         (f & 1);
}
template <int EPI>
__host__ __device__ inline int chan_of_col(int f) {
  return EPI == EPI_FLOAT ? fast_chan_of_col_float(f) : fast_chan_of_col(f);
}
// The wgmma kernel's order: a warpgroup's m64n128 accumulator gives thread
// tq of a row group, per row, columns f = 8 j + 2 tq + jj (j < 16, jj < 2);
// column f holds channel 32 tq + 2 j + jj (packed output: the thread's 32
// accumulators c = 2 j + jj of a row are one whole output word, bit c), or
// for EPI_FLOAT 16 (j >> 1) + 4 tq + 2 (j & 1) + jj (accumulators c = 4 g ..
// 4 g + 3 are channels 16 g + 4 tq .. + 3: the 4 lanes of a row store 64
// contiguous bytes per float4 store).
template <int EPI>
__host__ __device__ inline int wg_chan_of_col(int f) {
  const int j = f >> 3, tq = (f >> 1) & 3, jj = f & 1;
  return EPI == EPI_FLOAT ? 16 * (j >> 1) + 4 * tq + 2 * (j & 1) + jj : 32 * tq + 2 * j + jj;
}
// Channel (within the block) of a wgmma thread's accumulator c = 2 j + jj.
template <int EPI>
__host__ __device__ inline int wg_chan(int tq, int c) {
  return EPI == EPI_FLOAT ? 16 * (c >> 2) + 4 * tq + (c & 3) : 32 * tq + c;
}
// The wgmma kernel's weights in shared memory: K block kb (8 chunks, 1024
// bits) of all 128 rows is 16 KB, row f's 128 bytes at 128 f, its chunk c
// (0..7) at 16 (c ^ (f & 7)): the 128-byte swizzle that a tensor-map box
// of 128 rows x 128 bytes writes (CU_TENSOR_MAP_SWIZZLE_128B) and that
// wgmma reads with a K-major 128-byte-swizzle descriptor (SBO 1024 bytes
// between 8-row groups; K step s of the block at +32 s bytes). Byte offset
// of (row f, chunk k) from the 1024-aligned base:
__host__ __device__ inline int wg_b_offset(int f, int k) {
  return (k >> 3) * (kFastBN * 128) + f * 128 + (((k & 7) ^ (f & 7)) << 4);
}

// The wgmma kernel's copy of the (class, channel) table, packed output: a
// thread's 32 channels (32 tq .. 32 tq + 31) are 8 16-byte chunks, and the
// 4 threads of a row group read chunk k of theirs together; 16-byte chunk j
// of a row is stored at (j & ~7) | ((j ^ (j >> 3)) & 7) so that those 4
// reads hit 4 different bank groups (unswizzled they were 128 bytes apart:
// 4.6x the ideal shared-memory wavefronts, the whole epilogue's bound).
// Index of channel ch (< 128) of a row:
template <int EPI>
__host__ __device__ inline int wg_tab_at(int ch) {
  if (EPI == EPI_FLOAT) return ch;  // (16 g + 4 tq: already 4 consecutive chunks)
  const int j = ch >> 2;
  return (((j & ~7) | ((j ^ (j >> 3)) & 7)) << 2) | (ch & 3);
}

// The wgmma kernel's weight mbarriers: K block kb < kWgWbars - 1 on its own
// (the first tile's K steps start as its block lands), the rest on the last.
constexpr int kWgWbars = 8;
// A fragment buffers of the wgmma K loop (both halves of the tile): loaded
// two K steps ahead, kWgAbufs - 1 steps' wgmmas in flight.
constexpr int kWgAbufs = 4;

// Shared-memory carve-up, in bytes; host and device use the same function.
struct FastSmem {
  int b, a0, a1, a2, a3, ktab, x1m, tab, csc, cbi, rows, erec, ycls, xcls, ltab, mbar, total;
};
// (half: a.half, a compile-time constant in the kernel.)
__host__ __device__ inline FastSmem fast_smem(const FastArgs& a, bool half) {
  // (wg 2: 16 group boxes of ss_gp bytes, i.e. ss_gp 16-byte chunks)
  const int a_chunks = a.wg == 2 ? a.ss_gp : a.srows * a.wslot * a.p;
  FastSmem s;
  int off = 0;
  auto take = [&](int bytes) {
    const int at = off;
    off = (off + bytes + 15) & ~15;
    return at;
  };
  // The slot buffers first: tensor-map copies want 128-byte aligned
  // destinations (every slot row is a multiple of 8 chunks).
  s.a0 = take(a_chunks * 16);
  s.a1 = take(a_chunks * 16);
  // wg: two buffers per warpgroup (each runs its own tiles).
  s.a2 = a.wg ? take(a_chunks * 16) : s.a0;
  s.a3 = a.wg ? take(a_chunks * 16) : s.a1;
  // (wg: 1024 bytes more, the kernel aligns the swizzled blocks to 1024)
  s.b = take(kFastBN * a.pitch_b * 16 + (a.wg ? 1024 : 0));
  s.ktab = take((2 * a.ks + 2) * 4);  // + 2: the K loop reads one step ahead
  s.tab = take(fast_tab_rows(a) * kFastBN * 4);
  s.csc = take(kFastBN * 4);
  s.cbi = take(kFastBN * 4);
  s.rows = take((a.wg ? 4 : 2) * kFastBM * 16);  // one per slot buffer
  s.erec = take(kFastBM * 8);
  s.ycls = take(a.ho * 4);
  s.xcls = take(a.wo * 4);
  s.ltab = take(a.wslot * a.p * (half ? 16 : 8));
  // mbarriers (sm_90): the weight copy (wg: kWgWbars, one per K block, the
  // last for the rest), then the slots of each buffer; wg: then the table
  // copy.
  s.mbar = take(a.wg ? 8 * (kWgWbars + 5) : 24);
  // half: the X1 MMA's B masks per K step; wg: the X1 wgmma's all-ones B
  // (two core matrices of ones, then ones and zeros for a padding chunk).
  s.x1m = take(half ? (a.ks + 1) * 16 : a.wg ? 512 : 0);
  s.total = off;
  return s;
}
inline FastSmem fast_smem(const FastArgs& a) { return fast_smem(a, a.half != 0); }

// One warp per output channel (columns o < opad; those past O get entries
// that never fire / add nothing): the per-(box class, channel) table.
//   XNOR: term = 2 pv W1all - (2 + 2 pv) W1valid;  AND: term = pv (W1all - W1valid)
// thr: the acc interval [lo, hi] whose packed bit is 1 (packed_threshold),
// clamped into [amin - 1, amax + 1] (same bits for every reachable acc) and
// shifted by the term, so that the convolution compares kmul P + rowconst
// with it directly.
// Programmatic dependent launch (sm_90): the convolution is launched so that
// it may start while this kernel runs; it waits for it (pdl_wait) only
// before it reads the table. Without PDL both are no-ops.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// Bulk (TMA) copies, sm_90: one instruction copies a whole weight row into
// shared memory and signals an mbarrier with its byte count. A block's 128
// weight rows (up to ~200 KB) took ~14 GB/s per SM as 16-byte cp.async
// (ncu, L4 at N = 1: 4 blocks, the copy on the critical path).
__device__ __forceinline__ void mbar_init(uint32_t bar, int count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive_expect_tx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void bulk_copy_to_smem(uint32_t dst, const void* src, uint32_t bytes,
                                                  uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
      "l"(src), "r"(bytes), "r"(bar)
      : "memory");
#endif
}
// An arrival on bar once this thread's earlier cp.async copies are done
// (the barrier's count includes it: noinc).
__device__ __forceinline__ void cp_async_mbar_arrive(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t phase) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "{\n .reg .pred done;\n"
      "BINCONV_MBAR_WAIT_%=:\n"
      " mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      " @!done bra BINCONV_MBAR_WAIT_%=;\n}\n" ::"r"(bar),
      "r"(phase)
      : "memory");
#endif
}
// Slot copies by tensor map (sm_90): every issuing thread raises the
// expected byte count before its copy, then every thread of the block
// arrives once (the barrier counts kFastThreads arrivals per phase), so the
// phase cannot complete before the last copy of the tile was announced.
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
#endif
}
// One box of a 5-d tensor map at coordinates (c0, ..., c4), innermost first,
// into shared memory at dst, completing on the mbarrier bar; coordinates
// outside the tensor read as zeros. The maps (binconv_kernels.cu): packed x
// (make_x_tensor_map: box = pixels [x0, x0 + wslot) x all p chunks of input
// row iy of image img, at (0, x0, 0, iy, img); zeros are the padding) and
// the weights (make_w_tensor_map: box = the block's 128 channel rows from
// slab slab0 on, in fast_chan_of_col order, pitch_b chunks each, at (0, 0,
// 0, 0, slab0); for EPI_FLOAT in fast_chan_of_col_float order, at (0, 0, 0,
// 0, 2 slab0)).
__device__ __forceinline__ void tensor_copy_5d(uint32_t dst, const void* map, int c0, int c1,
                                               int c2, int c3, int c4, uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile(
      "cp.async.bulk.tensor.5d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
      " [%0], [%1, {%2, %3, %4, %5, %6}], [%7];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(c4), "r"(bar)
      : "memory");
#endif
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
constexpr bool kFastTma = true;
#else
constexpr bool kFastTma = false;
#endif

// packed_threshold's interval, with the warp splitting each search range in
// 32 (a few rounds instead of one bisection step per round). Same bit
// function f, same answer: f is monotone on [amin, amax] (see there).
__device__ int2 packed_threshold_warp(float sc, float bi, int act, float slope, int amin,
                                      int amax, int lane) {
  auto f = [&](int v) { return bin_bit(epilogue((float)v, sc, 1.0f, bi, act, slope)) != 0; };
  if (sc == 0.0f)
    return f(amin) ? make_int2(-0x7fffffff - 1, 0x7fffffff) : make_int2(1, 0);
  const bool up = sc > 0.0f;  // f non-decreasing in v, else non-increasing
  if (!f(up ? amax : amin)) return make_int2(1, 0);
  // g(v) = (f(v) == up), and true at the virtual point amax + 1: false...false
  // true...true on [l, h] with g(h) true. Finds the first true point: lanes
  // test 32 points spread over the range, the first true one and the one
  // before it bound the edge.
  int l = amin, h = amax + 1;
  // First the 32 points from 15 below the zero of the affine part (v sc +
  // bi = 0 at v = -bi / sc), where the edge of most activations lies: one
  // round finds it there, else narrows the range to one side of them.
  {
    const float c = fminf(fmaxf(-bi / sc, (float)l), (float)h);  // (NaN: l)
    const int v0 = max(l, min((int)c - 15, h));
    const int v = min(v0 + lane, h);
    const bool g = v > amax || f(v) == up;
    const unsigned bal = __ballot_sync(kFull, g);
    if (bal & 1u) {
      h = v0;  // g(v0): the edge is at v0 or below
    } else if (bal) {
      l = h = min(v0 + __ffs(bal) - 1, h);  // g false before it, true there
    } else {
      l = v0 + 32;  // g false up to v0 + 31 < h (lanes past h read g(h), true)
    }
  }
  while (h > l) {
    const int step = (h - l) / 32 + 1;
    const int v = min(l + lane * step, h);
    const bool g = v > amax || f(v) == up;
    const unsigned bal = __ballot_sync(kFull, g);
    const int first = bal ? __ffs(bal) - 1 : 32;
    const int hi_new = first < 32 ? min(l + first * step, h) : h;
    l = first > 0 ? min(l + (first - 1) * step, h) + 1 : l;
    h = hi_new;
  }
  // up: bit 1 from the edge on; down: up to the point before it.
  return up ? make_int2(l, 0x7fffffff) : make_int2(-0x7fffffff - 1, l - 1);
}

// Block `block` of the tables: a channel per warp (up to 32 warps).
template <bool HALF>
__device__ __forceinline__ void fast_tables_block(const FastArgs& a, int block,
                                                  unsigned long long* tlm = nullptr) {
  __shared__ int sp[32][kFastMaxTaps];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int o = block * (blockDim.x >> 5) + warp;
  if (o >= a.opad) return;
  const int ncls = a.ncy * a.ncx;
  const bool real = o < a.o;
  int* ps = sp[warp];
  for (int tap = lane; tap < a.t; tap += 32) ps[tap] = 0;
  __syncwarp();
  // Lanes take (tap, chunk) pairs, so that the loads of a row go out
  // together, four per lane in flight before their popcounts are added (a
  // lane per tap looping over its chunks, or one load at a time, waited for
  // each load in turn: at N = 1 this kernel's time is on the convolution's
  // critical path). The first four go out before the threshold search,
  // which needs no weights and so runs while they are in flight.
  const uint4* src = a.wt + (long long)o * a.kc;
  const uint2* src2 = reinterpret_cast<const uint2*>(a.wt) + (long long)o * a.t;  // (HALF)
  uint4 v[4];
  auto load4 = [&](int q0) {  // chunks q0 + 32 j of the row, j < 4
#pragma unroll
    for (int j = 0; j < 4; ++j)
      v[j] = q0 + 32 * j < a.kc ? __ldg(src + q0 + 32 * j) : make_uint4(0, 0, 0, 0);
  };
  uint2 h = make_uint2(0, 0);
  if (HALF && real) {  // C = 64: 8 bytes per tap
    if (lane < a.t) h = __ldg(src2 + lane);
  } else if (real) {
    load4(lane);
  }
  // thr: the bit is 1 for acc >= B (flip 1) or acc < B (flip 0): the sign
  // of acc - B, flipped. packed_threshold_warp gives [lo, +inf), (-inf, hi],
  // empty or everything (monotone activations only, see packed_by_threshold).
  int bound = a.amax + 2, flip = 1;  // empty: acc >= amax + 2 never holds
  if (a.thr && real) {
    const int2 t2 = packed_threshold_warp(a.osc[o], a.obias[o], a.act, a.slope, a.amin, a.amax,
                                          lane);
    if (t2.x <= t2.y) {
      if (t2.y >= a.amax) {
        bound = max(t2.x, a.amin - 1);  // [lo, +inf), or everything
      } else {
        bound = t2.y + 1;  // (-inf, hi]
        flip = 0;
      }
    }
  }
#ifdef JAX_BINCONV_TIMELINE
  if (tlm && threadIdx.x == 0) tlm[1] = tl_now();  // (its threshold found)
#endif
  if (real && HALF) {
    for (int tap = lane; tap < a.t; tap += 32) {
      if (tap != lane) h = __ldg(src2 + tap);
      ps[tap] = __popc(h.x) + __popc(h.y);
    }
  } else if (real) {
    for (int q0 = lane; q0 < a.kc; q0 += 4 * 32) {
      if (q0 != lane) load4(q0);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (q0 + 32 * j < a.kc)
          atomicAdd(&ps[(q0 + 32 * j) / a.p],
                    __popc(v[j].x) + __popc(v[j].y) + __popc(v[j].z) + __popc(v[j].w));
    }
  }
  __syncwarp();
#ifdef JAX_BINCONV_TIMELINE
  if (tlm && threadIdx.x == 0) tlm[0] = tl_now();  // (warp 0's popcounts added)
#endif
  int w1all = 0;
  for (int tap = 0; tap < a.t; ++tap) w1all += ps[tap];
  for (int cls = lane; cls < ncls; cls += 32) {
    const int cy = cls / a.ncx, cx = cls - cy * a.ncx;
    int w1v = 0;
    for (int dy = a.cy_a[cy]; dy < a.cy_b[cy]; ++dy)
      for (int dx = a.cx_c[cx]; dx < a.cx_d[cx]; ++dx) w1v += ps[dy * a.kw + dx];
    const int term = !real ? 0
                     : a.type == XNOR ? 2 * a.pv * w1all - (2 + 2 * a.pv) * w1v
                                      : a.pv * (w1all - w1v);
    // thr: the convolution compares kmul P + rowconst (acc without the
    // column term) with the bound less the term.
    a.tab[(long long)cls * a.opad + o] = a.thr ? bound - term : term;
  }
  if (a.thr && lane == 0) a.tab[(long long)ncls * a.opad + o] = flip;
}

// The tables (fast_tables_block, a.opad / 8 blocks) after pa.xblocks blocks
// of prep_x: with float x its packing in the same launch instead of a kernel
// of its own before (the convolution then reads x only after its wait,
// a.x_late); else pa.xblocks = 0. Launched with programmatic serialization
// too (sm_90): it may start while the kernel before it (which may have
// written w, x or the vectors) ends, so it waits for that kernel's
// completion before anything else, and only then lets the convolution start
// (whose prologue reads w, and x unless x_late).
template <bool HALF>
__global__ void __launch_bounds__(1024) fast_tables_kernel(PrepArgs pa, FastArgs a) {
#ifdef JAX_BINCONV_TIMELINE
  unsigned long long tl[5] = {tl_now(), 0, 0, 0, 0};
#endif
  pdl_wait();
#ifdef JAX_BINCONV_TIMELINE
  tl[1] = tl_now();
#endif
  pdl_launch_dependents();
  if (BINCONV_SW(a, 16)) return;
#ifdef JAX_BINCONV_TIMELINE
  unsigned long long* const tlm = tl + 3;
#else
  unsigned long long* const tlm = nullptr;
#endif
  // The tables' blocks after the packing's (blocks are dispatched in index
  // order), or before them with pa.tfirst (set_fast_fused_tables_first).
  const int b = (int)blockIdx.x, ntab = (int)gridDim.x - pa.xblocks;
  if (pa.tfirst ? b >= ntab : b < pa.xblocks)
    prep_x(pa, pa.tfirst ? b - ntab : b);
  else
    fast_tables_block<HALF>(a, pa.tfirst ? b : b - pa.xblocks, tlm);
#ifdef JAX_BINCONV_TIMELINE
  __syncthreads();
  tl[2] = tl_now();
  if (threadIdx.x == 0) tl_put(0, tl, 5);
#endif
}

// A slot row is stored chunk-planar: its plane c (16-byte chunk c of every
// pixel's channels) holds the row's wslot pixels in order, so the 8
// consecutive pixels of one ldmatrix phase are 128 contiguous bytes (no bank
// conflict), a whole slot row is one tensor-map box, and the address of
// (pixel, tap, chunk) is a per-lane base plus a per-K-chunk offset from a
// table: one add per fragment.
__device__ __forceinline__ void ldmatrix_x4_at(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// wgmma (sm_90a only: __CUDA_ARCH_FEAT_SM90_ALL; the host launches
// fast_conv_kernel<EPI, false, true> only on compute capability 9.0 from a
// build with sm_90a code, JAX_BINCONV_HAVE_SM90A). A from registers (the
// ldmatrix fragments of mma.sync m16n8k256: warp w of the warpgroup gives
// rows 16 w .. 16 w + 15), B from shared memory by a matrix descriptor:
// the weights K-major with the 128-byte swizzle (wg_b_offset), the X1
// operand's ones without swizzle (core matrices of 8 rows x 16 bytes, LBO
// the byte step between the two core matrices of a K step, SBO the step
// between 8-row groups; that reading checked on the H100 by
// cpp/cuda/tools/wgmma_probe.cu).
__device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((addr & 0x3FFFF) >> 4) | ((uint64_t)((lbo & 0x3FFFF) >> 4) << 16) |
         ((uint64_t)((sbo & 0x3FFFF) >> 4) << 32);
}
__device__ __forceinline__ void wg_fence() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wg_wait() {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Named barriers (bar.sync / bar.arrive id, n: n threads, whole warps).
__device__ __forceinline__ void named_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
// Orders this thread's generic-proxy writes to shared memory before later
// async-proxy reads (wgmma's B operand).
__device__ __forceinline__ void fence_proxy_async() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// The 64 accumulator operands of an m64n128 wgmma (constraint c) and their
// register list.
#define BINCONV_WG8(c, i)                                                                   \
  c(d[i]), c(d[i + 1]), c(d[i + 2]), c(d[i + 3]), c(d[i + 4]), c(d[i + 5]), c(d[i + 6]), \
      c(d[i + 7])
#define BINCONV_WG64(c)                                                                    \
  BINCONV_WG8(c, 0), BINCONV_WG8(c, 8), BINCONV_WG8(c, 16), BINCONV_WG8(c, 24),           \
      BINCONV_WG8(c, 32), BINCONV_WG8(c, 40), BINCONV_WG8(c, 48), BINCONV_WG8(c, 56)
#define BINCONV_WG_D64                                                                     \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,"                                \
  "%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,"                       \
  "%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,"                       \
  "%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
// d (64 per thread) = popc(A AND B) over 256 bits (+ d where acc != 0), m64n128.
// (acc = 0 for the first K step instead of zeroing d: a non-wgmma
// instruction that writes the accumulators makes ptxas serialize the
// wgmmas.)
__device__ __forceinline__ void wgmma_n128(int (&d)[64], const uint32_t (&a)[4], uint64_t bdesc,
                                           int acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc " BINCONV_WG_D64
      ", {%64,%65,%66,%67}, %68, p;\n"
      "}\n"
      : BINCONV_WG64("+r")
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc), "r"(acc));
#endif
}
// d (4 per thread) = popc(A AND B) (+ d where acc != 0), m64n8 (X1 against
// all-ones B).
__device__ __forceinline__ void wgmma_n8(int (&d)[4], const uint32_t (&a)[4], uint64_t bdesc,
                                         int acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n .reg .pred p;\n setp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc "
      "{%0,%1,%2,%3}, {%4,%5,%6,%7}, %8, p;\n}\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(bdesc), "r"(acc));
#endif
}

// The same with A from shared memory too (a K-major descriptor without
// swizzle: 8 rows x 16 bytes per core matrix, LBO the step to the K step's
// second chunk, SBO the step between 8-row groups).
// FIRST: d = popc(A AND B), d write-only (the K loop's first step: no
// accumulator value is live before it); else d += popc(A AND B).
template <bool FIRST>
__device__ __forceinline__ void wgmma_n128_ss(int (&d)[64], uint64_t adesc, uint64_t bdesc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (FIRST)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc " BINCONV_WG_D64
        ", %64, %65, p;\n}\n"
        : BINCONV_WG64("=r")
        : "l"(adesc), "l"(bdesc));
  else
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k256.s32.b1.b1.and.popc " BINCONV_WG_D64
        ", %64, %65, 1;\n"
        : BINCONV_WG64("+r")
        : "l"(adesc), "l"(bdesc));
#endif
}
#undef BINCONV_WG_D64
#undef BINCONV_WG64
#undef BINCONV_WG8
template <bool FIRST>
__device__ __forceinline__ void wgmma_n8_ss(int (&d)[4], uint64_t adesc, uint64_t bdesc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  if constexpr (FIRST)
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, 0, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc "
        "{%0,%1,%2,%3}, %4, %5, p;\n}\n"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "l"(adesc), "l"(bdesc));
  else
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k256.s32.b1.b1.and.popc "
        "{%0,%1,%2,%3}, %4, %5, 1;\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "l"(adesc), "l"(bdesc));
#endif
}

// Sigmoid and tanh, out of line: the float epilogue is unrolled over a
// thread's 64 outputs per tile, and inlining expf / tanhf (and a switch) at
// each of them made the kernel's code larger than the instruction cache
// (float output ran 2-3x slower than packed output for that alone).
__device__ __noinline__ float fast_act_general(float v, int act, float slope) {
  return apply_activation(v, act, slope);
}

// Slot item s = j kh + dy of the tile whose first output row is row0 (in
// image img0): output row j reads slot row j sh + (img - img0) E + dy dh,
// input row iy of image img. False where the row need not be copied: row
// j - dyback of the same image and tile brings the same input row into the
// same slot row (its tap dy + dyback sh / dh), unless dy is in dymask.
__device__ __forceinline__ bool fast_slot_row(const FastArgs& a, int row0, int img0, int s,
                                              int& srow, int& iy, int& img) {
  const int j = fdiv(s, a.div_kh), dy = s - j * a.kh;
  const int rg = row0 + j;
  img = fdiv(rg, a.div_ho);
  const int y = rg - img * a.ho;
  if (j >= a.dyback && y >= a.dyback && !((a.dymask >> dy) & 1)) return false;
  srow = j * a.sh + (img - img0) * a.erow + dy * a.dh;
  iy = y * a.sh + dy * a.dh - a.pt;
  return true;
}

template <int EPI, bool HALF, int WG>
__global__ void __launch_bounds__(kFastThreads, WG ? 1 : 2)
    fast_conv_kernel(FastArgs a, const __grid_constant__ CUtensorMap xmap,
                     const __grid_constant__ CUtensorMap wmap) {
  extern __shared__ __align__(128) unsigned char fsm[];
#ifdef JAX_BINCONV_TIMELINE
  // The wgmma kernel's timeline marks (see TlRec): TLS(i) the prologue and
  // first tile's, TTS(i) each tile's (kept for tiles 2 and 3 in tj1_, tj2_).
  // ptxas may move a timer read across a barrier wait (TLS(5), after the
  // MMA-order barrier, read before it in session 11's runs).
  unsigned long long tl_[10] = {}, tt_[4] = {}, tj1_[4] = {}, tj2_[4] = {}, tsub_[4] = {};
#define TLS(i) (tl_[i] = tl_now())
#define TTS(i) (tt_[i] = tl_now())
#define TSUB(i) \
  if (j == 1) tsub_[i] = tl_now()
  TLS(0);
#else
#define TLS(i) (void)0
#define TTS(i) (void)0
#define TSUB(i) (void)0
#endif
  // WG: 1 the wgmma kernel with A from registers, 2 from shared memory (ss).
  constexpr bool SS = WG == 2;
  if (BINCONV_SW(a, 8)) return;
  const int ncls = a.ncy * a.ncx;
  const FastSmem L = fast_smem(a, HALF);
  uint4* bs = reinterpret_cast<uint4*>(fsm + L.b);
  int* ktab = reinterpret_cast<int*>(fsm + L.ktab);
  float* csc = reinterpret_cast<float*>(fsm + L.csc);
  float* cbi = reinterpret_cast<float*>(fsm + L.cbi);
  int4* rows = reinterpret_cast<int4*>(fsm + L.rows);
  int2* erec = reinterpret_cast<int2*>(fsm + L.erec);
  int* ycls = reinterpret_cast<int*>(fsm + L.ycls);
  int* xcls = reinterpret_cast<int*>(fsm + L.xcls);
  int2* ltab = reinterpret_cast<int2*>(fsm + L.ltab);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nt = blockIdx.x % a.ntiles;
  const int mstep = gridDim.x / a.ntiles;
  const int n0 = nt * kFastBN;

  const int rowpitch = a.rowpitch;  // wslot p
  const uint32_t wbar = smem_u32(fsm + L.mbar);
  const uint32_t sbar0 = wbar + (WG ? 8 * kWgWbars : 8);  // slot buffer b: sbar0 + 8 b
  const uint32_t tbar = sbar0 + 32;  // WG: the table copy's, after the 4 slot buffers'
  const bool tma = kFastTma && a.tma_x;
  // ---- input slots of one M tile. Output row j of the tile (image img0 + d)
  // reads slot rows j sh + d E + dy dh (dy < kh): within an image, the rows
  // of consecutive output rows overlap as the input rows do, and each image
  // the tile touches gets its own rows (E = max((kh - 1) dh + 1 - sh, 0)
  // more per boundary). Each slot row is copied once (fast_slot_row).
  // (lt, nthr, lw, nwarps: the thread's index among the nthr threads that
  // load, its warp's among their nwarps warps; the whole block, or with
  // WG one warpgroup, which loads its own tiles into its own buffers.)
  auto slot_buf = [&](int buf) {
    return !WG ? (buf ? L.a1 : L.a0) : buf == 0 ? L.a0 : buf == 1 ? L.a1 : buf == 2 ? L.a2 : L.a3;
  };
  auto load_tile = [&](int buf, int mt, int lt, int nthr, int lw, int nwarps) {
    const uint32_t as = smem_u32(fsm + slot_buf(buf));
    const int row0 = fdiv(mt * kFastBM, a.div_wo);
    const int img0 = fdiv(row0, a.div_ho);
    if (SS) {
      // ss: a box per group of 8 output pixels (group q of the tile: tile
      // row 8 q + j is pixel x0 + j of its output row), issued by lanes 0-3
      // of the 4 warps; groups past the last leave their part as it was
      // (their rows are not stored).
      const uint32_t bar = sbar0 + 8 * buf;
      // (ss_gt: half tiles run for float output and packed output by
      // thresholds; EPI_PACKED's kernels keep their code as it was, S24)
      const int gt = EPI != EPI_PACKED ? a.ss_gt : 16;
      const int q = (lt & 31) * nwarps + lw, gi = mt * gt + q;
      if (q < gt && gi < a.ss_groups) {
        const int rg = fdiv(gi, a.div_gpr), x0 = 8 * (gi - rg * a.ss_gpr);
        const int img = fdiv(rg, a.div_ho), y = rg - img * a.ho;
        mbar_expect_tx(bar, (uint32_t)(16 * a.ss_w8 * a.p * a.ss_rows));
        tensor_copy_5d(as + q * a.ss_gp, &xmap, 0, x0 - a.pl, 0, y * a.sh - a.pt, img, bar);
      }
      mbar_arrive(bar);
      return;
    }
    if (tma) {
      // A thread per (row, dy): one tensor-map box of all its chunk planes,
      // zero outside the image (the padding) and past the last image.
      // (S7-3: as fast as a box per chunk plane, with p times fewer copies.)
      const uint32_t bar = sbar0 + 8 * buf;
      const int items = a.rmax * a.kh;
      if constexpr (WG) {
        // Item lane * 4 + w to warp w (a warp issues its copies one lane at
        // a time: spread, each of the 4 warps has a quarter of them), and
        // one expect-tx per warp and round for all its copies (the phase
        // cannot complete before the warpgroup's arrivals below).
        for (int q0 = 0; q0 < items; q0 += nthr) {
          const int q = q0 + (lt & 31) * nwarps + lw;
          int srow = 0, iy = 0, img = 0;
          const bool cp = q < items && fast_slot_row(a, row0, img0, q, srow, iy, img);
          const uint32_t cps = __ballot_sync(kFull, cp);
          if (lane == 0 && cps) mbar_expect_tx(bar, (uint32_t)(__popc(cps) * 16 * rowpitch));
          __syncwarp();
          if (cp) tensor_copy_5d(as + 16 * srow * rowpitch, &xmap, 0, -a.pl, 0, iy, img, bar);
        }
      } else {
        for (int q = lt; q < items; q += nthr) {
          int srow, iy, img;
          if (!fast_slot_row(a, row0, img0, q, srow, iy, img)) continue;
          mbar_expect_tx(bar, (uint32_t)(16 * rowpitch));
          tensor_copy_5d(as + 16 * srow * rowpitch, &xmap, 0, -a.pl, 0, iy, img, bar);
        }
      }
      mbar_arrive(bar);
      return;
    }
    // cp.async: a warp per (row, dy), its lanes over the slot's chunks.
    for (int s = lw; s < a.rmax * a.kh; s += nwarps) {
      int srow, iy, img;
      if (!fast_slot_row(a, row0, img0, s, srow, iy, img)) continue;
      const bool rowok = img < a.n && (unsigned)iy < (unsigned)a.h;
      const uint32_t row_chunk = (uint32_t)((img * a.h + iy) * a.w) * (uint32_t)a.p;
      const uint32_t dst_slot = as + 16 * srow * rowpitch;
      if constexpr (HALF) {  // 8-byte pixels, two per slot unit (ltab: 8-byte indices)
        for (int q = lane; q < 2 * rowpitch; q += 32) {
          const int2 e = ltab[q];
          const bool ok = rowok && e.y >= 0;
          const uint2* src = reinterpret_cast<const uint2*>(a.x) + (ok ? row_chunk + (uint32_t)e.y : 0u);
          asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst_slot + 8 * e.x),
                       "l"(src), "r"(ok ? 8 : 0));
        }
      } else {
        for (int q = lane; q < rowpitch; q += 32) {
          const int2 e = ltab[q];
          const bool ok = rowok && e.y >= 0;
          const uint4* src = a.x + (ok ? row_chunk + (uint32_t)e.y : 0u);
          asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst_slot + 16 * e.x),
                       "l"(src), "r"(ok ? 16 : 0));
        }
      }
    }
  };

  // ---- weights of this block's channels (zero rows past O). sm_90: one
  // tensor-map box for all 128 rows (O a multiple of 32), else one bulk copy
  // per row, completing on an mbarrier that every thread waits on before the
  // first tile; older GPUs (or the knob): 16-byte cp.async.
  const bool wtmap = kFastTma && a.wcopy == kWeightsTensorMap;
  const bool wbulk = kFastTma && a.wcopy == kWeightsBulk;
  if (kFastTma) {
    if (tid == 0) {
      for (int b = 0; b < (WG ? kWgWbars : 1); ++b) mbar_init(wbar + 8 * b, 1);
      for (int b = 0; b < (WG ? 4 : 2); ++b) mbar_init(sbar0 + 8 * b, WG ? 128 : kFastThreads);
      if (WG) mbar_init(tbar, 32);  // the table copy (warp 0's lanes)
    }
    __syncthreads();  // the barriers are initialized before any copy signals them
  }
  // The first tile's slots: by tensor map at once (no table needed); by
  // cp.async once ltab is built. Either before waiting for the tables
  // kernel: x was complete before that kernel started (stream order), and
  // this one starts only after it has started.
  const int mt0 = blockIdx.x / a.ntiles;
  // WG: warpgroup g runs the block's tiles k = g, g + 2, ... (M tile mt0 + k
  // mstep) in buffers 2 g, 2 g + 1.
  // (ss: the warpgroup index by a shuffle, which ptxas knows to be
  // warp-uniform: the A descriptors derive from it and must sit in uniform
  // registers; computed from the thread index they made ptxas serialize
  // every wgmma, C7520.)
  const int wgi = SS ? __shfl_sync(kFull, warp >> 2, 0) : warp >> 2;
  const int wlt = tid & 127, wlw = warp & 3;
  const int mtg = WG ? wg_tile(a, mt0, wgi, mstep) : mt0;
  auto load_first = [&]() {
    if (mtg >= a.mtiles) return;
    if (WG)
      load_tile(2 * wgi, mtg, wlt, 128, wlw, 4);
    else
      load_tile(0, mt0, tid, kFastThreads, warp, kFastThreads / 32);
  };
  if (tma && !a.x_late) load_first();
  TLS(1);
  // wgmma: the weights' 1024-aligned base (swizzle atoms).
  const uint32_t wg_bbase = (smem_u32(bs) + 1023u) & ~1023u;
  // wgmma, weights by tensor map: thread t < kWgWbars issues K block t (the
  // last of them: the rest too) on mbarrier t.
  auto issue_wg_weights = [&](int t) {
    const int kend = t == kWgWbars - 1 ? a.wg_kblocks : t + 1;
    mbar_arrive_expect_tx(wbar + 8 * t, (uint32_t)((kend - t) * kFastBN * 128));
    for (int kb = t; kb < kend; ++kb)
      tensor_copy_5d(wg_bbase + kb * (kFastBN * 128), &wmap, 16 * kb, 0, 0, 0,
                     EPI == EPI_FLOAT ? n0 / 16 : n0 / 4, wbar + 8 * t);
  };
  if (WG) {
    // Shared row f holds channel n0 + wg_chan_of_col(f), in K blocks of 8
    // chunks (wg_b_offset). By tensor map (O a multiple of 128): one box
    // per K block (zeros past kc: the padding chunks); else 16-byte cp.async.
    // (issue_wg_weights; with a.dbg_wdelay_us after the prologue's barrier
    // instead, late)
    if (wtmap && !a.dbg_wdelay_us && !BINCONV_SW(a, 2) && tid < min(a.wg_kblocks, kWgWbars)) {
      issue_wg_weights(tid);
    } else if (wtmap && a.dbg_wdelay_us) {
      // The test knob: poison (all ones) before the fence and barrier below.
      uint4* wb = reinterpret_cast<uint4*>(fsm + (wg_bbase - smem_u32(fsm)));
      for (int q = tid; q < a.wg_kblocks * kFastBN * 8; q += kFastThreads)
        wb[q] = make_uint4(kFull, kFull, kFull, kFull);
    } else if (!wtmap) {
      for (int q = tid; q < kFastBN * a.pitch_b; q += kFastThreads) {
        const int r = q / a.pitch_b, k = q - r * a.pitch_b;
        const int o = n0 + wg_chan_of_col<EPI>(r);
        const bool ok = o < a.o && k < a.kc;
        cp_async<16>(fsm + (wg_bbase - smem_u32(fsm)) + wg_b_offset(r, k),
                     a.wt + (ok ? (long long)o * a.kc + k : 0), ok);
      }
    }
  } else if (wtmap) {
    // The box's bytes, zero-filled parts included, complete the phase.
    if (tid == 0) {
      mbar_arrive_expect_tx(wbar, (uint32_t)(kFastBN * a.pitch_b * 16));
      tensor_copy_5d(smem_u32(bs), &wmap, 0, 0, 0, 0, EPI == EPI_FLOAT ? n0 / 16 : n0 / 32, wbar);
    }
  } else if (wbulk) {
    if (tid == 0)
      mbar_arrive_expect_tx(wbar, (uint32_t)(min(kFastBN, a.o - n0) * a.kc * 16));
    if (tid < kFastBN) {
      const int o = n0 + chan_of_col<EPI>(tid);
      if (o < a.o) {
        bulk_copy_to_smem(smem_u32(bs + tid * a.pitch_b), a.wt + (long long)o * a.kc,
                          (uint32_t)(a.kc * 16), wbar);
      } else {
        for (int k = 0; k < a.kc; ++k) bs[tid * a.pitch_b + k] = make_uint4(0, 0, 0, 0);
      }
    }
  } else if (HALF) {
    // C = 64: chunk k of a row = taps (dy, tpc j + hf), hf = 0, 1 (zeros
    // where tpc = 1 or past kw), 8 bytes each; weights are [O][t] 8-byte taps.
    for (int q = tid; q < 2 * kFastBN * a.kc; q += kFastThreads) {
      const int hf = q & 1, rk = q >> 1;
      const int r = fdiv(rk, a.div_kc), k = rk - r * a.kc;
      const int o = n0 + chan_of_col<EPI>(r);
      int dy, dx;
      const bool ok = half_chunk_tap(a, k, hf, dy, dx) && o < a.o;
      cp_async<8>(reinterpret_cast<uint2*>(bs + r * a.pitch_b + k) + hf,
                  reinterpret_cast<const uint2*>(a.wt) + (ok ? (long long)o * a.t + dy * a.kw + dx : 0),
                  ok);
    }
  } else {
    for (int q = tid; q < kFastBN * a.kc; q += kFastThreads) {
      const int r = fdiv(q, a.div_kc), k = q - r * a.kc;
      const int o = n0 + chan_of_col<EPI>(r);
      const bool ok = o < a.o;
      cp_async<16>(bs + r * a.pitch_b + k, a.wt + (long long)(ok ? o : 0) * a.kc + k, ok);
    }
  }
  cp_async_commit();
  if (!WG && 2 * a.ks > a.kc && !wtmap)  // (the tensor map reads zeros past kc)
    for (int r = tid; r < kFastBN; r += kFastThreads) bs[r * a.pitch_b + a.kc] = make_uint4(0, 0, 0, 0);
  // The small tables below start at different warps (vt: the thread's index
  // rotated), so that no warp builds them all while the others wait at the
  // barrier after them (in ncu, 6% of the stall samples of L3 at N = 256).
  auto vt = [&](int shift) { return (tid + shift) & (kFastThreads - 1); };
  for (int k = vt(0); k < 2 * a.ks + 2; k += kFastThreads) {
    // Byte offset of K chunk k from a lane's pixel base. The padding chunk
    // (odd kc) reads real data: its weights are zero, and the X1 MMA masks it.
    int e = 0;
    if (SS) {
      // ss: entry k < ks is K step k's A descriptor fields (start address
      // and LBO, >> 4) relative to the slot buffer: its chunks 2 k and 2 k
      // + 1 at their offsets in a group's box (see FastArgs' ss_ fields), the
      // padding chunk (odd kc) 16 bytes after the last (any data: its
      // weights are zero and the X1 wgmma masks it).
      auto off = [&](int kk) {
        const int tap = kk / a.p, c = kk - tap * a.p;
        const int dy = tap / a.kw, dx = tap - dy * a.kw;
        return 16 * ((dy * a.dh * a.p + c) * a.ss_w8 + dx * a.dw);
      };
      if (k < a.ks) {
        const int e0 = off(2 * k), e1 = 2 * k + 1 < a.kc ? off(2 * k + 1) : e0 + 16;
        e = (e0 >> 4) | (((e1 - e0) >> 4) << 16);
      }
    } else if (k < a.kc && HALF) {  // slot unit x sw + tpc j dw: pixels of taps (dy, tpc j [+ 1])
      int dy, dx;
      half_chunk_tap(a, k, 0, dy, dx);
      e = 16 * (dy * a.dh * rowpitch + dx * a.dw);
    } else if (k < a.kc) {
      const int tap = k / a.p, c = k - tap * a.p;
      const int dy = tap / a.kw, dx = tap - dy * a.kw;
      e = 16 * (dy * a.dh * rowpitch + c * a.wslot + dx * a.dw);
    }
    ktab[k] = e;
  }
  // half: the X1 MMA's B registers per K step i and lane half (tq < 2: the
  // chunk's first pixel, else its second): ones where that pixel is a tap
  // (x1m[2 i + h] = masks of chunks 2 i and 2 i + 1).
  uint2* x1m = reinterpret_cast<uint2*>(fsm + L.x1m);
  for (int q = vt(64); HALF && q < 2 * (a.ks + 1); q += kFastThreads) {
    const int i = q >> 1, h = q & 1;
    auto mask = [&](int k) {
      int dy, dx;
      return half_chunk_tap(a, k, h, dy, dx) ? kFull : 0u;
    };
    x1m[q] = make_uint2(mask(2 * i), mask(2 * i + 1));
  }
  // Per output row y / column x: box class index | valid taps along the axis << 8.
  auto tabulate = [&](int* dst, int t0, int extent, int stride, int pad, int size, int k, int dil,
                      const int* lo_tab, const int* hi_tab, int n) {
    for (int v = t0; v < extent; v += kFastThreads) {
      int lo, hi;
      const int ci = axis_class(v * stride - pad, size, k, dil, lo_tab, hi_tab, n, lo, hi);
      dst[v] = max(ci, 0) | ((hi - lo) << 8);
    }
  };
  tabulate(ycls, vt(192), a.ho, a.sh, a.pt, a.h, a.kh, a.dh, a.cy_a, a.cy_b, a.ncy);
  tabulate(xcls, vt(128), a.wo, a.sw, a.pl, a.w, a.kw, a.dw, a.cx_c, a.cx_d, a.ncx);
  // Per slot element q (pixel px, chunk c): destination chunk in the slot
  // (chunk-planar) and source chunk in the input row, -1 outside the image.
  // half: element q = 8-byte half q & 1 of slot unit q >> 1, pixel (q >> 1)
  // + (q & 1) of the slot row.
  for (int q = tid; !tma && HALF && q < 2 * rowpitch; q += kFastThreads) {
    const int ix = (q >> 1) + (q & 1) - a.pl;
    ltab[q] = make_int2(q, (unsigned)ix < (unsigned)a.w ? ix : -1);
  }
  for (int q = tid; !tma && !HALF && q < rowpitch; q += kFastThreads) {
    const int px = q / a.p, c = q - px * a.p;
    const int ix = px - a.pl;
    ltab[q] = make_int2(c * a.wslot + px, (unsigned)ix < (unsigned)a.w ? ix * a.p + c : -1);
  }
  if (WG && tid < 32)  // the X1 wgmma's B: 24 chunks of ones, then 8 of zeros
    reinterpret_cast<uint4*>(fsm + L.x1m)[tid] =
        tid < 24 ? make_uint4(kFull, kFull, kFull, kFull) : make_uint4(0, 0, 0, 0);
  if (EPI != EPI_THR && tid >= kFastThreads - kFastBN) {  // warps 4-7 (0-3 copy weights)
    const int r = tid - (kFastThreads - kFastBN), o = min(n0 + r, a.o - 1);
    csc[r] = __ldg(a.osc + o);
    cbi[r] = __ldg(a.obias + o);
  }
  if (WG) {
    // wgmma reads the weights and the ones through the async proxy: the
    // generic-proxy writes (st.shared, cp.async) must be fenced before the
    // barrier.
    if (!wtmap) cp_async_wait<0>();
    fence_proxy_async();
  }
  __syncthreads();  // ltab
  TLS(2);
  if (WG && wtmap && a.dbg_wdelay_us && tid >= 128 && tid - 128 < min(a.wg_kblocks, kWgWbars)) {
    // The test knob: warpgroup 1 issues the weights, late (warpgroup 0's
    // first K loop must wait for them).
    for (int u = 0; u < a.dbg_wdelay_us; ++u) __nanosleep(1000);
    issue_wg_weights(tid - 128);
  }

  if (!tma && !a.x_late) load_first();
  cp_async_commit();
  // This block's rows of the (class, channel) table, written by
  // fast_tables_kernel (launched just before): read after pdl_wait. With
  // float x (x_late) the first tile's slots wait for that kernel too (it
  // packs x), and the table comes with them; else only the first tile's
  // epilogue needs it: the wait comes after that tile's GEMM, which so
  // overlaps the tables kernel (at N = 1, one tile per block, that kernel's
  // time was on the critical path).
  auto load_tab = [&]() {
    pdl_wait();
    constexpr int per_row = kFastBN * 4 / 16;  // chunks per table row
    for (int q = tid; q < fast_tab_rows(a) * per_row; q += kFastThreads) {
      const int row = q / per_row, j = q - row * per_row;
      cp_async<16>(fsm + L.tab + q * 16, a.tab + (long long)row * a.opad + n0 + j * 4, true);
    }
    cp_async_commit();
  };
  // WG: the table by warp 0 (16-byte cp.async into the wg_tab_at layout),
  // each lane's copies completing an arrival on its own mbarrier (the
  // warpgroups meet at no block barrier).
  auto load_tab_wg = [&]() {
    pdl_wait();
    constexpr int per_row = kFastBN * 4 / 16;  // chunks per table row
    for (int q = lane; q < fast_tab_rows(a) * per_row; q += 32) {
      const int row = q / per_row, j = q - row * per_row;
      cp_async<16>(fsm + L.tab + 16 * (row * per_row) + 4 * wg_tab_at<EPI>(4 * j),
                   a.tab + (long long)row * a.opad + n0 + j * 4, true);
    }
    cp_async_mbar_arrive(tbar);
  };
  if (a.x_late) {
    pdl_wait();
    load_first();
    if (!WG)
      load_tab();
    else if (warp == 0)
      load_tab_wg();
  }

  // The thread's 8 accumulators (nf, jj) are channels n0 + wn + 8 tq + 2 nf + jj
  // (fast_chan_of_col): bit 8 tq + 2 nf + jj of the warp's packed word
  // (EPI_FLOAT: n0 + wn + 16 (nf >> 1) + 4 tq + 2 (nf & 1) + jj, see chan).
  const int wm = (warp >> 2) * 64, wn = (warp & 3) * 32, wq = warp & 3;
  const int gq = lane >> 2, tq = lane & 3;
  const int kmul = a.type == XNOR ? 4 : 1;
  const bool need_x1 = a.type == XNOR;
  const int half = lane >> 4;
  const int b_row = (lane & 7) + (lane >> 4) * 8, b_half = (lane >> 3) & 1;
  const int ow = (a.o + 31) / 32;
  const int rowpv = a.pv * a.cg;
  const ActSelect asel = act_select(a.act, a.slope);
  if (!WG && (wtmap || wbulk)) mbar_wait(wbar, 0);  // the weights are in shared memory
  TLS(3);

  // ---- per-row data (does not need this tile's input): the row term
  // without X1, beta, the row's box class (as its offset in the table)
  // and the byte offset of its first A element in the slot buffer.
  auto row_record = [&](int m, int row0, int img0) {
    const bool valid = m < a.m;
    const int rg = fdiv(m, a.div_wo);
    const int x = m - rg * a.wo;
    const int img = fdiv(rg, a.div_ho);
    const int y = rg - img * a.ho;
    const int yc = ycls[y], xc = xcls[x];
    const int v = (yc >> 8) * (xc >> 8);
    float beta = 1.0f;
    if (a.beta) {
      if (a.x_packed) {
        beta = (float)v / (float)a.t;
      } else if (valid) {
        int ba, bb, bc, bd;
        tap_range(y * a.sh - a.pt, a.h, a.kh, a.dh, ba, bb);
        tap_range(x * a.sw - a.pl, a.w, a.kw, a.dw, bc, bd);
        float asum = 0.0f;
        for (int dy = ba; dy < bb; ++dy)
          for (int dx = bc; dx < bd; ++dx)
            asum += __ldg(a.aimg + ((long long)img * a.h + y * a.sh + dy * a.dh - a.pt) * a.w +
                          x * a.sw + dx * a.dw - a.pl);
        beta = asum / (float)a.t;
      }
    }
    const int srow = (rg - row0) * a.sh + (img - img0) * a.erow;
    return make_int4(v * a.cg - rowpv * (a.t - v), __float_as_int(beta),
                     ((yc & 255) * a.ncx + (xc & 255)) * kFastBN, 16 * (srow * rowpitch + x * a.sw));
  };
  if constexpr (WG) {
    // ---- ping-pong: warpgroup g runs whole 128-row tiles k = g, g + 2, ...
    // of the block's list (M tile mt0 + k mstep), with its own two slot
    // buffers (2 g, 2 g + 1), rows[] records and mbarriers, meeting the
    // other warpgroup at no barrier but the MMA order: tile k's wgmmas are
    // issued after tile k - 1's (named barriers 3 + g), so that one
    // warpgroup's epilogue runs while the other's wgmmas do.
    const int ntile = wg_tile_count(a.mtiles, mstep, a.wg_early, a.wg_dlate, mt0);
    // A block with one tile (fewer tiles than SMs, N = 1): warpgroup 1 has
    // none, so its first warp copies the table for warpgroup 0's epilogue,
    // its pdl_wait overlapping warpgroup 0's K loop instead of following
    // it (S22-7, L4 N = 1: the table landed 0.55 us after that K loop). It
    // waits for its copies before it exits.
    const bool tab_wg1 = !a.x_late && ntile == 1 && !BINCONV_SW(a, 32);
    if (tab_wg1 && warp == 4) {
      load_tab_wg();
      mbar_wait(tbar, 0);
    }
    // The split epilogue (FastArgs::wg_split; float output only: packed
    // output by thresholds, ~3 instructions an output, was no faster split
    // by rows, S23-3, on a build with serialized wgmmas, so not settled;
    // packed output through the float epilogue does not run here in
    // "auto"): warpgroup 1 (the helper) runs the epilogue of the
    // block's one tile's channels 64-127, warpgroup 0 that of 0-63. Warpgroup
    // 0 hands the helper their accumulators and the X1s through the
    // weights' shared memory once its wgmmas are done (72 words a thread,
    // word c of thread t at c * 128 + t: 36864 bytes; 3 K blocks of weights
    // are 48 KB) and runs channels 0-63 from acc0 / acc1; the helper holds
    // its channels as quads 0-3 of h0 / h1.
    const bool split = SS && EPI == EPI_FLOAT && a.wg_split && ntile == 1 && a.wg_kblocks >= 3;
    const bool helper = split && wgi == 1;
    int* hand = reinterpret_cast<int*>(fsm + (wg_bbase - smem_u32(fsm)));
    const int* tab_s = reinterpret_cast<const int*>(fsm + L.tab);
    const int* kp = ktab + half;
    // K step i: K block i >> 2, +32 bytes per step inside it; 128-byte
    // swizzle (descriptor bits 62-63 = 1), SBO 1024, LBO unused (1).
    const uint64_t bdesc = wg_desc(wg_bbase, 16, 1024) | (1ull << 62);
    const uint32_t ones = smem_u32(fsm + L.x1m);
    const uint64_t x1full = wg_desc(ones, 128, 256), x1last = wg_desc(ones + 256, 128, 256);
    uint32_t flipw = 0;  // thr: flip bits of the thread's word (channels 32 tq ..)
    [[maybe_unused]] uint32_t sink = 0;  // (switch 8192)
    int j = 0;
    for (int k = helper ? 0 : wgi; k < ntile; k += 2, ++j) {
      const int mt = wg_tile(a, mt0, k, mstep);
      const int mt_next = k + 2 < ntile ? wg_tile(a, mt0, k + 2, mstep) : a.mtiles;
      // (FastArgs::wg_skip_half) Rows 64-127 (groups 8-15) hold no pixel:
      // their wgmmas and epilogue are skipped, acc1 / x11 never defined.
      // (The helper's k = 0 is warpgroup 0's tile: the same answer.)
      // Half tiles (ss_gt = 8) always. Float output (lo_only) takes the
      // 128-row path's K loop without rows 64-127; in the kernels for
      // packed output that K loop made ptxas serialize every wgmma (C7511,
      // "insufficient register resources": S24-5, L7 and L4 packed at N =
      // 256 ran 28-35% slower), so packed output by thresholds runs a path
      // of its own below (lo_thr), with accumulators of its own (session
      // 25), and EPI_PACKED none.
      const bool rows_lo = SS && (a.ss_gt == 8 || (a.wg_skip_half && mt * 16 + 8 >= a.ss_groups));
      const bool lo_only = EPI == EPI_FLOAT && rows_lo;
      const bool lo_thr = EPI == EPI_THR && rows_lo;
      TTS(0);
      const int buf = helper ? 0 : 2 * wgi + (j & 1);  // (the helper reads wg0's rows[])
      const int m0 = mt * kFastBM;
      const int row0 = fdiv(m0, a.div_wo);
      const int img0 = fdiv(row0, a.div_ho);
      // The warpgroup's last tile (see the mma.sync loop).
      if (mt_next >= a.mtiles && !BINCONV_SW(a, 16384)) pdl_launch_dependents();
      if (helper || (SS && BINCONV_SW(a, 1024))) {
        // (the helper: warpgroup 0 writes the records; experiment 1024: no
        // row records, the K loop of this form needs none)
      } else if constexpr (SS) {
        // Tile row wlt = 8 q + j: pixel 8 xg + j of output row rg (group mt
        // ss_gt + q = rg gpr + xg, q < ss_gt); .w = its output row m (a.m
        // where none: not stored).
        const int gt = EPI != EPI_PACKED ? a.ss_gt : 16;  // (see load_tile)
        const int gi = mt * gt + (wlt >> 3);
        int m = a.m, x = a.wo;
        if ((wlt >> 3) < gt && gi < a.ss_groups) {
          const int rg = fdiv(gi, a.div_gpr);
          x = 8 * (gi - rg * a.ss_gpr) + (wlt & 7);
          if (x < a.wo) m = rg * a.wo + x;
        }
        int4 rec = row_record(m, row0, img0);
        rec.w = m;
        rows[buf * kFastBM + wlt] = rec;
      } else {
        rows[buf * kFastBM + wlt] = row_record(m0 + wlt, row0, img0);
      }
      TSUB(0);
      // (experiment 512: only the first tile's slots are copied)
      if (tma && !helper && (j == 0 || !BINCONV_SW(a, 512)))
        mbar_wait(sbar0 + 8 * buf, (uint32_t)(j >> 1) & 1);  // this tile's slots
      cp_async_wait<0>();  // the slots (cp.async)
      TSUB(1);
      // The warpgroup's barrier: its slots and rows[] are visible, and its
      // warps are past its previous tile's epilogue (the other buffer and
      // its records may be refilled).
      if (j == 0) TLS(4);
      named_sync(1 + wgi, 128);
      TSUB(2);
      // The warpgroup's next tile's slots into the other buffer: A from
      // registers, now; from shared memory, after this tile's wgmmas are
      // issued (below: the copies' issue, one lane per box, stalled the K
      // loop's start; the other warpgroup's tile comes in between).
      const bool prefetch = mt_next < a.mtiles && !BINCONV_SW(a, 512);
      // (register-A form late too, S13-14: no gain beyond noise)
      const bool prefetch_late = SS && !BINCONV_SW(a, 64);  // (64: the experiment's old order)
      // (A from registers, the copies issued in the K loop after step 1's
      // wgmmas instead, S14-9: L2, L3 within noise, L7 13% slower; their
      // issue takes 0.5-0.6 us of each tile here, S14-8)
      if (prefetch && !prefetch_late) load_tile(buf ^ 1, mt_next, wlt, 128, wlw, 4);
      cp_async_commit();
      TSUB(3);
      const uint32_t as_addr = smem_u32(fsm + slot_buf(buf));
      const int4* rows_b = rows + buf * kFastBM;
      // ---- epilogue (EPI_FLOAT, EPI_PACKED; EPI_THR below): thread (gq,
      // tq) has rows wrow + gq + 8 h (h = 0, 1) of each half, accumulators
      // c = 2 j + jj (acc[4 j + 2 h + jj]) of channels n0 + wg_chan(tq, c);
      // 4 consecutive c are 4 consecutive channels.
      // (ng, coff: EPI_FLOAT's quads g < ng, channels from coff; the split
      // runs channels 0-63 or 64-127 from quads 0-3 of acc, see split)
      auto epi_half = [&](const auto& acc, const int (&x1acc)[4], int wrow, auto ng_const,
                          int coff) {
        constexpr int NG = decltype(ng_const)::value;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wrow + gq + 8 * h;
          const int4 rd = rows_b[r];
          const int m = SS ? rd.w : m0 + r;  // (ss: the record has it)
          const int ex = need_x1 ? rd.x - 2 * x1acc[2 * h] : 0;
          const int* tb = tab_s + rd.z;  // the row's class
          auto accv = [&](int c) { return acc[4 * (c >> 1) + 2 * h + (c & 1)]; };
          const float beta = __int_as_float(rd.y);
          // Values of accumulators 4 g .. 4 g + 3 (channels wg_chan(tq, 4 g) + 0..3).
          auto quad = [&](int g, float (&v)[4], auto plain_const) {
            constexpr bool PLAIN = decltype(plain_const)::value;  // no beta, linear
            const int ch = wg_chan<EPI>(tq, 4 * g) + coff;
            const int4 t4 = *reinterpret_cast<const int4*>(tb + wg_tab_at<EPI>(ch));
            const float4 s4 = *reinterpret_cast<const float4*>(csc + ch);
            const float4 b4 = *reinterpret_cast<const float4*>(cbi + ch);
            const int tt[4] = {t4.x, t4.y, t4.z, t4.w};
            const float ss[4] = {s4.x, s4.y, s4.z, s4.w}, bb[4] = {b4.x, b4.y, b4.z, b4.w};
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              const float z = (float)(kmul * accv(4 * g + q) + ex + tt[q]);
              if (PLAIN) {
                v[q] = BINCONV_FADD(BINCONV_FMUL(z, ss[q]), bb[q]);
              } else {
                v[q] = a.beta ? epilogue_affine(z, ss[q], beta, bb[q])
                              : BINCONV_FADD(BINCONV_FMUL(z, ss[q]), bb[q]);
                if (a.act != ACT_LINEAR)
                  v[q] = asel.general ? fast_act_general(v[q], a.act, a.slope)
                                      : apply_act_select(v[q], asel);
              }
            }
          };
          if (EPI == EPI_PACKED) {
            uint32_t word = 0;
#pragma unroll
            for (int g = 0; g < 8; ++g) {
              float v[4];
              quad(g, v, std::false_type{});
#pragma unroll
              for (int q = 0; q < 4; ++q)
                if (n0 + 32 * tq + 4 * g + q < a.o) word |= bin_bit(v[q]) << (4 * g + q);
            }
            if (m < a.m && n0 + 32 * tq < a.o)
              static_cast<uint32_t*>(a.out)[(long long)m * ow + n0 / 32 + tq] = word;
            continue;
          }
          // EPI_FLOAT: 8 float4 stores per row, the 4 lanes of a row 64
          // contiguous bytes per store; streaming (not read again here).
          if (m >= a.m) continue;
          float* dst = static_cast<float*>(a.out) + (long long)m * a.o + n0 + coff + 4 * tq;
          auto emit = [&](auto plain_const) {
#pragma unroll
            for (int g = 0; g < NG; ++g) {
              float v[4];
              quad(g, v, plain_const);
              const int o = n0 + coff + 16 * g + 4 * tq;
              if (BINCONV_SW(a, 8192)) {
                sink ^= __float_as_uint(v[0]) ^ __float_as_uint(v[1]) ^ __float_as_uint(v[2]) ^
                        __float_as_uint(v[3]);
              } else if ((a.o & 3) == 0 && o + 4 <= a.o) {
                __stcs(reinterpret_cast<float4*>(dst + 16 * g), make_float4(v[0], v[1], v[2], v[3]));
              } else {
#pragma unroll
                for (int q = 0; q < 4; ++q)
                  if (o + q < a.o) dst[16 * g + q] = v[q];
              }
            }
          };
          if (!a.beta && a.act == ACT_LINEAR)
            emit(std::true_type{});
          else
            emit(std::false_type{});
        }
      };
      using G4 = std::integral_constant<int, 4>;
      using G8 = std::integral_constant<int, 8>;
      // (timeline builds: the tile's end marks)
      auto tile_marks = [&]() {
        if (j == 0) TLS(8);
#ifdef JAX_BINCONV_TIMELINE
        TTS(3);
        if (j == 1) {
#pragma unroll
          for (int q = 0; q < 4; ++q) tj1_[q] = tt_[q];
        } else if (j == 2) {
#pragma unroll
          for (int q = 0; q < 4; ++q) tj2_[q] = tt_[q];
        }
#endif
      };
      // The table, before the first tile's epilogue: copied by warp 0 after
      // its first tile's wgmmas (which so overlap the tables kernel); with
      // thresholds, each thread's flip word from it.
      auto first_table = [&]() {
        TLS(6);
        if (!a.x_late && !tab_wg1 && warp == 0) load_tab_wg();
        mbar_wait(tbar, 0);
        TLS(7);
        if (EPI == EPI_THR) {
#pragma unroll
          for (int t = 0; t < 4; ++t) {
            const uint32_t f =
                __ballot_sync(kFull, tab_s[ncls * kFastBN + wg_tab_at<EPI>(32 * t + lane)] != 0);
            if (t == tq) flipw = f;
          }
        }
      };
      // The epilogue by thresholds: the thread's NQ rows (NQ = 4: 2 per
      // half, rows 0-63 from r0 / x0, rows 64-127 from r1 / x1; NQ = 2:
      // rows 0-63 only) at once, channel groups in the outer loop, each
      // word as two 16-bit chains (channels 16-31, 0-15) merged at the end:
      // 8 independent funnel-shift chains and the table loads of 4 rows in
      // flight (one row and one 32-step chain at a time left the warp
      // waiting on each load and shift: with the other warpgroup in its K
      // loop, a scheduler has one warp here). One body for the 128-row path
      // and the rows-0-63 path (lo_thr), each passing its own accumulators.
      auto thr_epi = [&](auto nq_const, const int(&r0)[64], const int(&r1)[64], const int(&x0)[4],
                         const int(&x1)[4]) {
        constexpr int NQ = decltype(nq_const)::value;
        int ex[NQ], mrow[NQ];
        const int* tbc[NQ];
#pragma unroll
        for (int q = 0; q < NQ; ++q) {
          const int r = 64 * (q >> 1) + 16 * wlw + gq + 8 * (q & 1);
          const int4 rd = rows_b[r];
          ex[q] = need_x1 ? rd.x - 2 * ((q >> 1) ? x1 : x0)[2 * (q & 1)] : 0;
          tbc[q] = tab_s + rd.z + 32 * tq;
          mrow[q] = SS ? rd.w : m0 + r;  // (ss: the record has it)
        }
        uint32_t lo[NQ] = {}, hi[NQ] = {};
#pragma unroll
        for (int g = 3; g >= 0; --g) {
#pragma unroll
          for (int q = 0; q < NQ; ++q) {
            const int(&acc)[64] = (q >> 1) ? r1 : r0;
            const int h = q & 1;
            const int4 bl = *reinterpret_cast<const int4*>(tbc[q] + 4 * (g ^ tq));
            const int4 bh = *reinterpret_cast<const int4*>(tbc[q] + 4 * ((4 + g) ^ tq));
            const int bndl[4] = {bl.x, bl.y, bl.z, bl.w}, bndh[4] = {bh.x, bh.y, bh.z, bh.w};
#pragma unroll
            for (int e = 3; e >= 0; --e) {
              const int cl = 4 * g + e, ch = 16 + cl;  // accumulator c: acc[4 (c >> 1) + 2 h + (c & 1)]
              const int dl = kmul * acc[4 * (cl >> 1) + 2 * h + (cl & 1)] + (ex[q] - bndl[e]);
              const int dh = kmul * acc[4 * (ch >> 1) + 2 * h + (ch & 1)] + (ex[q] - bndh[e]);
              lo[q] = __funnelshift_l((uint32_t)dl, lo[q], 1);
              hi[q] = __funnelshift_l((uint32_t)dh, hi[q], 1);
            }
          }
        }
#pragma unroll
        for (int q = 0; q < NQ; ++q) {
          const int m = mrow[q];
          if (m < a.m && n0 + 32 * tq < a.o)
            static_cast<uint32_t*>(a.out)[(long long)m * ow + n0 / 32 + tq] =
                __byte_perm(lo[q], hi[q], 0x5410) ^ flipw;
        }
      };
      if constexpr (SS && EPI == EPI_THR) {
        if (lo_thr) {
          // Rows 64-127 hold no pixel: the rows-0-63
          // wgmmas and their epilogue only, in registers of this path's
          // own (the same K loop as a variant of the one below, joined to
          // it, made ptxas serialize every wgmma of this kernel: C7511,
          // S24-5). X1 always (an m64n8 wgmma; unused for AND).
          int l0[64], lx[4];
          const uint64_t adesc = wg_desc(as_addr, 0, a.ss_gp);
          if (wtmap && j == 0 && !BINCONV_SW(a, 2))
            for (int b = 0; b < min(a.wg_kblocks, kWgWbars); ++b) mbar_wait(wbar + 8 * b, 0);
          if (k >= 1) named_sync(3 + wgi, 256);  // tile k - 1's wgmmas are issued
          if (j == 0) TLS(5);
          TTS(1);
          auto lstep = [&](int i, int e, auto first_const) {
            constexpr bool F = decltype(first_const)::value;
            const uint64_t ad = adesc + (uint64_t)(uint32_t)e;
            const uint64_t bd = bdesc + (uint64_t)((i >> 2) * (kFastBN * 8) + 2 * (i & 3));
            wgmma_n128_ss<F>(l0, ad, bd);
            wgmma_n8_ss<F>(lx, ad, 2 * i + 1 < a.kc ? x1full : x1last);
          };
          wg_fence();
          int e_next = ktab[1];
          lstep(0, ktab[0], std::true_type{});
#pragma unroll 1
          for (int i = 1; i < a.ks; ++i) {
            const int e = e_next;
            e_next = ktab[i + 1];
            lstep(i, e, std::false_type{});
          }
          wg_commit();
          if (k + 1 < ntile) named_arrive(3 + (wgi ^ 1), 256);  // tile k + 1 may issue
          if (prefetch && prefetch_late) {
            load_tile(buf ^ 1, mt_next, wlt, 128, wlw, 4);
            cp_async_commit();
          }
          wg_wait<0>();
          TTS(2);
          if (j == 0 && !BINCONV_SW(a, 32)) first_table();
          if (BINCONV_SW(a, 4)) continue;
          thr_epi(std::integral_constant<int, 2>{}, l0, l0, lx, lx);  // rows 0-63
          tile_marks();
          continue;
        }
      }
      int acc0[64], acc1[64], x10[4], x11[4];  // (set by the first K step: accumulate flag 0)
      const bool wfirst = wtmap && j == 0 && !BINCONV_SW(a, 2);  // the weights may still be landing
      if constexpr (EPI == EPI_FLOAT) {
        if (helper) {
          // Channels 64-127's accumulators (quads 4-7 of both row halves)
          // and the X1s from warpgroup 0 (below, after its wgmmas), as
          // quads 0-3: never in the wgmma accumulators (an instruction other
          // than a wgmma that defines them makes ptxas serialize the wgmmas,
          // C7515: S23-8's K loop ran 2x slower so), and the helper's whole
          // tile here (a path that joined warpgroup 0's after its K loop
          // kept both sets of registers live: 200 bytes of spills).
          named_sync(5, 256);
          int h0[32], hx0[4];
#pragma unroll
          for (int c = 0; c < 32; ++c) h0[c] = hand[c * 128 + wlt];
#pragma unroll
          for (int c = 0; c < 4; ++c) hx0[c] = hand[(64 + c) * 128 + wlt];
          // (Rows 64-127 empty: a path of its own; h1 loaded and used under
          // !lo_only tests instead spilled 28 bytes, S24.)
          if (lo_only) {
            if (!BINCONV_SW(a, 32)) mbar_wait(tbar, 0);  // the table (see below)
            if (!BINCONV_SW(a, 4)) epi_half(h0, hx0, 16 * wlw, G4{}, 64);
            continue;
          }
          int h1[32], hx1[4];
#pragma unroll
          for (int c = 0; c < 32; ++c) h1[c] = hand[(32 + c) * 128 + wlt];
#pragma unroll
          for (int c = 0; c < 4; ++c) hx1[c] = hand[(68 + c) * 128 + wlt];
          if (!BINCONV_SW(a, 32)) mbar_wait(tbar, 0);  // the table (see below)
          if (!BINCONV_SW(a, 4)) {
            epi_half(h0, hx0, 16 * wlw, G4{}, 64);
            epi_half(h1, hx1, 64 + 16 * wlw, G4{}, 64);
          }
          continue;
        }
      }
      if constexpr (SS) {
        // A from shared memory: the whole tile's steps issued at once (no
        // registers for A, no wait inside the loop). K step i's start
        // address and LBO fields come from ktab[i] (the prologue), group g
        // is at g ss_gp (SBO); rows 64-127 are groups 8-15.
        const uint64_t adesc = wg_desc(as_addr, 0, a.ss_gp);
        const uint64_t ahalf = (uint64_t)((8 * a.ss_gp) >> 4);
        // The first tile waits for all its weights before its loop (per K
        // block inside it ran no faster, S12-16); the loop exists with and
        // without X1 (no run-time branch between the wgmmas).
        if (wfirst)
          for (int b = 0; b < min(a.wg_kblocks, kWgWbars); ++b) mbar_wait(wbar + 8 * b, 0);
        if (k >= 1) named_sync(3 + wgi, 256);  // tile k - 1's wgmmas are issued
        if (j == 0) TLS(5);
        TTS(1);
        auto kloop = [&](auto x1_const, auto hi_const) {
          constexpr bool HI = decltype(hi_const)::value;  // rows 64-127 too
          auto kstep = [&](int i, int e, auto first_const) {
            constexpr bool F = decltype(first_const)::value;
            // (e = ktab[i]: step i's start address and LBO fields, see the
            // prologue)
            const uint64_t ad = adesc + (uint64_t)(uint32_t)e;
            const uint64_t bd = bdesc + (uint64_t)((i >> 2) * (kFastBN * 8) + 2 * (i & 3));
            wgmma_n128_ss<F>(acc0, ad, bd);
            if constexpr (HI) wgmma_n128_ss<F>(acc1, ad + ahalf, bd);
            if constexpr (decltype(x1_const)::value) {
              const uint64_t xd = 2 * i + 1 < a.kc ? x1full : x1last;
              wgmma_n8_ss<F>(x10, ad, xd);
              if constexpr (HI) wgmma_n8_ss<F>(x11, ad + ahalf, xd);
            }
          };
          wg_fence();
          // ktab[i] read a step ahead (its load's latency was on each
          // step's issue: 6% of L4's stall samples on the add after it,
          // S13-10); ktab has 2 ks + 2 entries.
          int e_next = ktab[1];
          kstep(0, ktab[0], std::true_type{});
#pragma unroll 1
          for (int i = 1; i < a.ks; ++i) {
            const int e = BINCONV_SW(a, 128) ? ktab[i] : e_next;  // (128: read in the step)
            e_next = ktab[i + 1];
            kstep(i, e, std::false_type{});
          }
        };
        // (experiments: 2048 no wgmmas, 4096 the K loop twice: its in-kernel
        // cost per step is the difference against the default)
        for (int rep = BINCONV_SW(a, 2048) ? 2 : 0; rep < (BINCONV_SW(a, 4096) ? 2 : 1); ++rep) {
          if (lo_only) {
            if (need_x1)
              kloop(std::true_type{}, std::false_type{});
            else
              kloop(std::false_type{}, std::false_type{});
          } else if (need_x1) {
            kloop(std::true_type{}, std::true_type{});
          } else {
            kloop(std::false_type{}, std::true_type{});
          }
        }
        wg_commit();
      } else {
        // Rows 16 w .. 16 w + 15 of each 64-row half: the warp's A fragments.
        const uint32_t abase0 = as_addr + rows_b[16 * wlw + (lane & 15)].w;
        const uint32_t abase1 = as_addr + rows_b[64 + 16 * wlw + (lane & 15)].w;
        // kWgAbufs A buffers (both halves), loaded two steps ahead, the chunk
        // offsets three ahead (a step's ldmatrix then has a whole step to land
        // before its wgmma; with 4 buffers three steps' wgmmas stay in flight).
        // (The loop is at the register limit, and ptxas's schedule there is
        // fragile: session 11's variants of it, one more buffer loaded one
        // step ahead or X1 by popc, ran 10-50% slower. Time any change.)
        uint32_t af[kWgAbufs][2][4];
        ldmatrix_x4_at(af[0][0], abase0 + kp[0]);
        ldmatrix_x4_at(af[0][1], abase1 + kp[0]);
        if (a.ks > 1) {
          ldmatrix_x4_at(af[1][0], abase0 + kp[2]);
          ldmatrix_x4_at(af[1][1], abase1 + kp[2]);
        }
        int knext = a.ks > 2 ? kp[4] : 0;  // step 2's (ktab has 2 ks + 2 entries)
        if (k >= 1) named_sync(3 + wgi, 256);  // tile k - 1's wgmmas are issued
        if (j == 0) TLS(5);
        TTS(1);
        auto step = [&](int i, auto b_const) {
          constexpr int B = decltype(b_const)::value;  // i % kWgAbufs
          // The first tile: K block i >> 2's weights have landed (its steps
          // start as their block does).
          if (wfirst && (i & 3) == 0 && (i >> 2) < kWgWbars) mbar_wait(wbar + 8 * (i >> 2), 0);
          wg_fence();
          const uint64_t bd = bdesc + (uint64_t)((i >> 2) * (kFastBN * 8) + 2 * (i & 3));
          wgmma_n128(acc0, af[B][0], bd, i);
          wgmma_n128(acc1, af[B][1], bd, i);
          if (need_x1) {
            const uint64_t xd = 2 * i + 1 < a.kc ? x1full : x1last;
            wgmma_n8(x10, af[B][0], xd, i);
            wgmma_n8(x11, af[B][1], xd, i);
          }
          wg_commit();
          if (i + 2 < a.ks) {
            // Step i + 2 - kWgAbufs (the last reader of buffer (i + 2) %
            // kWgAbufs) is done: kWgAbufs - 1 groups stay in flight.
            wg_wait<kWgAbufs - 2>();
            ldmatrix_x4_at(af[(B + 2) % kWgAbufs][0], abase0 + knext);
            ldmatrix_x4_at(af[(B + 2) % kWgAbufs][1], abase1 + knext);
            knext = kp[2 * i + 6];  // step i + 3's (i + 3 <= ks)
          }
        };
        for (int i = 0; i < a.ks; i += kWgAbufs) {
          step(i, std::integral_constant<int, 0>{});
          if (i + 1 < a.ks) step(i + 1, std::integral_constant<int, 1>{});
          if (i + 2 < a.ks) step(i + 2, std::integral_constant<int, 2>{});
          if (kWgAbufs > 3 && i + 3 < a.ks) step(i + 3, std::integral_constant<int, 3 % kWgAbufs>{});
        }
      }
      if (k + 1 < ntile) named_arrive(3 + (wgi ^ 1), 256);  // tile k + 1 may issue
      if (prefetch && prefetch_late) {
        load_tile(buf ^ 1, mt_next, wlt, 128, wlw, 4);
        cp_async_commit();
      }
      wg_wait<0>();
      if (split && !helper) {
        // (the wgmmas' reads of the weights are complete: their region takes
        // the handover)
#pragma unroll
        for (int c = 0; c < 32; ++c) hand[c * 128 + wlt] = acc0[32 + c];
#pragma unroll
        for (int c = 0; c < 4; ++c) hand[(64 + c) * 128 + wlt] = x10[c];
        if (!lo_only) {
#pragma unroll
          for (int c = 0; c < 32; ++c) hand[(32 + c) * 128 + wlt] = acc1[32 + c];
#pragma unroll
          for (int c = 0; c < 4; ++c) hand[(68 + c) * 128 + wlt] = x11[c];
        }
        named_arrive(5, 256);
      }
      TTS(2);
      if (j == 0 && !BINCONV_SW(a, 32)) first_table();
      if (BINCONV_SW(a, 4)) continue;
      if constexpr (EPI == EPI_THR) {
        // (all 128 rows: a tile of rows 0-63 only took lo_thr above)
        thr_epi(std::integral_constant<int, 4>{}, acc0, acc1, x10, x11);
      } else {
        if (EPI == EPI_FLOAT && split) {
          epi_half(acc0, x10, 16 * wlw, G4{}, 0);
          if (!lo_only) epi_half(acc1, x11, 64 + 16 * wlw, G4{}, 0);
        } else {
          epi_half(acc0, x10, 16 * wlw, G8{}, 0);
          if (!lo_only) epi_half(acc1, x11, 64 + 16 * wlw, G8{}, 0);
        }
      }
      tile_marks();
    }
    if (BINCONV_SW(a, 8192) && a.m < 0) static_cast<uint32_t*>(a.out)[tid] = sink;
  } else {
    int buf = 0, it = 0;
    for (int mt = mt0; mt < a.mtiles; mt += mstep, buf ^= 1, ++it) {
      const int m0 = mt * kFastBM;
      const int row0 = fdiv(m0, a.div_wo);
      const int img0 = fdiv(row0, a.div_ho);
      // This block's last tile: the next call's tables kernel (launched with
      // programmatic serialization, and waiting for this grid's completion
      // before it reads anything) may become resident in the meantime.
      if (mt + mstep >= a.mtiles && !BINCONV_SW(a, 16384)) pdl_launch_dependents();

      if (tid < kFastBM) rows[buf * kFastBM + tid] = row_record(m0 + tid, row0, img0);
      if (tma) mbar_wait(sbar0 + 8 * buf, (uint32_t)(it >> 1) & 1);  // this tile's slots
      cp_async_wait<0>();  // the slots (cp.async); x_late: the first time the table too
      // The tile's barrier: the slots and rows[] are visible, and every warp
      // is past the previous tile's epilogue, so the other buffer may be
      // refilled (with the next tile, overlapping this tile's GEMM) and erec
      // rewritten. rows[] is double-buffered: it is written before this
      // barrier, while a slower warp may still read the previous tile's half.
      __syncthreads();
      if (mt + mstep < a.mtiles) load_tile(buf ^ 1, mt + mstep, tid, kFastThreads, warp, kFastThreads / 32);
      cp_async_commit();
      const uint32_t as_addr = smem_u32(fsm + (buf ? L.a1 : L.a0));
      const int4* rows_t = rows + buf * kFastBM + wm + gq;  // row wm + gq + dr: rows_t[dr]
      {  // mma.sync

        // ---- the GEMM: warp tile 64 x 32, 4 x 4 MMAs per K step (+1 for X1)
        uint32_t abyte[4];
#pragma unroll
        for (int mf = 0; mf < 4; ++mf)
          abyte[mf] = as_addr + rows[buf * kFastBM + wm + mf * 16 + (lane & 15)].w;
        int acc[4][4][4] = {}, x1acc[4] = {0, 0, 0, 0};
        uint32_t bb0 = smem_u32(bs + (wn + b_row) * a.pitch_b + b_half);
        const uint32_t bstep1 = 16 * 16 * a.pitch_b;
        // The X1 MMA of the row fragment this warp owns (mf == wq): the K loop is
        // instantiated per wq, so that it is a plain MMA (as a run-time
        // condition it cost a compare, a predicated MMA and two WARPSYNCs per
        // row fragment and K step: 4.5% of all instructions were WARPSYNC). It
        // runs for AND too, unused.
        // DEAD: a warp whose 32 channels are all past O (O = 64: half the
        // block) runs only its X1 MMA, which the other warps of its row range
        // need, and no epilogue.
        auto kloop = [&](auto wq_const, auto dead_const) {
          constexpr int WQ = decltype(wq_const)::value;
          constexpr bool DEAD = decltype(dead_const)::value;
          const uint2* x1p = HALF ? reinterpret_cast<const uint2*>(fsm + L.x1m) + (tq >> 1) : nullptr;
          // The chunk offsets are read one K step ahead (their shared-memory
          // latency sat between each step's first instructions).
          const int* kp = ktab + half;
          int koff = kp[0];
  #pragma unroll(HALF ? 1 : 2)  // (half: 2 spilled in EPI_PACKED)
          for (int i = 0; i < a.ks; ++i, bb0 += 32) {
            const int knext = kp[2 * i + 2];
            uint32_t af[4][4], bf[2][4];
#pragma unroll
            for (int mf = 0; mf < 4; ++mf)
              if (!DEAD || mf == WQ) ldmatrix_x4_at(af[mf], abyte[mf] + koff);
            if (!DEAD) {
              ldmatrix_x4_at(bf[0], bb0);
              ldmatrix_x4_at(bf[1], bb0 + bstep1);
            }
            // X1's all-ones B: the padding chunk (odd kc) masked; half: per
            // pixel of a chunk (x1m).
            const uint2 x1b = HALF ? x1p[2 * i] : make_uint2(kFull, 2 * i + 1 < a.kc ? kFull : 0u);
#pragma unroll
            for (int mf = 0; mf < 4; ++mf) {
#pragma unroll
              for (int nf = 0; nf < 4; ++nf)
                if (!DEAD)
                  mma_b1_and(acc[mf][nf], af[mf], bf[nf >> 1][(nf & 1) * 2],
                             bf[nf >> 1][(nf & 1) * 2 + 1]);
              if (mf == WQ) mma_b1_and(x1acc, af[mf], x1b.x, x1b.y);
            }
            koff = knext;
          }
        };
        const bool cols = n0 + wn < a.o;
        auto kloop_wq = [&](auto dead_const) {
          switch (wq) {
            case 0: kloop(std::integral_constant<int, 0>{}, dead_const); break;
            case 1: kloop(std::integral_constant<int, 1>{}, dead_const); break;
            case 2: kloop(std::integral_constant<int, 2>{}, dead_const); break;
            default: kloop(std::integral_constant<int, 3>{}, dead_const); break;
          }
        };
        if (cols)
          kloop_wq(std::false_type{});
        else
          kloop_wq(std::true_type{});
        if (it == 0 && !a.x_late) {  // the table, before the first epilogue
          load_tab();
          cp_async_wait<0>();
          __syncthreads();
        }
        // The epilogue record of the two rows whose X1 this warp has (rows
        // wm + 16 wq + gq and + 8): the whole row term (XNOR: less 2 X1; AND: 0)
        // and the class offset. Shared only by the 4 warps of this row range
        // (wm): a barrier of those 128 threads, not of the block.
        if (tq == 0) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int r = wm + wq * 16 + gq + 8 * hh;
            const int4 rd = rows[buf * kFastBM + r];
            erec[r] = make_int2(need_x1 ? rd.x - 2 * x1acc[2 * hh] : 0, rd.z);
          }
        }
        // (Constant barrier ids: a register id makes ptxas reserve all 16.)
        if (warp < 4)
          asm volatile("bar.sync 1, 128;\n" ::: "memory");
        else
          asm volatile("bar.sync 2, 128;\n" ::: "memory");
        if (!cols) continue;  // (no barrier below: the next one is the tile's)

        // ---- epilogue straight from the accumulators; ch: the thread's first
        // channel within the block (8 consecutive ones). Row r = wm + gq + dr,
        // dr = 16 mf + 8 hh (k = 2 mf + hh: dr = 8 k).
        const int ch = wn + 8 * tq;
        const int* tab_s = reinterpret_cast<const int*>(fsm + L.tab);
        const int2* er_t = erec + wm + gq;
        // The float epilogue of row k (channels ch + c, c < 8): affine, then
        // the activation (EPI_FLOAT stores it, EPI_PACKED its sign bit).
        // Channel (within the block) of accumulator c = 2 nf + jj of a row
        // (EPI_FLOAT: fast_chan_of_col_float's order).
        auto chan = [&](int c) {
          return EPI == EPI_FLOAT ? wn + 4 * tq + (c & 3) + 16 * (c >> 2) : ch + c;
        };
        auto row_values = [&](int k, float (&val)[8]) {
          const int mf = k >> 1, hh = k & 1;
          const int2 e = er_t[8 * k];
          const float beta = __int_as_float(rows_t[8 * k].y);
          const int* tb = tab_s + e.y;  // the row's class
          int iv[8];
#pragma unroll
          for (int nf = 0; nf < 4; ++nf) {
            const int2 ct = *reinterpret_cast<const int2*>(tb + chan(2 * nf));
            iv[2 * nf] = kmul * acc[mf][nf][2 * hh] + e.x + ct.x;
            iv[2 * nf + 1] = kmul * acc[mf][nf][2 * hh + 1] + e.x + ct.y;
          }
          // Without beta (1.0f: z * 1.0f is z, bit for bit) and without an
          // activation (linear: v itself) those steps are left out, a branch per
          // row instead of an instruction or five per value.
          if (a.beta) {
#pragma unroll
            for (int c = 0; c < 8; ++c)
              val[c] = epilogue_affine((float)iv[c], csc[chan(c)], beta, cbi[chan(c)]);
          } else {
#pragma unroll
            for (int c = 0; c < 8; ++c)
              val[c] = BINCONV_FADD(BINCONV_FMUL((float)iv[c], csc[chan(c)]), cbi[chan(c)]);
          }
          if (a.act != ACT_LINEAR) {
#pragma unroll
            for (int c = 0; c < 8; ++c)
              val[c] = asel.general ? fast_act_general(val[c], a.act, a.slope)
                                    : apply_act_select(val[c], asel);
          }
        };
        if (EPI != EPI_FLOAT) {
          // Packed output. Each thread builds, for its 8 rows and 8 channels,
          // two words: word g holds rows k = 4 g .. 4 g + 3, row k's byte
          // (channels ch .. ch + 7, channel c at bit c) at byte k & 3. A 4 x 4
          // byte transpose among the 4 lanes of a row group (two shuffles and
          // two byte permutes per word) then gives lane tq the whole 32-channel
          // word of rows k = tq and 4 + tq, which it stores.
          uint32_t wd[2] = {0u, 0u};
          if (EPI == EPI_THR) {
            // Sign of kmul P + rowc - B per channel, shifted in: row 7 channel
            // 7 first, so that row 4 g channel 0 ends at bit 0 of word g.
#pragma unroll
            for (int k = 7; k >= 0; --k) {
              const int mf = k >> 1, hh = k & 1;
              const int2 e = er_t[8 * k];
              const int* tb = tab_s + e.y + ch;  // the row's class, the 8 channels
              const int4 b0 = *reinterpret_cast<const int4*>(tb);
              const int4 b1 = *reinterpret_cast<const int4*>(tb + 4);
              const int bnd[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
              for (int c = 7; c >= 0; --c) {
                const int d = kmul * acc[mf][c >> 1][2 * hh + (c & 1)] + (e.x - bnd[c]);
                wd[k >> 2] = __funnelshift_l((uint32_t)d, wd[k >> 2], 1);
              }
            }
          } else {
            const int o = n0 + ch;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
              float val[8];
              row_values(k, val);
              uint32_t bits = 0;
#pragma unroll
              for (int c = 0; c < 8; ++c)
                if (o + c < a.o) bits |= bin_bit(val[c]) << c;
              wd[k >> 2] |= bits << (8 * (k & 3));
            }
          }
          // The transpose. Stage 1 (lanes tq, tq ^ 2): bytes 0-1 of rows from
          // lanes 0, 1 / 2, 3; stage 2 (lanes tq, tq ^ 1): single bytes.
          const uint32_t sel1 = (tq & 2) ? 0x3276u : 0x5410u;
          const uint32_t sel2 = (tq & 1) ? 0x3715u : 0x6240u;
#pragma unroll
          for (int g = 0; g < 2; ++g) {
            wd[g] = __byte_perm(wd[g], __shfl_xor_sync(kFull, wd[g], 2), sel1);
            wd[g] = __byte_perm(wd[g], __shfl_xor_sync(kFull, wd[g], 1), sel2);
          }
          // thr: flip bits of the warp's 32 channels, in packed-word order.
          const uint32_t flipw =
              EPI == EPI_THR ? __ballot_sync(kFull, tab_s[ncls * kFastBN + wn + lane] != 0) : 0u;
          if (n0 + wn < a.o) {
            const int m = m0 + wm + gq + 8 * tq;  // rows k = tq and k = 4 + tq (dr = 32)
            uint32_t* dst = static_cast<uint32_t*>(a.out) + (long long)m * ow + (n0 + wn) / 32;
            if (m < a.m) dst[0] = wd[0] ^ flipw;
            if (m + 32 < a.m) dst[32 * (long long)ow] = wd[1] ^ flipw;
          }
        } else if (!a.beta && a.act == ACT_LINEAR && (a.o & 3) == 0 && n0 + wn + 32 <= a.o) {
          // The usual case (no beta, no activation, the warp's 32 channels all
          // real, rows of whole float4s) as straight-line code: the general
          // loop below branches several times per row (beta, activation, the
          // store's form), and in ncu (S8-9, L3 N=256) 19% of the float
          // kernel's stall samples were instruction fetch (no_inst).
          const int o = n0 + chan(0);
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            const int mf = k >> 1, hh = k & 1;
            const int m = m0 + wm + gq + 8 * k;
            const int2 e = er_t[8 * k];
            const int* tb = tab_s + e.y;  // the row's class
            float val[8];
#pragma unroll
            for (int nf = 0; nf < 4; ++nf) {
              const int2 ct = *reinterpret_cast<const int2*>(tb + chan(2 * nf));
#pragma unroll
              for (int jj = 0; jj < 2; ++jj) {
                const int c = 2 * nf + jj;
                const int iv = kmul * acc[mf][nf][2 * hh + jj] + e.x + (jj ? ct.y : ct.x);
                val[c] = BINCONV_FADD(BINCONV_FMUL((float)iv, csc[chan(c)]), cbi[chan(c)]);
              }
            }
            if (m < a.m) {
              float* dst = static_cast<float*>(a.out) + (long long)m * a.o + o;
              __stcs(reinterpret_cast<float4*>(dst), make_float4(val[0], val[1], val[2], val[3]));
              __stcs(reinterpret_cast<float4*>(dst + 16), make_float4(val[4], val[5], val[6], val[7]));
            }
          }
        } else {
#pragma unroll
          for (int k = 0; k < 8; ++k) {
            const int m = m0 + wm + gq + 8 * k;
            float val[8];  // channels chan(c)
            row_values(k, val);
            const int o = n0 + chan(0);  // val[c]: channel n0 + chan(c), dst[chan(c) - chan(0)]
            if (m < a.m) {
              // The 4 lanes of a row write channels 0-15 of their 32, then
              // 16-31: 64 contiguous bytes per store.
              float* dst = static_cast<float*>(a.out) + (long long)m * a.o + o;
              if ((a.o & 3) == 0 && o + 20 <= a.o) {  // o + 19 = n0 + chan(7)
                // Streaming stores: the result is not read again by this
                // kernel, and kept out of L2 it leaves room for x and weights.
                __stcs(reinterpret_cast<float4*>(dst), make_float4(val[0], val[1], val[2], val[3]));
                __stcs(reinterpret_cast<float4*>(dst + 16),
                       make_float4(val[4], val[5], val[6], val[7]));
              } else {
#pragma unroll
                for (int c = 0; c < 8; ++c) {
                  const int d = chan(c) - chan(0);
                  if (o + d < a.o) dst[d] = val[c];
                }
              }
            }
          }
        }
      }  // mma.sync
  }
  }
  cp_async_wait<0>();
#ifdef JAX_BINCONV_TIMELINE
  TLS(9);
  if (WG && (tid & 127) == 0) {
    const unsigned long long t[20] = {tl_[0],   tl_[1],   tl_[2],   tl_[4],   tl_[5],
                                      tl_[6],   tl_[7],   tl_[8],   tj1_[0],  tj1_[1],
                                      tj1_[2],  tj1_[3],  tj2_[1],  tj2_[2],  tj2_[3],
                                      tl_[9],   tsub_[0], tsub_[1], tsub_[2], tsub_[3]};
    tl_put(1 + (tid >> 7), t, 20);
  }
#endif
}
