// The ISA-independent part of the CPU convolution: input packing, weight
// re-blocking, padding correction, work split and the fused epilogue. Each
// kernels_<isa>.cpp includes this with its own compiler flags and a traits
// class K that supplies the register-tiled inner loops:
//
//   K::kP, K::kObw            pixels x output channels of one binary tile
//   K::kPf, K::kObwf          the same for the float (BINARY_WEIGHTS) tile
//   K::pack_float_bits<IDENT>(x, ib, is, C, bits, abs_sum_or_null)  (IDENT: ib=0, is=1)
//   K::template bin_tile<AND>(xptrs, koff, KT, wblock, raw): step i reads word
//       xptrs[p][koff[i]] of every pixel p against weight words wblock[i][lane]
//   K::kDwordLanes            steps are 32-bit: the weights are re-blocked as
//       [block][tap][dword][lane] uint32, step i reads dword koff[i] of the
//       pixel (its words seen as uint32, LSB half first) and KT counts dwords
//   K::float_tile(xptrs, tapoff, T, Cg, wblock, acc)
//
// Algorithm (binary types): the input is binarized and packed once per call
// into 64-bit words along channels, per group, into a spatially padded buffer
// whose padded pixels hold a constant fill pattern. The inner loop then has no
// bounds checks: every tap of every output pixel is a fixed offset from the
// pixel's base pointer (direct convolution). A padded tap contributes the
// fill value, and border pixels get an integer correction
// (pad_value - fill) * sum_c bin(w) over their padded taps, computed from
// per-(o, tap) weight sums instead of branches in the inner loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <list>
#include <mutex>
#include <vector>

#include "kernel_api.h"

// Every ISA's file compiles this header with its own -m flags. Each puts it in
// its own namespace, so that no inline function compiled with AVX-512 can be
// merged by the linker into the scalar path (an ODR trap of per-file flags).
#ifndef BINCONV_ISA_NS
#error "define BINCONV_ISA_NS (a namespace name unique to the ISA) before including conv_driver.h"
#endif

namespace binconv {
namespace cpu {
namespace BINCONV_ISA_NS {

struct FreeDeleter {
  void operator()(void* ptr) const { std::free(ptr); }
};
template <class T>
using Buf = std::unique_ptr<T[], FreeDeleter>;

// 64-byte aligned, uninitialized; nullptr when the allocation fails.
template <class T>
Buf<T> alloc_buf(int64_t count) {
  size_t bytes = static_cast<size_t>(count > 0 ? count : 1) * sizeof(T);
  bytes = (bytes + 63) / 64 * 64;
  return Buf<T>(static_cast<T*>(std::aligned_alloc(64, bytes)));
}

// Per-thread scratch memory reused across calls: large fresh allocations are
// mmap-ed and page-faulted on every call, which costs as much as a small
// layer. Holds the packed input and re-blocked weights of the running call.
class Arena {
 public:
  // Carves `count` Ts (64-byte aligned) from a reservation of `bytes` total.
  bool reserve(size_t bytes) {
    if (bytes > cap_) {
      mem_.reset(static_cast<unsigned char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      cap_ = mem_ ? bytes : 0;
      if (!mem_) return false;
    }
    used_ = 0;
    return true;
  }
  template <class T>
  T* take(int64_t count) {
    T* ptr = reinterpret_cast<T*>(mem_.get() + used_);
    used_ += bytes_for<T>(count);
    return ptr;
  }
  template <class T>
  static size_t bytes_for(int64_t count) {
    return (static_cast<size_t>(count > 0 ? count : 1) * sizeof(T) + 63) / 64 * 64;
  }

 private:
  Buf<unsigned char> mem_;
  size_t cap_ = 0, used_ = 0;
};

inline Arena& thread_arena() {
  thread_local Arena arena;
  return arena;
}

// Re-blocked weights of recent calls. A call finds its candidate by shape
// and by a sample of the packed weights (the first and last words); the
// candidate's copy of the weights is then compared with the caller's in
// full, block by block (one memcmp of the block's contiguous output rows),
// before a block is used (run_binary), so a reused buffer can never serve
// stale weights. The blocks are checked in parallel by the work items that
// use them, not serially before the convolution. Re-blocking costs about as
// much as the convolution itself on layers with few pixels (7x7). Entries
// are immutable once published; a small LRU bounded in entries and bytes.
// The border correction of one geometry for one entry's weights: which
// class each output row and column is in (its taps' pattern of padding) and
// one table row per (row class, column class) of per-output corrections.
struct CorrPlan {
  std::vector<int64_t> key;  // the geometry it was built for
  std::vector<int32_t> row_cls, col_cls, corr_tab;
  int64_t ncol_cls = 0;
  // Per output pixel of one image, in order, then kP copies of the last one
  // (a tail tile's pixels past the end read them): its first word in the
  // padded input of its image, and its correction table row (null inside).
  // Empty when a border pixel has no table row (too many classes).
  std::vector<int64_t> pix_off;
  std::vector<const int32_t*> pix_crow;
};

struct WeightEntry {
  // The correction plan of the last geometry these weights ran with: it
  // depends only on the weights and the geometry, and building it (O x
  // classes x taps) costs about a microsecond per call on L3.
  mutable std::mutex plan_mu;
  mutable std::shared_ptr<const CorrPlan> plan;
  int64_t o = 0, t = 0, cg = 0, groups = 0;
  bool is_and = false;
  size_t nwords = 0;           // uint32 words of the packed weights
  std::vector<uint32_t> sample;  // their first and last kSample words
  std::vector<uint32_t> src;     // all of them, as given
  Buf<uint64_t> wr;           // [block][tap][word][lane]
  std::vector<int32_t> wsum;  // [tap][o]: sum over channels of the product-weight
  size_t bytes() const { return (sample.size() + src.size() + wsum.size()) * 4 + wr_words * 8; }
  int64_t wr_words = 0;
  static constexpr size_t kSample = 32;
  static void take_sample(const uint32_t* w, size_t nwords, std::vector<uint32_t>& out) {
    const size_t head = std::min(nwords, kSample);
    const size_t tail = std::min(nwords - head, kSample);
    out.assign(w, w + head);
    out.insert(out.end(), w + nwords - tail, w + nwords);
  }
  bool sample_matches(const uint32_t* w) const {
    const size_t head = std::min(nwords, kSample);
    const size_t tail = sample.size() - head;
    return std::memcmp(sample.data(), w, head * 4) == 0 &&
           std::memcmp(sample.data() + head, w + nwords - tail, tail * 4) == 0;
  }
};

class WeightCache {
 public:
  // The most recently used entry of this shape whose sample matches (not yet
  // verified in full), or null.
  std::shared_ptr<const WeightEntry> find(const uint32_t* w, size_t nwords, int64_t o, int64_t t,
                                          int64_t cg, int64_t groups, bool is_and) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = lru_.begin(); it != lru_.end(); ++it) {
      const WeightEntry& e = **it;
      if (e.o == o && e.t == t && e.cg == cg && e.groups == groups && e.is_and == is_and &&
          e.nwords == nwords && e.sample_matches(w)) {
        if (it != lru_.begin()) lru_.splice(lru_.begin(), lru_, it);
        return lru_.front();
      }
    }
    return nullptr;
  }
  void insert(std::shared_ptr<const WeightEntry> e) {
    std::lock_guard<std::mutex> lock(mu_);
    bytes_ += e->bytes();
    lru_.push_front(std::move(e));
    while (lru_.size() > 1 && (lru_.size() > kMaxEntries || bytes_ > kMaxBytes)) {
      bytes_ -= lru_.back()->bytes();
      lru_.pop_back();
    }
  }

 private:
  static constexpr size_t kMaxEntries = 64;
  static constexpr size_t kMaxBytes = size_t{256} << 20;
  std::mutex mu_;
  std::list<std::shared_ptr<const WeightEntry>> lru_;
  size_t bytes_ = 0;
};

// Claims a one-time task guarded by a state byte (0 to do, 1 running, 2 done,
// 3 failed): runs it if nobody has, else waits for whoever runs it. Returns
// whether it succeeded.
template <class F>
inline bool run_once(uint8_t* state, F&& task) {
  uint8_t s = __atomic_load_n(state, __ATOMIC_ACQUIRE);
  for (;;) {
    if (s == 2) return true;
    if (s == 3) return false;
    if (s == 0) {
      if (__atomic_compare_exchange_n(state, &s, uint8_t{1}, false, __ATOMIC_ACQ_REL,
                                      __ATOMIC_ACQUIRE)) {
        const bool ok = task();
        __atomic_store_n(state, ok ? uint8_t{2} : uint8_t{3}, __ATOMIC_RELEASE);
        return ok;
      }
      continue;  // s holds the state another thread set
    }
    cpu_relax();
    s = __atomic_load_n(state, __ATOMIC_ACQUIRE);
  }
}

// Runs a one-time task (see run_once) only if nobody has started it; never
// waits. Returns the state it leaves: 1 another thread is running it, 2 done,
// 3 failed.
template <class F>
inline uint8_t try_run_once(uint8_t* state, F&& task) {
  uint8_t s = __atomic_load_n(state, __ATOMIC_ACQUIRE);
  if (s == 0 && __atomic_compare_exchange_n(state, &s, uint8_t{1}, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE)) {
    const bool ok = task();
    __atomic_store_n(state, ok ? uint8_t{2} : uint8_t{3}, __ATOMIC_RELEASE);
    return ok ? uint8_t{2} : uint8_t{3};
  }
  return s;  // the state another thread set (1, 2 or 3)
}

inline WeightCache& weight_cache() {
  static WeightCache cache;
  return cache;
}

inline uint64_t low_mask(int64_t nbits) {
  return nbits >= 64 ? ~uint64_t{0} : ((uint64_t{1} << nbits) - 1);
}

// SWAR popcount: the scalar ISA must not assume a popcount instruction.
inline uint64_t popcount_swar(uint64_t v) {
  v = v - ((v >> 1) & 0x5555555555555555ull);
  v = (v & 0x3333333333333333ull) + ((v >> 2) & 0x3333333333333333ull);
  v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0full;
  return (v * 0x0101010101010101ull) >> 56;
}

// Bits [start, start + 64) of a bit array of nwords words (zeros beyond).
inline uint64_t extract64(const uint64_t* src, int64_t nwords, int64_t start) {
  const int64_t w = start >> 6;
  const int s = static_cast<int>(start & 63);
  const uint64_t lo = w < nwords ? src[w] : 0;
  if (s == 0) return lo;
  const uint64_t hi = (w + 1 < nwords) ? src[w + 1] : 0;
  return (lo >> s) | (hi << (64 - s));
}

// Splits one pixel's channel bits into G groups of KW64 words each; bits past
// Cg in a group's last word are cleared, so they can never reach a popcount.
inline void scatter_groups(const uint64_t* bits, int64_t nwords, int64_t G,
                           int64_t Cg, int64_t KW64, uint64_t* dst) {
  if (G == 1) {
    for (int64_t k = 0; k < KW64; ++k) dst[k] = bits[k];
    dst[KW64 - 1] &= low_mask(Cg - 64 * (KW64 - 1));
    return;
  }
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t k = 0; k < KW64; ++k) {
      uint64_t v = extract64(bits, nwords, g * Cg + 64 * k);
      const int64_t rem = Cg - 64 * k;
      if (rem < 64) v &= low_mask(rem);
      dst[g * KW64 + k] = v;
    }
  }
}

// Portable reference pieces that the scalar traits use directly and the
// vector traits use for remainders.
template <bool IDENT>
inline void pack_float_bits_generic(const float* x, const float* ib, const float* is,
                                    int64_t C, uint64_t* bits, float* abs_sum) {
  float s = 0.0f;
  const int64_t nw = (C + 63) / 64;
  for (int64_t w = 0; w < nw; ++w) {
    uint64_t v = 0;
    const int64_t lim = std::min<int64_t>(64, C - 64 * w);
    for (int64_t i = 0; i < lim; ++i) {
      const int64_t c = 64 * w + i;
      const float xv = IDENT ? x[c] : (x[c] + ib[c]) * is[c];
      v |= static_cast<uint64_t>(!(xv < 0.0f)) << i;  // NaN -> 1, as bin()
      s += std::fabs(xv);
    }
    bits[w] = v;
  }
  if (abs_sum) *abs_sum = s;
}

template <int P, int OBW, bool AND>
inline void bin_tile_generic(const uint64_t* const* xp, const int64_t* koff, int64_t KT,
                             const uint64_t* w, int32_t* raw) {
  uint64_t acc[P][OBW] = {};
  for (int64_t i = 0; i < KT; ++i) {
    const int64_t off = koff[i];
    const uint64_t* wr = w + i * OBW;
    for (int p = 0; p < P; ++p) {
      const uint64_t xv = xp[p][off];
      for (int j = 0; j < OBW; ++j)
        acc[p][j] += popcount_swar(AND ? (xv & wr[j]) : (xv ^ wr[j]));
    }
  }
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < OBW; ++j) raw[p * OBW + j] = static_cast<int32_t>(acc[p][j]);
}

// Float tile for BINARY_WEIGHTS: each output's sum runs over taps, then
// channels, in one fixed order (the vector lanes are output channels), so
// the result does not depend on the thread split or the vector width.
template <int P, int OBW>
inline void float_tile_generic(const float* const* xp, const int64_t* tapoff, int64_t T,
                               int64_t Cg, const float* w, float* out) {
  float acc[P][OBW];
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < OBW; ++j) acc[p][j] = 0.0f;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = tapoff[t];
    const float* wt = w + t * Cg * OBW;
    for (int64_t c = 0; c < Cg; ++c) {
      const float* wr = wt + c * OBW;
      for (int p = 0; p < P; ++p) {
        const float xv = xp[p][off + c];
        for (int j = 0; j < OBW; ++j) acc[p][j] += xv * wr[j];
      }
    }
  }
  for (int p = 0; p < P; ++p)
    for (int j = 0; j < OBW; ++j) out[p * OBW + j] = acc[p][j];
}

// Same formula and order as binconv::epilogue (binconv_params.h), written as a
// fixed-length loop per activation so the compiler vectorizes it.
template <int OBW, int ACT>
inline void epilogue_block(const float* acc, const float* os, const float* ob, float beta,
                           float slope, float* res) {
  for (int j = 0; j < OBW; ++j) {
    float z = acc[j] * os[j];
    z = z * beta;
    z = z + ob[j];
    res[j] = apply_activation(z, ACT, slope);
  }
}

template <int OBW>
inline void epilogue_dispatch(int32_t act, const float* acc, const float* os, const float* ob,
                              float beta, float slope, float* res) {
  switch (act) {
    case ACT_RELU: epilogue_block<OBW, ACT_RELU>(acc, os, ob, beta, slope, res); break;
    case ACT_RELU6: epilogue_block<OBW, ACT_RELU6>(acc, os, ob, beta, slope, res); break;
    case ACT_LEAKY_RELU: epilogue_block<OBW, ACT_LEAKY_RELU>(acc, os, ob, beta, slope, res); break;
    case ACT_SIGMOID: epilogue_block<OBW, ACT_SIGMOID>(acc, os, ob, beta, slope, res); break;
    case ACT_TANH: epilogue_block<OBW, ACT_TANH>(acc, os, ob, beta, slope, res); break;
    case ACT_HARD_TANH: epilogue_block<OBW, ACT_HARD_TANH>(acc, os, ob, beta, slope, res); break;
    case ACT_SIGN: epilogue_block<OBW, ACT_SIGN>(acc, os, ob, beta, slope, res); break;
    default: epilogue_block<OBW, ACT_LINEAR>(acc, os, ob, beta, slope, res); break;
  }
}

// Binary path: integer accumulator and the epilogue in one pass over a whole
// tile (one call per tile, so the per-pixel cost is a few vector ops).
// XNOR: acc = base - 2*raw (+ corr); AND: acc = raw. corr[pp] may be null.
template <int OBW, int ACT, bool AND>
inline void finish_tile_act(int np, const int32_t* raw, int32_t base, const int32_t* const* corr,
                            const float* os, const float* ob, const float* betas, float slope,
                            float* const* dst) {
  for (int pp = 0; pp < np; ++pp) {
    const int32_t* rr = raw + pp * OBW;
    const int32_t* cc = corr[pp];
    const float beta = betas[pp];
    float* out = dst[pp];
    if (cc) {
      for (int j = 0; j < OBW; ++j) {
        const int32_t a = AND ? rr[j] : base - (rr[j] << 1) + cc[j];
        float z = static_cast<float>(a) * os[j];
        z = z * beta;
        z = z + ob[j];
        out[j] = apply_activation(z, ACT, slope);
      }
    } else {
      for (int j = 0; j < OBW; ++j) {
        const int32_t a = AND ? rr[j] : base - (rr[j] << 1);
        float z = static_cast<float>(a) * os[j];
        z = z * beta;
        z = z + ob[j];
        out[j] = apply_activation(z, ACT, slope);
      }
    }
  }
}

template <int OBW, bool AND>
inline void finish_tile(int32_t act, int np, const int32_t* raw, int32_t base,
                        const int32_t* const* corr, const float* os, const float* ob,
                        const float* betas, float slope, float* const* dst) {
  switch (act) {
#define BINCONV_ACT_CASE(A)                                                                   \
  case A:                                                                                     \
    finish_tile_act<OBW, A, AND>(np, raw, base, corr, os, ob, betas, slope, dst);             \
    break;
    BINCONV_ACT_CASE(ACT_RELU)
    BINCONV_ACT_CASE(ACT_RELU6)
    BINCONV_ACT_CASE(ACT_LEAKY_RELU)
    BINCONV_ACT_CASE(ACT_SIGMOID)
    BINCONV_ACT_CASE(ACT_TANH)
    BINCONV_ACT_CASE(ACT_HARD_TANH)
    BINCONV_ACT_CASE(ACT_SIGN)
#undef BINCONV_ACT_CASE
    default: finish_tile_act<OBW, ACT_LINEAR, AND>(np, raw, base, corr, os, ob, betas, slope, dst);
  }
}

// Geometry shared by both paths.
struct Geometry {
  int64_t N, H, W, C, O, G, Cg, Og, KH, KW, T, Ho, Wo, Hp, Wp, NQ, HoWo;
  std::vector<uint8_t> row_ok, col_ok;  // output row/col whose taps all lie inside the image

  explicit Geometry(const ConvParams& p)
      : N(p.n), H(p.h), W(p.w), C(p.c), O(p.o), G(p.groups), Cg(p.cg()), Og(p.og()),
        KH(p.kh), KW(p.kw), T(p.kh * p.kw), Ho(p.ho()), Wo(p.wo()),
        Hp(p.h + p.pad_top + p.pad_bottom), Wp(p.w + p.pad_left + p.pad_right),
        NQ(p.n * p.ho() * p.wo()), HoWo(p.ho() * p.wo()) {
    row_ok.resize(Ho);
    col_ok.resize(Wo);
    for (int64_t yo = 0; yo < Ho; ++yo) {
      const int64_t y0 = yo * p.stride_h - p.pad_top;
      row_ok[yo] = y0 >= 0 && y0 + (KH - 1) * p.dil_h < H;
    }
    for (int64_t xo = 0; xo < Wo; ++xo) {
      const int64_t x0 = xo * p.stride_w - p.pad_left;
      col_ok[xo] = x0 >= 0 && x0 + (KW - 1) * p.dil_w < W;
    }
  }
};

// beta[q] for every output pixel (SPEC section 5): in-image taps only, in
// tap order, divided by KH*KW.
inline void compute_beta(const ConvParams& p, const Geometry& g, const float* A, float* beta,
                         const Executor& ex) {
  const float inv = 1.0f / static_cast<float>(g.T);
  (void)inv;
  ex.parallel_for(g.N * g.Ho, [&](int64_t r) {
    const int64_t n = r / g.Ho, yo = r % g.Ho;
    for (int64_t xo = 0; xo < g.Wo; ++xo) {
      float s = 0.0f;
      for (int64_t dy = 0; dy < g.KH; ++dy) {
        const int64_t y = yo * p.stride_h + dy * p.dil_h - p.pad_top;
        if (y < 0 || y >= g.H) continue;
        for (int64_t dx = 0; dx < g.KW; ++dx) {
          const int64_t x = xo * p.stride_w + dx * p.dil_w - p.pad_left;
          if (x < 0 || x >= g.W) continue;
          s += A[(n * g.H + y) * g.W + x];
        }
      }
      beta[r * g.Wo + xo] = s / static_cast<float>(g.T);
    }
  });
}

// Work split of the output: items are (chunk of pixel tiles, weight block).
// Chunks are large enough to reuse a weight block from L1 across many pixels,
// small enough that every thread gets several items even at N=1: about 12
// items a thread. With 32 (before), each item's set-up, its first tiles on
// cold lines and its claim cost more than the finer balance saved: in-process
// A/B against the build before at 2 threads, N=1, 32 a thread gained L2
// 2.2 us and the 4 x L3 chain 6.5 us, 12 a thread L2 2.8, chain 8.1, L1 4.7,
// L4 2.3 us (N=8 and 1 thread: within noise or slightly better).
inline int64_t tiles_per_chunk(int64_t ntile, int64_t nblocks, int nthreads) {
  const int64_t want_items = 12 * static_cast<int64_t>(std::max(1, nthreads));
  int64_t chunks = std::max<int64_t>(1, (want_items + nblocks - 1) / nblocks);
  chunks = std::max(chunks, (ntile + 31) / 32);  // at most 32 tiles a chunk
  chunks = std::min(chunks, std::max<int64_t>(1, ntile));
  return (ntile + chunks - 1) / chunks;  // equal chunks: no straggler item at the end
}

// bin() of 32 floats as bits (1 unless v < 0; NaN gives 1).
inline uint32_t sign_bits32_generic(const float* v) {
  uint32_t bits = 0;
  for (int j = 0; j < 32; ++j) bits |= static_cast<uint32_t>(!(v[j] < 0.0f)) << j;
  return bits;
}

// What the kernels without a fused tile epilogue (scalar, AVX2, NEON) share:
// tile sizes, generic sign packing, plain stores and the portable float tile.
// Each adds popcount64, pack_float_bits and bin_tile of its own.
template <int P, int OBW, int PF, int OBWF>
struct PortableTraits {
  static constexpr int kP = P;
  static constexpr int kObw = OBW;
  static constexpr int kPf = PF;
  static constexpr bool kFused = false;  // no fused tile epilogue: bin_tile + finish_tile
  static constexpr bool kDwordLanes = false;  // 64-bit steps
  static constexpr bool kRowPack = false;  // no pack_float_row: pack_float_bits per pixel
  static constexpr int kObwf = OBWF;

  static uint32_t sign_bits32(const float* v) { return sign_bits32_generic(v); }
  static void store_row(float* dst, const float* src, bool) {
    std::memcpy(dst, src, sizeof(float) * OBW);
  }
  static void store_fence() {}
  static void float_tile(const float* const* xp, const int64_t* tapoff, int64_t T, int64_t Cg,
                         const float* w, float* acc) {
    float_tile_generic<PF, OBWF>(xp, tapoff, T, Cg, w, acc);
  }
};

template <class K, int OBW>
inline void store_outputs(const ConvParams& p, const float* res, int64_t q, int64_t o0,
                          int64_t cnt, void* out) {
  if (!p.out_packed) {
    std::memcpy(static_cast<float*>(out) + q * p.o + o0, res, sizeof(float) * cnt);
    return;
  }
  static_assert(OBW <= 32, "packed store assumes at most 32 outputs per block");
  uint64_t bits = 0;
  if (OBW == 32) {
    bits = K::sign_bits32(res) & low_mask(cnt);  // lanes past cnt are padding
  } else {
    for (int64_t j = 0; j < cnt; ++j) bits |= static_cast<uint64_t>(!(res[j] < 0.0f)) << j;
  }
  const int64_t ow = p.out_words();
  uint32_t* dst = static_cast<uint32_t*>(out) + q * ow + (o0 >> 5);
  if (OBW == 32 && cnt == 32 && (o0 & 31) == 0) {  // the block owns the whole word
    *dst = static_cast<uint32_t>(bits);
    return;
  }
  bits <<= (o0 & 31);
  // Blocks of different work items may share a word when O/groups is not a
  // multiple of 32; OR-ing atomically into the zeroed output keeps that race-free.
  const uint32_t lo = static_cast<uint32_t>(bits), hi = static_cast<uint32_t>(bits >> 32);
  if (lo) __atomic_fetch_or(dst, lo, __ATOMIC_RELAXED);
  if (hi) __atomic_fetch_or(dst + 1, hi, __ATOMIC_RELAXED);
}

// Output scale and bias by (weight block of OBW outputs, lane), zero past
// each group's Og: the layout the epilogue reads. Blocks are group-major.
template <int OBW>
inline void block_scales(const ConvCall& call, const Geometry& g, float* osp, float* obp) {
  const int64_t nbg = (g.Og + OBW - 1) / OBW;
  for (int64_t blk = 0; blk < g.G * nbg; ++blk) {
    const int64_t gi = blk / nbg, b = blk % nbg;
    for (int lane = 0; lane < OBW; ++lane) {
      const int64_t oi = b * OBW + lane;
      const bool valid = oi < g.Og;
      osp[blk * OBW + lane] = valid ? call.output_scale[gi * g.Og + oi] : 0.0f;
      obp[blk * OBW + lane] = valid ? call.output_bias[gi * g.Og + oi] : 0.0f;
    }
  }
}

// Binarizes npix contiguous pixels of C channels (C a multiple of 64, one
// group, no |x| sums) into npix * C / 64 contiguous words: the traits' row
// packer when it has one, else its per-pixel packer.
template <class K, bool IDENT>
inline void pack_float_pixels(const float* x, const float* ib, const float* is, int64_t C,
                              int64_t npix, uint64_t* bits) {
  if constexpr (K::kRowPack) {
    K::template pack_float_row<IDENT>(x, ib, is, C, npix, bits);
  } else {
    for (int64_t i = 0; i < npix; ++i)
      K::template pack_float_bits<IDENT>(x + i * C, ib, is, C, bits + i * (C / 64), nullptr);
  }
}

template <class K>
std::string run_binary(const ConvCall& call, const Geometry& g, const Executor& ex) {
  const ConvParams& p = call.p;
  constexpr int P = K::kP;
  constexpr int OBW = K::kObw;
  const bool is_and = p.type == AND;
  const int64_t KW64 = (g.Cg + 63) / 64;
  const int64_t PS = g.G * KW64;  // words per padded pixel
  const int64_t nbg = (g.Og + OBW - 1) / OBW;
  const int64_t NB = g.G * nbg;
  const int64_t KT = g.T * KW64;

  // Padded pixels hold +1 bits (masked to Cg) when that makes the padding
  // exact (XNOR pad +1, AND pad 1), else 0 bits; what is left is corrected.
  const bool fill_ones = p.pad_value > 0.0f;
  // XNOR: a padded tap adds fill*sum_c bin(w) but should add pad*sum_c bin(w).
  const int32_t corr_coef =
      is_and ? 0 : static_cast<int32_t>(p.pad_value) - (fill_ones ? 1 : -1);

  const int64_t xp_n = g.N * g.Hp * g.Wp * PS, wr_n = NB * KT * OBW;
  const int64_t ab_n = p.beta_scaling ? g.N * g.H * g.W : 0, beta_n = p.beta_scaling ? g.NQ : 0;
  Arena& arena = thread_arena();
  const int64_t nrows = g.N * g.Hp;
  if (!arena.reserve(Arena::bytes_for<uint64_t>(xp_n) + 2 * Arena::bytes_for<float>(NB * OBW) +
                     Arena::bytes_for<float>(ab_n) + Arena::bytes_for<float>(beta_n) +
                     Arena::bytes_for<uint8_t>(nrows) + Arena::bytes_for<uint8_t>(NB)))
    return "out of memory";
  uint64_t* const xp = arena.take<uint64_t>(xp_n);
  // Output scales and biases by (block, lane): the caller's own arrays when
  // every block is full (Og a multiple of OBW: block blk's lanes are outputs
  // blk*OBW...), else a copy with zero lanes past each group's Og.
  const bool full_blocks = g.Og % OBW == 0;
  float* const osb = full_blocks ? nullptr : arena.take<float>(NB * OBW);
  float* const obb = full_blocks ? nullptr : arena.take<float>(NB * OBW);
  const float* const osp = full_blocks ? call.output_scale : osb;
  const float* const obp = full_blocks ? call.output_bias : obb;
  float* const A = p.beta_scaling ? arena.take<float>(ab_n) : nullptr;
  float* const beta = p.beta_scaling ? arena.take<float>(beta_n) : nullptr;

  const size_t w_words32 = static_cast<size_t>(g.O * g.T * ((g.Cg + 31) / 32));
  if (!full_blocks) block_scales<OBW>(call, g, osb, obb);
  const int64_t W32 = (g.Cg + 31) / 32;
  const uint64_t last_mask = low_mask(g.Cg - 64 * (KW64 - 1));
  // Word k of tap t of output o, as the kernel reads it (bits past Cg cleared).
  auto weight_word = [&](const uint32_t* src_t, int64_t k) {
    uint64_t v;
    if (2 * k + 1 < W32) {
      std::memcpy(&v, src_t + 2 * k, sizeof(v));  // two LSB-first uint32 words = one uint64
    } else {
      v = src_t[2 * k];
    }
    return k == KW64 - 1 ? v & last_mask : v;
  };

  std::vector<uint64_t> fill(PS);
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t k = 0; k < KW64; ++k)
      fill[gi * KW64 + k] = fill_ones ? low_mask(g.Cg - 64 * k) : 0;
  const int64_t rows = g.N * g.Hp;
  // Blocks that own whole output words store them; otherwise bits are OR-ed
  // into a zeroed output.
  const bool words_owned = OBW == 32 && g.Og % 32 == 0;
  const int64_t out_zero = (p.out_packed && !words_owned) ? g.NQ * p.out_words() : 0;
  const int64_t xw = p.x_words();
  // Without a folded batch norm (bias 0, scale 1) x' = x up to the sign of
  // zero, which bin() and |x'| ignore: skip the affine.
  // (One pass without an early exit: it vectorizes.)
  bool affine_identity = !p.x_packed;
  if (affine_identity) {
    int bad = 0;
    for (int64_t c = 0; c < g.C; ++c)
      bad |= (call.input_bias[c] != 0.0f) | (call.input_scale[c] != 1.0f);
    affine_identity = bad == 0;
  }

  // Binarizes and packs padded input row r (all its pixels, fill included).
  auto pack_row = [&](int64_t r) {
    const int64_t n = r / g.Hp, y = r % g.Hp - p.pad_top;
    uint64_t* row = xp + r * g.Wp * PS;
    auto put_fill = [&](int64_t xx) { std::memcpy(row + xx * PS, fill.data(), sizeof(uint64_t) * PS); };
    if (y < 0 || y >= g.H) {
      for (int64_t xx = 0; xx < g.Wp; ++xx) put_fill(xx);
      return;
    }
    for (int64_t xx = 0; xx < p.pad_left; ++xx) put_fill(xx);
    for (int64_t xx = p.pad_left + g.W; xx < g.Wp; ++xx) put_fill(xx);
    const int64_t nw = (g.C + 63) / 64;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (p.x_packed && g.G == 1 && g.C % 64 == 0) {
      // Two LSB-first uint32 words are one uint64 word and every bit is a
      // channel: the row's pixels are copied as they are, in one piece.
      std::memcpy(row + p.pad_left * PS,
                  static_cast<const uint32_t*>(call.x) + (n * g.H + y) * g.W * xw,
                  sizeof(uint64_t) * g.W * PS);
      if (A)
        for (int64_t x = 0; x < g.W; ++x) A[(n * g.H + y) * g.W + x] = 1.0f;
      return;
    }
#endif
    if (!p.x_packed && g.G == 1 && g.C % 64 == 0 && !A) {
      // The row's pixels are contiguous in the input and (one group, whole
      // words) in the padded row: one tight loop over the row, without the
      // per-pixel set-up below, which cost about twice the binarization
      // itself (rdtsc: 30 rows of L2 packed in 5.4 us; the same loop alone
      // 1.7 us). selftest 1 thread, float in/out: L2 52.9 -> 51.0 us, L1
      // 73.5 -> 67.9, L5 42.0 -> 36.4, L3 47.0 -> 46.1.
      const float* src = static_cast<const float*>(call.x) + (n * g.H + y) * g.W * g.C;
      uint64_t* dst = row + p.pad_left * PS;
      if (affine_identity)
        pack_float_pixels<K, true>(src, call.input_bias, call.input_scale, g.C, g.W, dst);
      else
        pack_float_pixels<K, false>(src, call.input_bias, call.input_scale, g.C, g.W, dst);
      return;
    }
    std::vector<uint64_t> tmp(g.G == 1 ? 0 : nw + 1);
    for (int64_t x = 0; x < g.W; ++x) {
      const int64_t pix = (n * g.H + y) * g.W + x;
      // One group: the pixel's words are the destination itself (the packers
      // leave bits past C zero); else they are split per group afterwards.
      uint64_t* const bits = g.G == 1 ? row + (p.pad_left + x) * PS : tmp.data();
      if (p.x_packed) {
        const uint32_t* src = static_cast<const uint32_t*>(call.x) + pix * xw;
        for (int64_t k = 0; k < nw; ++k) {
          uint64_t v = src[2 * k];
          if (2 * k + 1 < xw) v |= static_cast<uint64_t>(src[2 * k + 1]) << 32;
          bits[k] = v;
        }
        bits[nw - 1] &= low_mask(g.C - 64 * (nw - 1));
        if (A) A[pix] = 1.0f;  // |x'| = 1 for packed input
      } else {
        float asum = 0.0f;
        const float* xpix = static_cast<const float*>(call.x) + pix * g.C;
        // The float input comes from L2 or further: asking for the pixel two
        // ahead now hides part of that where pixels are long (selftest 1
        // thread: L2 56.4 -> 55.0 us; with C = 64 it cost more than it saved).
        if (g.C >= 128 && x + 2 < g.W)
          for (int64_t c = 0; c < g.C; c += 16) __builtin_prefetch(xpix + 2 * g.C + c, 0, 3);
        if (affine_identity)
          K::template pack_float_bits<true>(xpix, call.input_bias, call.input_scale, g.C, bits,
                                            A ? &asum : nullptr);
        else
          K::template pack_float_bits<false>(xpix, call.input_bias, call.input_scale, g.C, bits,
                                             A ? &asum : nullptr);
        if (A) A[pix] = asum / static_cast<float>(g.C);
      }
      if (g.G > 1) scatter_groups(bits, nw, g.G, g.Cg, KW64, row + (p.pad_left + x) * PS);
    }
  };

  // One-time task states (see run_once): per padded input row and per weight block.
  uint8_t* const row_state = arena.take<uint8_t>(rows);
  uint8_t* const blk_state = arena.take<uint8_t>(NB);

  // A cached candidate is used only after each block's check against the
  // caller's weights; if one fails, the call runs again with fresh weights.
  for (int attempt = 0;; ++attempt) {
  std::shared_ptr<const WeightEntry> cached =
      attempt == 0 ? weight_cache().find(call.w, w_words32, g.O, g.T, g.Cg, g.G, is_and) : nullptr;
  std::shared_ptr<WeightEntry> fresh;
  if (!cached) {
    fresh = std::make_shared<WeightEntry>();
    fresh->o = g.O, fresh->t = g.T, fresh->cg = g.Cg, fresh->groups = g.G, fresh->is_and = is_and;
    fresh->nwords = w_words32;
    WeightEntry::take_sample(call.w, w_words32, fresh->sample);
    fresh->src.assign(call.w, call.w + w_words32);
    fresh->wr = alloc_buf<uint64_t>(wr_n);
    fresh->wr_words = wr_n;
    fresh->wsum.resize(g.O * g.T);
    if (!fresh->wr) return "out of memory";
  }
  const WeightEntry& we = cached ? *cached : *fresh;
  uint64_t* const wr = we.wr.get();
  const int32_t* const wsum = we.wsum.data();
  int32_t* const wsum_out = fresh ? fresh->wsum.data() : nullptr;

  // Weights: [O, KH, KW, ceil(Cg/32)] uint32 -> [block][tap][word][lane]
  // uint64 (kDwordLanes: [block][tap][dword][lane] uint32, same bytes), lanes
  // past Og zero; bits past Cg cleared whatever the caller sent.
  auto repack_block = [&](int64_t blk) {
    const int64_t gi = blk / nbg, b = blk % nbg;
    uint64_t* dst = wr + blk * KT * OBW;
    uint32_t* const dst32 = reinterpret_cast<uint32_t*>(dst);
    auto put = [&](int64_t tk, int lane, uint64_t v) {
      if (K::kDwordLanes) {
        dst32[(2 * tk) * OBW + lane] = static_cast<uint32_t>(v);
        dst32[(2 * tk + 1) * OBW + lane] = static_cast<uint32_t>(v >> 32);
      } else {
        dst[tk * OBW + lane] = v;
      }
    };
    for (int lane = 0; lane < OBW; ++lane) {
      const int64_t oi = b * OBW + lane;
      const bool valid = oi < g.Og;
      const int64_t o = gi * g.Og + oi;
      if (!valid) {
        for (int64_t tk = 0; tk < KT; ++tk) put(tk, lane, 0);
        continue;
      }
      const uint32_t* srco = call.w + o * g.T * W32;
      for (int64_t t = 0; t < g.T; ++t) {
        int32_t pop = 0;
        for (int64_t k = 0; k < KW64; ++k) {
          const uint64_t v = weight_word(srco + t * W32, k);
          put(t * KW64 + k, lane, v);
          pop += static_cast<int32_t>(K::popcount64(v));
        }
        // sum over channels of the product-weight: 2*pop - Cg for XNOR, pop for AND
        wsum_out[t * g.O + o] = is_and ? pop : 2 * pop - static_cast<int32_t>(g.Cg);
      }
    }
  };
  // Whether a cached block was made from exactly the caller's weights (its
  // outputs' rows of the packed weights are contiguous: one memcmp).
  auto verify_block = [&](int64_t blk) {
    const int64_t gi = blk / nbg, b = blk % nbg;
    const int64_t nvalid = std::min<int64_t>(OBW, g.Og - b * OBW);
    const int64_t off = (gi * g.Og + b * OBW) * g.T * W32;
    return std::memcmp(we.src.data() + off, call.w + off,
                       sizeof(uint32_t) * nvalid * g.T * W32) == 0;
  };

  // Lazy mode (cached weights, no beta, no output to zero first): one parallel
  // phase. A work item first checks the weight blocks it uses and packs the
  // input rows it reads, unless another thread already has (or is: then it
  // waits for that row), so there is no barrier between packing and
  // convolution, a helper thread that starts late joins whatever is left, and
  // a band of input rows is packed just before the items that read it (at
  // N=8 the packed band is still in L2). Otherwise phase 1 packs every row
  // and re-blocks (fresh) or checks (cached) every weight block.
  const bool lazy = cached && !p.beta_scaling && out_zero == 0;
  std::memset(blk_state, 0, NB);
  std::memset(row_state, lazy ? 0 : 2, rows);
  bool mismatch = false;  // written with __atomic_store_n

  if (!lazy) {
    const int64_t nblk_items = NB;
    ex.parallel_for(nblk_items + rows, [&](int64_t item) {
      if (item < nblk_items) {
        if (fresh)
          repack_block(item);
        else if (!verify_block(item))
          __atomic_store_n(&mismatch, true, __ATOMIC_RELAXED);
        return;
      }
      const int64_t r = item - nblk_items;
      if (out_zero) {
        const int64_t z0 = out_zero * r / rows, z1 = out_zero * (r + 1) / rows;
        std::memset(static_cast<uint32_t*>(call.out) + z0, 0, sizeof(uint32_t) * (z1 - z0));
      }
      pack_row(r);
    });
    if (mismatch) continue;  // stale candidate: re-block the caller's weights
    std::memset(blk_state, 2, NB);
    if (fresh) weight_cache().insert(fresh);
    if (p.beta_scaling) compute_beta(p, g, A, beta, ex);
  }

  // Border correction by class: which taps of an output pixel fall in the
  // padding depends only on its row's and its column's pattern (3 x 3
  // classes for a 3x3 SAME layer), so the correction is one table row per
  // class, looked up instead of summed per pixel.
  auto build_plan = [&](std::vector<int64_t> key) {
    auto plan = std::make_shared<CorrPlan>();
    plan->key = std::move(key);
    std::vector<int32_t>& row_cls = plan->row_cls;
    std::vector<int32_t>& col_cls = plan->col_cls;
    std::vector<int32_t>& corr_tab = plan->corr_tab;
    row_cls.assign(g.Ho, 0);
    col_cls.assign(g.Wo, 0);
    std::vector<std::vector<uint8_t>> row_pad, col_pad;  // per class: tap row/col in padding
    auto classify = [](int64_t n_out, int64_t n_tap, int64_t stride, int64_t dil, int64_t pad,
                       int64_t size, std::vector<int32_t>& cls, std::vector<std::vector<uint8_t>>& pats) {
      std::vector<uint8_t> pat(n_tap);
      for (int64_t o = 0; o < n_out; ++o) {
        for (int64_t d = 0; d < n_tap; ++d) {
          const int64_t v = o * stride + d * dil - pad;
          pat[d] = v < 0 || v >= size;
        }
        size_t id = 0;
        while (id < pats.size() && pats[id] != pat) ++id;
        if (id == pats.size()) pats.push_back(pat);
        cls[o] = static_cast<int32_t>(id);
      }
    };
    if (corr_coef != 0) {
      classify(g.Ho, g.KH, p.stride_h, p.dil_h, p.pad_top, g.H, row_cls, row_pad);
      classify(g.Wo, g.KW, p.stride_w, p.dil_w, p.pad_left, g.W, col_cls, col_pad);
      const int64_t ncls = static_cast<int64_t>(row_pad.size() * col_pad.size());
      if (ncls * g.O <= (int64_t{1} << 22)) {
        // + OBW: a block's row is read whole (OBW lanes) even when it has fewer
        // real outputs; the slack keeps the last class row's read in bounds.
        corr_tab.assign(ncls * g.O + OBW, 0);
        for (size_t rc = 0; rc < row_pad.size(); ++rc)
          for (size_t cc = 0; cc < col_pad.size(); ++cc) {
            int32_t* dst = corr_tab.data() + (rc * col_pad.size() + cc) * g.O;
            for (int64_t dy = 0; dy < g.KH; ++dy)
              for (int64_t dx = 0; dx < g.KW; ++dx) {
                if (!row_pad[rc][dy] && !col_pad[cc][dx]) continue;
                const int32_t* ws = wsum + (dy * g.KW + dx) * g.O;
                for (int64_t o = 0; o < g.O; ++o) dst[o] += corr_coef * ws[o];
              }
          }
      }
    }
    plan->ncol_cls = static_cast<int64_t>(col_pad.size());
    // The per-pixel data of the work items (was computed per item: ~1.6
    // thread-us a call of L2 at N=1, 36 pixels an item).
    if (corr_coef == 0 || !corr_tab.empty()) {
      plan->pix_off.resize(g.HoWo + P);
      plan->pix_crow.resize(g.HoWo + P);
      for (int64_t yo = 0; yo < g.Ho; ++yo)
        for (int64_t xo = 0; xo < g.Wo; ++xo) {
          const int64_t i = yo * g.Wo + xo;
          const bool border = corr_coef != 0 && !(g.row_ok[yo] && g.col_ok[xo]);
          plan->pix_off[i] = ((yo * p.stride_h) * g.Wp + xo * p.stride_w) * PS;
          plan->pix_crow[i] =
              border ? corr_tab.data() + (row_cls[yo] * plan->ncol_cls + col_cls[xo]) * g.O : nullptr;
        }
      for (int64_t i = g.HoWo; i < g.HoWo + P; ++i) {
        plan->pix_off[i] = plan->pix_off[g.HoWo - 1];
        plan->pix_crow[i] = nullptr;
      }
    }
    return std::shared_ptr<const CorrPlan>(std::move(plan));
  };
  // (Built without a correction too: it holds the per-pixel data.)
  std::shared_ptr<const CorrPlan> plan;
  {
    std::vector<int64_t> key{g.H, g.W, g.KH, g.KW, p.stride_h, p.stride_w, p.dil_h, p.dil_w,
                             p.pad_top, p.pad_left, p.pad_bottom, p.pad_right, corr_coef};
    {
      std::lock_guard<std::mutex> lock(we.plan_mu);
      if (we.plan && we.plan->key == key) plan = we.plan;
    }
    if (!plan) {
      plan = build_plan(std::move(key));
      std::lock_guard<std::mutex> lock(we.plan_mu);
      we.plan = plan;
    }
  }
  const std::vector<int32_t>& corr_tab = plan->corr_tab;
  const int64_t ncol_cls = plan->ncol_cls;

  std::vector<int64_t> tapoff(g.T);
  for (int64_t dy = 0; dy < g.KH; ++dy)
    for (int64_t dx = 0; dx < g.KW; ++dx)
      tapoff[dy * g.KW + dx] = ((dy * p.dil_h) * g.Wp + dx * p.dil_w) * PS;
  // One flat step list (tap, word) -> word offset from the pixel's base, so the
  // inner loop is a single loop with base+index addressing even when a tap
  // has only one word (C <= 64).
  // kDwordLanes: two 32-bit steps per word, offsets in dwords.
  const int64_t KS = K::kDwordLanes ? 2 * KT : KT;  // steps per tile
  std::vector<int64_t> koff(KS);
  for (int64_t t = 0; t < g.T; ++t)
    for (int64_t k = 0; k < KW64; ++k) {
      if (K::kDwordLanes) {
        koff[2 * (t * KW64 + k)] = 2 * (tapoff[t] + k);
        koff[2 * (t * KW64 + k) + 1] = 2 * (tapoff[t] + k) + 1;
      } else {
        koff[t * KW64 + k] = tapoff[t] + k;
      }
    }

  // Phase 2: the convolution proper. Blocks are taken in groups of up to
  // ~160 KiB of weights: one chunk's pixel setup (pointers, border class,
  // beta) then serves every block of the group. An item runs its group block
  // by block over the chunk's tiles, so only one block (a few KiB) need stay
  // in L1; the group bounds what an item streams from L2. Groups of 24 KiB
  // (before) cut L3 and L7 into 4 and L4 into 16 groups: in-process A/B at
  // 2 threads, 160 against 24 KiB: 4 x L3 chain N=1 -4%, L4 N=1 -5%, L7 N=1
  // -3%, L3 N=8 -3%, L4 N=8 -3% (more than 160 KiB: L4 N=1 has too few items).
  const int64_t blk_bytes = KT * OBW * 8;
  int64_t gsz = std::max<int64_t>(1, std::min<int64_t>(NB, (int64_t{160} << 10) / blk_bytes));
  const int64_t NGB = (NB + gsz - 1) / gsz;
  gsz = (NB + NGB - 1) / NGB;  // equal groups
  const int64_t ntile = (g.NQ + P - 1) / P;
  // At least an output row's pixels per chunk: a chunk of fewer shares most
  // of its input rows with its neighbours (L3 at N=1 had 17 one-tile items of
  // 12 pixels on rows of 14; now 9 of two tiles. In-process A/B at 2 threads,
  // p25: 4 x L3 chain N=1 113.8 -> 111.6 us, 134.8 -> 133.1, L3 N=1 31.9 ->
  // 31.2). Only layers with rows wider than their chunks change (of BENCH.md's
  // layers, L3 at N=1).
  const int64_t tc = std::min(ntile, std::max(tiles_per_chunk(ntile, NGB, ex.num_threads()),
                                              (g.Wo + P - 1) / P));
  const int64_t nchunk = (ntile + tc - 1) / tc;
  // Packed input bytes one chunk touches (its pixels' rows, strides included).
  const int64_t chunk_bytes = std::max<int64_t>(1, tc * P * p.stride_h * p.stride_w * PS * 8);
  const int64_t cps = std::max<int64_t>(1, (int64_t{192} << 10) / chunk_bytes);  // chunks per super-chunk
  const int64_t nsc = (nchunk + cps - 1) / cps;
  // XNOR: acc = T*Cg - 2*popcount(xor); AND: acc = popcount(and)
  const int32_t acc_base = is_and ? 0 : static_cast<int32_t>(g.T * g.Cg);
  const bool direct_store = !p.out_packed;
  // A float output much larger than the caches is written with streaming
  // stores: no read-for-ownership of lines that are overwritten whole.
  const bool stream_out = !p.out_packed && g.NQ * g.O * 4 > (int64_t{4} << 20);
  ex.parallel_for(nchunk * NGB, [&](int64_t item) {
    // Everything the loops read, as locals: through the captured references
    // the compiler must reload them after every store into the tile arrays.
    const int64_t NQ = g.NQ, HoWo = g.HoWo, Ho = g.Ho, Wo = g.Wo, Hp = g.Hp, Wp = g.Wp;
    const int64_t H = g.H, W = g.W, KH = g.KH, KWd = g.KW, O = g.O, Og = g.Og;
    const int64_t sh = p.stride_h, sw = p.stride_w, dh = p.dil_h, dw = p.dil_w;
    const int64_t pt = p.pad_top, pl = p.pad_left;
    const uint8_t* const row_ok = g.row_ok.data();
    const uint8_t* const col_ok = g.col_ok.data();
    const int64_t* const koffs = koff.data();
    const int32_t* const ctab = corr_tab.empty() ? nullptr : corr_tab.data();
    const int32_t* const rcls = plan->row_cls.data();
    const int32_t* const ccls = plan->col_cls.data();
    const int64_t* const pix_off = plan->pix_off.empty() ? nullptr : plan->pix_off.data();
    const int32_t* const* const pix_crow = plan->pix_crow.data();
    const int32_t act = p.activation;
    const float slope = p.negative_slope;
    const bool has_beta = p.beta_scaling;
    const int64_t kt = KS;  // steps of a tile
    uint64_t* const xpb = xp;
    float* const outf = static_cast<float*>(call.out);
    uint32_t* const out32 = static_cast<uint32_t*>(call.out);
    const int64_t ow = p.out_words();

    // Items run super-chunk by super-chunk (a span of pixels whose packed
    // input stays in L2 while every weight group passes over it: streaming
    // the whole input from memory once per block is 2-3x slower at N=8), and
    // group-major inside one: threads running at the same time work on
    // different pixel chunks of one weight group, so they share the
    // read-only weights and never write the same output cache line.
    const int64_t sc = std::min(item / (NGB * cps), nsc - 1);
    const int64_t sc_first = sc * cps;
    const int64_t sc_len = std::min(cps, nchunk - sc_first);
    const int64_t r_in = item - sc_first * NGB;
    const int64_t grp = r_in / sc_len, chunk = sc_first + r_in % sc_len;
    const int64_t blk0 = grp * gsz, blk1 = std::min(NB, blk0 + gsz);
    const int64_t tile0 = chunk * tc, t_end = std::min(ntile, (chunk + 1) * tc);
    const int64_t q0 = tile0 * P, q_end = std::min(NQ, t_end * P);
    if (lazy) {
      if (__atomic_load_n(&mismatch, __ATOMIC_RELAXED)) return;
      // The padded rows this chunk's pixels read: from its first pixel's
      // first tap row to its last pixel's last tap row.
      const int64_t qa = q0, qb = q_end - 1;
      const int64_t r_lo = (qa / HoWo) * Hp + ((qa % HoWo) / Wo) * sh;
      const int64_t r_hi = std::min(nrows - 1, (qb / HoWo) * Hp + ((qb % HoWo) / Wo) * sh + (KH - 1) * dh);
      auto check = [&](int64_t blk) { return verify_block(blk); };
      auto pack = [&](int64_t r) {
        pack_row(r);
        return true;
      };
      // First the blocks and rows nobody has started (threads that start
      // together, on neighbouring items, then split the checks and the
      // packing instead of one waiting for the other), then wait for those
      // another thread is on.
      bool pending = false;
      for (int64_t blk = blk0; blk < blk1; ++blk) {
        const uint8_t st = try_run_once(blk_state + blk, [&] { return check(blk); });
        if (st == 3) {
          __atomic_store_n(&mismatch, true, __ATOMIC_RELAXED);
          return;
        }
        pending |= st == 1;
      }
      for (int64_t r = r_lo; r <= r_hi; ++r)
        pending |= try_run_once(row_state + r, [&] { return pack(r); }) == 1;
      if (pending) {
        for (int64_t blk = blk0; blk < blk1; ++blk)
          if (!run_once(blk_state + blk, [&] { return check(blk); })) {
            __atomic_store_n(&mismatch, true, __ATOMIC_RELAXED);
            return;
          }
        for (int64_t r = r_lo; r <= r_hi; ++r) run_once(row_state + r, [&] { return pack(r); });
      }
    }
    // Per pixel of the chunk, once for every block of the group: its base word
    // offset, its border class row of the correction table (null inside the
    // image) and beta. Pixels past NQ repeat the last one (computed, never stored).
    // Without beta, a chunk whose tiles lie in one image reads the first two
    // from the plan (offsets from its image's first padded word).
    constexpr int kMaxPix = 32 * P;  // tiles_per_chunk gives at most 32 tiles
    alignas(64) int64_t off[kMaxPix];
    const int32_t* crow[kMaxPix];
    alignas(64) float bet[kMaxPix];
    bool any_slow = false;  // a border pixel without a table row (too many classes)
    const int64_t n0 = q0 / HoWo;
    const bool from_plan = pix_off != nullptr && !has_beta && (q_end - 1) / HoWo == n0 &&
                           (t_end * P <= (n0 + 1) * HoWo || q_end == NQ);
    const int64_t* const offp = from_plan ? pix_off + (q0 - n0 * HoWo) : off;
    const int32_t* const* const crowp = from_plan ? pix_crow + (q0 - n0 * HoWo) : crow;
    const int64_t img_base = from_plan ? n0 * Hp * Wp * PS : 0;
    if (from_plan) {
      for (int64_t i = 0; i < (t_end - tile0) * P; ++i) bet[i] = 1.0f;  // read by finish_tile only
    } else {
      int64_t n = q0 / HoWo, yo = (q0 % HoWo) / Wo, xo = q0 % Wo;
      const int64_t npix = q_end - q0;
      for (int64_t i = 0; i < npix; ++i) {
        const bool border = corr_coef != 0 && !(row_ok[yo] && col_ok[xo]);
        crow[i] = border && ctab ? ctab + (rcls[yo] * ncol_cls + ccls[xo]) * O : nullptr;
        any_slow |= border && !ctab;
        off[i] = ((n * Hp + yo * sh) * Wp + xo * sw) * PS;
        bet[i] = has_beta ? beta[q0 + i] : 1.0f;
        if (++xo == Wo) {
          xo = 0;
          if (++yo == Ho) yo = 0, ++n;
        }
      }
      for (int64_t i = npix; i < (t_end - tile0) * P; ++i) {
        off[i] = off[npix - 1], crow[i] = nullptr, bet[i] = 1.0f;
      }
    }
    alignas(64) int32_t raw[P * OBW];
    alignas(64) int32_t corr[P][OBW];
    alignas(64) float res[P][OBW];
    const uint64_t* ptrs[P];
    const int32_t* corr_ptr[P];
    float* dst[P];
    // Block-major inside the item: one block's weights stay in L1 while the
    // chunk's tiles (whose input rows stay in L1/L2) pass.
    for (int64_t blk = blk0; blk < blk1; ++blk) {
      const int64_t gi = blk / nbg, b = blk % nbg;
      const int64_t o0 = gi * Og + b * OBW;
      const int64_t cnt = std::min<int64_t>(OBW, Og - b * OBW);
      const bool direct = direct_store && cnt == OBW;
      const uint64_t* const wblk = wr + blk * KT * OBW;
      const float* const os_blk = osp + blk * OBW;
      const float* const ob_blk = obp + blk * OBW;
      const uint64_t* const xg = xpb + img_base + gi * KW64;
      // Tiles whose epilogue the ISA applies from registers: a full block,
      // linear or ReLU, float rows (streamed when stream_out) or whole packed words.
      const bool fused = K::kFused && !any_slow && cnt == OBW &&
                         (act == ACT_LINEAR || act == ACT_RELU) &&
                         (direct || words_owned);
      if (fused) {
        if constexpr (K::kFused) {
          const bool relu = act == ACT_RELU, pk = !direct;
          for (int64_t tile = tile0; tile < t_end; ++tile) {
            const int np = static_cast<int>(std::min<int64_t>(P, NQ - tile * P));
            const int64_t i0 = (tile - tile0) * P, q = tile * P;
            const float* const bts = has_beta ? bet + i0 : nullptr;
#define BINCONV_FUSED(AND_, RELU_, PK_)                                                          \
  K::template bin_tile_fused<AND_, RELU_, PK_>(xg, offp + i0, koffs, kt, wblk, np, acc_base,     \
                                               crowp + i0, o0, os_blk, ob_blk, bts,               \
                                               outf + q * O + o0, out32 + q * ow + (o0 >> 5), O, ow, \
                                               stream_out)
            if (is_and) {
              if (relu) { if (pk) BINCONV_FUSED(true, true, true); else BINCONV_FUSED(true, true, false); }
              else { if (pk) BINCONV_FUSED(true, false, true); else BINCONV_FUSED(true, false, false); }
            } else {
              if (relu) { if (pk) BINCONV_FUSED(false, true, true); else BINCONV_FUSED(false, true, false); }
              else { if (pk) BINCONV_FUSED(false, false, true); else BINCONV_FUSED(false, false, false); }
            }
#undef BINCONV_FUSED
          }
        }
        continue;
      }
      for (int64_t tile = tile0; tile < t_end; ++tile) {
        const int np = static_cast<int>(std::min<int64_t>(P, NQ - tile * P));
        const int64_t i0 = (tile - tile0) * P;
        for (int pp = 0; pp < P; ++pp) ptrs[pp] = xg + offp[i0 + pp];
        for (int pp = 0; pp < np; ++pp) {
          const int64_t q = tile * P + pp;
          corr_ptr[pp] = crowp[i0 + pp] ? crowp[i0 + pp] + o0 : nullptr;
          if (any_slow && corr_coef != 0) {
            const int64_t yo = (q % HoWo) / Wo, xo = q % Wo;
            if (!(row_ok[yo] && col_ok[xo])) {
              for (int j = 0; j < OBW; ++j) corr[pp][j] = 0;
              for (int64_t dy = 0; dy < KH; ++dy) {
                const int64_t y = yo * sh + dy * dh - pt;
                for (int64_t dx = 0; dx < KWd; ++dx) {
                  const int64_t x = xo * sw + dx * dw - pl;
                  if (y >= 0 && y < H && x >= 0 && x < W) continue;
                  const int32_t* ws = wsum + (dy * KWd + dx) * O + o0;
                  for (int64_t j = 0; j < cnt; ++j) corr[pp][j] += corr_coef * ws[j];
                }
              }
              corr_ptr[pp] = corr[pp];
            }
          }
          dst[pp] = (direct && !stream_out) ? outf + q * O + o0 : res[pp];
        }
        if (is_and)
          K::template bin_tile<true>(ptrs, koffs, kt, wblk, raw);
        else
          K::template bin_tile<false>(ptrs, koffs, kt, wblk, raw);
        if (is_and)
          finish_tile<OBW, true>(act, np, raw, acc_base, corr_ptr, os_blk, ob_blk, bet + i0, slope, dst);
        else
          finish_tile<OBW, false>(act, np, raw, acc_base, corr_ptr, os_blk, ob_blk, bet + i0, slope, dst);
        if (!direct)
          for (int pp = 0; pp < np; ++pp)
            store_outputs<K, OBW>(p, res[pp], tile * P + pp, o0, cnt, call.out);
        else if (stream_out)
          for (int pp = 0; pp < np; ++pp) K::store_row(outf + (tile * P + pp) * O + o0, res[pp], true);
      }
    }
    if (stream_out) K::store_fence();  // order streaming stores before the item counts as done
  });
  if (mismatch) continue;  // stale candidate: run again with the caller's weights re-blocked
  return {};
  }  // attempts
}

template <class K>
std::string run_float(const ConvCall& call, const Geometry& g, const Executor& ex) {
  const ConvParams& p = call.p;
  constexpr int P = K::kPf;
  constexpr int OBW = K::kObwf;
  const int64_t PS = g.C;
  const int64_t nbg = (g.Og + OBW - 1) / OBW;
  const int64_t NB = g.G * nbg;
  const int64_t KT = g.T * g.Cg;

  auto xf = alloc_buf<float>(g.N * g.Hp * g.Wp * PS);
  auto wf = alloc_buf<float>(NB * KT * OBW);
  auto osp = alloc_buf<float>(NB * OBW);
  auto obp = alloc_buf<float>(NB * OBW);
  Buf<float> A, beta;
  if (p.beta_scaling) {
    A = alloc_buf<float>(g.N * g.H * g.W);
    beta = alloc_buf<float>(g.NQ);
    if (!A || !beta) return "out of memory";
  }
  if (!xf || !wf || !osp || !obp) return "out of memory";

  const int64_t W32 = (g.Cg + 31) / 32;
  std::fill(wf.get(), wf.get() + NB * KT * OBW, 0.0f);
  for (int64_t o = 0; o < g.O; ++o) {
    const int64_t gi = o / g.Og, oi = o % g.Og;
    const int64_t blk = gi * nbg + oi / OBW, lane = oi % OBW;
    for (int64_t t = 0; t < g.T; ++t) {
      const uint32_t* src = call.w + (o * g.T + t) * W32;
      for (int64_t c = 0; c < g.Cg; ++c) {
        const bool bit = (src[c >> 5] >> (c & 31)) & 1u;
        wf[(blk * KT + t * g.Cg + c) * OBW + lane] = bit ? 1.0f : -1.0f;
      }
    }
  }
  block_scales<OBW>(call, g, osp.get(), obp.get());

  // Padded positions hold pad_value itself, so the sum needs no correction.
  const int64_t rows = g.N * g.Hp;
  const float* x = static_cast<const float*>(call.x);
  ex.parallel_for(rows, [&](int64_t r) {
    const int64_t n = r / g.Hp, y = r % g.Hp - p.pad_top;
    float* row = xf.get() + r * g.Wp * PS;
    if (y < 0 || y >= g.H) {
      std::fill(row, row + g.Wp * PS, p.pad_value);
      return;
    }
    std::fill(row, row + p.pad_left * PS, p.pad_value);
    std::fill(row + (p.pad_left + g.W) * PS, row + g.Wp * PS, p.pad_value);
    for (int64_t xx = 0; xx < g.W; ++xx) {
      const int64_t pix = (n * g.H + y) * g.W + xx;
      const float* src = x + pix * g.C;
      float* dst = row + (p.pad_left + xx) * PS;
      float s = 0.0f;
      for (int64_t c = 0; c < g.C; ++c) {
        const float v = (src[c] + call.input_bias[c]) * call.input_scale[c];
        dst[c] = v;
        s += std::fabs(v);
      }
      if (A) A[pix] = s / static_cast<float>(g.C);
    }
  });
  if (p.beta_scaling) compute_beta(p, g, A.get(), beta.get(), ex);
  // store_outputs ORs packed bits into words that blocks share unless each
  // block owns whole words: start from zero then (as run_binary does).
  if (p.out_packed && !(OBW == 32 && g.Og % 32 == 0))
    std::memset(call.out, 0, sizeof(uint32_t) * g.NQ * p.out_words());

  std::vector<int64_t> tapoff(g.T);
  for (int64_t dy = 0; dy < g.KH; ++dy)
    for (int64_t dx = 0; dx < g.KW; ++dx)
      tapoff[dy * g.KW + dx] = ((dy * p.dil_h) * g.Wp + dx * p.dil_w) * PS;

  const int64_t ntile = (g.NQ + P - 1) / P;
  const int64_t tc = tiles_per_chunk(ntile, NB, ex.num_threads());
  const int64_t nchunk = (ntile + tc - 1) / tc;
  ex.parallel_for(nchunk * NB, [&](int64_t item) {
    const int64_t chunk = item / NB, blk = item % NB;
    const int64_t gi = blk / nbg, b = blk % nbg;
    const int64_t o0 = gi * g.Og + b * OBW;
    const int64_t cnt = std::min<int64_t>(OBW, g.Og - b * OBW);
    const float* wblk = wf.get() + blk * KT * OBW;
    alignas(64) float acc[P * OBW];
    alignas(64) float res[OBW];
    const float* ptrs[P];
    int64_t qs[P];
    const int64_t t_end = std::min(ntile, (chunk + 1) * tc);
    for (int64_t tile = chunk * tc; tile < t_end; ++tile) {
      for (int pp = 0; pp < P; ++pp) {
        const int64_t q = std::min(tile * P + pp, g.NQ - 1);
        qs[pp] = q;
        const int64_t n = q / g.HoWo, rem = q % g.HoWo;
        const int64_t yo = rem / g.Wo, xo = rem % g.Wo;
        ptrs[pp] = xf.get() + ((n * g.Hp + yo * p.stride_h) * g.Wp + xo * p.stride_w) * PS +
                   gi * g.Cg;
      }
      K::float_tile(ptrs, tapoff.data(), g.T, g.Cg, wblk, acc);
      const int np = static_cast<int>(std::min<int64_t>(P, g.NQ - tile * P));
      for (int pp = 0; pp < np; ++pp) {
        const int64_t q = qs[pp];
        const float bq = p.beta_scaling ? beta[q] : 1.0f;
        epilogue_dispatch<OBW>(p.activation, acc + pp * OBW, osp.get() + blk * OBW,
                               obp.get() + blk * OBW, bq, p.negative_slope, res);
        store_outputs<K, OBW>(p, res, q, o0, cnt, call.out);
      }
    }
  });
  return {};
}

template <class K>
std::string run_conv(const ConvCall& call, const Executor& ex) {
  const Geometry g(call.p);
  if (g.NQ == 0 || g.O == 0) return {};
  if (call.p.type == BINARY_WEIGHTS) return run_float<K>(call, g, ex);
  return run_binary<K>(call, g, ex);
}

}  // namespace BINCONV_ISA_NS
namespace detail = BINCONV_ISA_NS;
}  // namespace cpu
}  // namespace binconv
