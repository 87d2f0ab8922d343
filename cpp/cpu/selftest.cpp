// Standalone self-test of the CPU kernels, without Python or XLA: every ISA
// kernel built into this binary against a naive direct convolution written
// from SPEC.md, integer accumulators compared exactly. Used to run the NEON
// kernels under qemu-aarch64 (tests/test_cpu_kernel.py builds it with the
// cross compiler), and with --bench to time kernels without Python overhead.
//
//   g++ -O2 -std=c++17 -I../common selftest.cpp kernels_scalar.cpp [ISA files with flags]
#include <chrono>
#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernel_api.h"

using namespace binconv;
using namespace binconv::cpu;

namespace {

struct Kernel {
  const char* name;
  std::string (*fn)(const ConvCall&, const Executor&);
};

std::vector<Kernel> kernels() {
  std::vector<Kernel> k{{"scalar", conv2d_scalar}};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2")) k.push_back({"avx2", conv2d_avx2});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq"))
    k.push_back({"avx512", conv2d_avx512});
#endif
#if defined(__aarch64__)
  k.push_back({"neon", conv2d_neon});
#endif
  return k;
}

// Splits work items over 3 std::threads-free "threads": runs them in a
// scrambled order, which any correct kernel must tolerate.
class ScrambledExecutor final : public Executor {
 public:
  int num_threads() const override { return 3; }
  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) const override {
    for (int64_t i = n - 1; i >= 0; i -= 2) fn(i);
    for (int64_t i = n - 2; i >= 0; i -= 2) fn(i);
  }
};

struct Case {
  ConvParams p;
  std::vector<float> x, ib, is, os, ob;
  std::vector<uint32_t> xpk, w;
  std::vector<float> wf;  // latent weights [O, KH, KW, Cg]
};

uint32_t bit(float v) { return v < 0.0f ? 0u : 1u; }

// Direct convolution from the SPEC; returns accumulators [N, Ho, Wo, O] and,
// in *mag, the sums of |term| (the scale of float rounding for BINARY_WEIGHTS).
std::vector<double> reference(const Case& c, std::vector<double>* mag) {
  const ConvParams& p = c.p;
  const int64_t Ho = p.ho(), Wo = p.wo(), Cg = p.cg(), Og = p.og();
  std::vector<double> acc(p.n * Ho * Wo * p.o, 0.0);
  mag->assign(acc.size(), 0.0);
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t yo = 0; yo < Ho; ++yo)
      for (int64_t xo = 0; xo < Wo; ++xo)
        for (int64_t o = 0; o < p.o; ++o) {
          const int64_t g = o / Og;
          double s = 0, m = 0;
          for (int64_t dy = 0; dy < p.kh; ++dy)
            for (int64_t dx = 0; dx < p.kw; ++dx)
              for (int64_t ci = 0; ci < Cg; ++ci) {
                const int64_t ch = g * Cg + ci;
                const float wv = c.wf[((o * p.kh + dy) * p.kw + dx) * Cg + ci];
                const double wq = p.type == AND ? (wv < 0 ? 0.0 : 1.0) : (wv < 0 ? -1.0 : 1.0);
                const int64_t y = yo * p.stride_h + dy * p.dil_h - p.pad_top;
                const int64_t x = xo * p.stride_w + dx * p.dil_w - p.pad_left;
                double xq;
                if (y < 0 || y >= p.h || x < 0 || x >= p.w) {
                  xq = p.pad_value;
                } else {
                  const float xv = c.x[((n * p.h + y) * p.w + x) * p.c + ch];
                  const float xs = p.x_packed ? xv : (xv + c.ib[ch]) * c.is[ch];
                  xq = p.type == BINARY_WEIGHTS ? xs
                       : p.type == XNOR        ? (xs < 0 ? -1.0 : 1.0)
                                               : (xs < 0 ? 0.0 : 1.0);
                }
                s += xq * wq;
                m += std::fabs(xq * wq);
              }
          acc[((n * Ho + yo) * Wo + xo) * p.o + o] = s;
          (*mag)[((n * Ho + yo) * Wo + xo) * p.o + o] = m;
        }
  return acc;
}

Case make_case(std::mt19937& rng, int type, int64_t n, int64_t h, int64_t w, int64_t c, int64_t o,
               int64_t kh, int64_t kw, int64_t s, int64_t d, int64_t pad, int64_t groups, float pv,
               bool xpacked, bool opacked) {
  Case k;
  ConvParams& p = k.p;
  p.type = type;
  p.n = n, p.h = h, p.w = w, p.c = c, p.o = o, p.kh = kh, p.kw = kw;
  p.stride_h = s, p.stride_w = 1, p.dil_h = d, p.dil_w = 1;
  p.pad_top = pad, p.pad_bottom = 0, p.pad_left = pad, p.pad_right = pad + 1;
  p.groups = groups, p.pad_value = pv, p.x_packed = xpacked, p.out_packed = opacked;
  std::normal_distribution<float> nd;
  k.x.resize(n * h * w * c);
  for (size_t i = 0; i < k.x.size(); ++i) k.x[i] = (i % 7 == 0) ? (i % 2 ? -0.0f : 0.0f) : nd(rng);
  k.ib.resize(c), k.is.resize(c);
  for (int64_t i = 0; i < c; ++i) {
    k.ib[i] = xpacked ? 0.0f : 0.1f * nd(rng);
    k.is[i] = xpacked ? 1.0f : 0.5f + std::fabs(nd(rng));
  }
  if (xpacked) {  // the kernel sees bits; the reference sees +-1 values
    const int64_t xw = packed_words(c);
    k.xpk.assign(n * h * w * xw, 0u);
    for (int64_t pix = 0; pix < n * h * w; ++pix)
      for (int64_t ch = 0; ch < c; ++ch) {
        const float v = k.x[pix * c + ch];
        k.xpk[pix * xw + ch / 32] |= bit(v) << (ch % 32);
        k.x[pix * c + ch] = v < 0 ? -1.0f : 1.0f;
      }
  }
  const int64_t Cg = c / groups, w32 = packed_words(Cg);
  k.wf.resize(o * kh * kw * Cg);
  for (float& v : k.wf) v = nd(rng);
  k.w.assign(o * kh * kw * w32, 0u);
  for (int64_t r = 0; r < o * kh * kw; ++r)
    for (int64_t ci = 0; ci < Cg; ++ci) k.w[r * w32 + ci / 32] |= bit(k.wf[r * Cg + ci]) << (ci % 32);
  k.os.assign(o, 1.0f), k.ob.assign(o, 0.0f);
  return k;
}

int run_checks(bool quick) {
  std::mt19937 rng(1234);
  int fails = 0, cases = 0;
  const ScrambledExecutor ex;
  struct Shape { int64_t c, o, groups; };
  const Shape shapes[] = {{1, 3, 1}, {3, 5, 1}, {31, 33, 1}, {33, 40, 1}, {65, 64, 1},
                          {130, 70, 2}, {96, 36, 3}, {64, 64, 4}, {200, 37, 1},
                          {128, 36, 1}};  // C a multiple of 64, one group: rows packed whole
  struct Geo { int64_t kh, kw, s, d, pad; };
  const Geo geos[] = {{3, 3, 1, 1, 1}, {1, 1, 1, 1, 0}, {3, 3, 2, 1, 1}, {5, 5, 1, 2, 2}, {1, 3, 2, 1, 1}};
  const std::vector<Kernel> kerns = kernels();
  {
    for (int type = 0; type < 3; ++type) {
      std::vector<float> pvs = type == 0 ? std::vector<float>{0.0f, 0.5f}
                               : type == 1 ? std::vector<float>{0.0f, 1.0f, -1.0f}
                                           : std::vector<float>{0.0f, 1.0f};
      for (float pv : pvs)
        for (const Shape& sh : shapes)
          for (const Geo& ge : geos) {
            if (quick && (&ge - geos) % 2 != (&sh - shapes) % 2) continue;
            for (int variant = 0; variant < 3; ++variant) {
              const bool xpacked = variant == 1, opacked = variant == 2;
              if (type == BINARY_WEIGHTS && xpacked) continue;  // packed x is XNOR/AND only
              if (xpacked && sh.groups > 1 && (sh.c / sh.groups) % 32) continue;
              Case k = make_case(rng, type, quick ? 1 : 2, 7, 6, sh.c, sh.o, ge.kh, ge.kw, ge.s, ge.d, ge.pad,
                                 sh.groups, pv, xpacked, opacked);
              std::vector<double> mag;
              const std::vector<double> ref = reference(k, &mag);
              const ConvParams& p = k.p;
              const int64_t npix = p.n * p.ho() * p.wo();
              for (const Kernel& kern : kerns) {  // one reference, every kernel
              std::vector<float> outf(opacked ? 0 : npix * p.o, -999.0f);
              std::vector<uint32_t> outp(opacked ? npix * p.out_words() : 0, 0xdeadbeefu);
              ConvCall call;
              call.p = p;
              call.x = xpacked ? static_cast<const void*>(k.xpk.data()) : k.x.data();
              call.w = k.w.data();
              call.input_bias = k.ib.data(), call.input_scale = k.is.data();
              call.output_scale = k.os.data(), call.output_bias = k.ob.data();
              call.out = opacked ? static_cast<void*>(outp.data()) : outf.data();
              const std::string err = kern.fn(call, ex);
              bool ok = err.empty();
              for (int64_t q = 0; ok && q < npix; ++q)
                for (int64_t o = 0; ok && o < p.o; ++o) {
                  const double r = ref[q * p.o + o];
                  if (opacked) {
                    const uint32_t b = (outp[q * p.out_words() + o / 32] >> (o % 32)) & 1u;
                    // float sums (BINARY_WEIGHTS) may round either way right at 0
                    const bool near0 = type == 0 && std::fabs(r) <= 1e-6 + 1e-5 * mag[q * p.o + o];
                    ok = near0 || b == bit(static_cast<float>(r));
                  } else if (type == 0) {
                    ok = std::fabs(outf[q * p.o + o] - r) <= 1e-6 + 1e-5 * mag[q * p.o + o];
                  } else {
                    ok = outf[q * p.o + o] == static_cast<float>(r);
                  }
                }
              if (ok && opacked && p.o % 32)
                for (int64_t q = 0; q < npix; ++q)
                  ok = ok && (outp[q * p.out_words() + p.out_words() - 1] >> (p.o % 32)) == 0;
              ++cases;
              if (!ok && ++fails <= 10)
                std::printf("FAIL %s type=%d pv=%g C=%ld O=%ld G=%ld k=%ldx%ld s=%ld d=%ld pad=%ld xp=%d op=%d %s\n",
                            kern.name, type, pv, (long)sh.c, (long)sh.o, (long)sh.groups, (long)ge.kh,
                            (long)ge.kw, (long)ge.s, (long)ge.d, (long)ge.pad, xpacked, opacked, err.c_str());
              }
            }
          }
    }
  }
  std::printf("selftest: %d cases, %d failures\n", cases, fails);
  return fails == 0 ? 0 : 1;
}

int run_bench(const char* only, const char* layer, int reps, const char* mode) {
  // mode: "" float in/out, "packed" packed in/out, "pin" packed in, "pout" packed out
  const bool pin = !std::strcmp(mode, "packed") || !std::strcmp(mode, "pin");
  const bool pout = !std::strcmp(mode, "packed") || !std::strcmp(mode, "pout");
  struct L { const char* name; int64_t h, c, o, k, s; };
  const L layers[] = {{"L1", 56, 64, 64, 3, 1},   {"L2", 28, 128, 128, 3, 1}, {"L3", 14, 256, 256, 3, 1},
                      {"L4", 7, 512, 512, 3, 1},  {"L5", 56, 64, 128, 3, 2},  {"L6", 28, 256, 256, 1, 1},
                      {"L7", 56, 256, 256, 3, 1}};
  std::mt19937 rng(7);
  const SerialExecutor ex;
  for (const Kernel& kern : kernels()) {
    if (only && std::strcmp(only, kern.name)) continue;
    for (const L& l : layers) {
      if (layer && *layer && std::strcmp(layer, l.name)) continue;
      const char* nenv = std::getenv("SELFTEST_BENCH_N");
      const int64_t bn = nenv ? std::atoi(nenv) : 1;
      Case k = make_case(rng, XNOR, bn, l.h, l.h, l.c, l.o, l.k, l.k, 1, 1, l.k / 2, 1, 0.0f, pin, pout);
      k.p.stride_w = l.s, k.p.stride_h = l.s, k.p.pad_right = l.k / 2, k.p.pad_bottom = l.k / 2;
      std::fill(k.ib.begin(), k.ib.end(), 0.0f);  // no folded batch norm, as in benchmarks/cpu.py
      std::fill(k.is.begin(), k.is.end(), 1.0f);
      std::vector<float> out(k.p.n * k.p.ho() * k.p.wo() * k.p.o);
      ConvCall call;
      call.p = k.p, call.x = pin ? static_cast<const void*>(k.xpk.data()) : k.x.data(), call.w = k.w.data(), call.input_bias = k.ib.data();
      call.input_scale = k.is.data(), call.output_scale = k.os.data(), call.output_bias = k.ob.data();
      call.out = out.data();
      double best = 1e9;
      for (int rep = 0; rep < reps; ++rep) {
        const auto t0 = std::chrono::steady_clock::now();
        kern.fn(call, ex);
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      const double macs = double(bn * k.p.ho() * k.p.wo() * k.p.o) * l.k * l.k * l.c;
      std::printf("%-7s %s N=%ld 1 thread%s: %8.1f us  %7.0f GMAC/s\n", kern.name, l.name,
                  (long)bn, pin && pout ? " packed in/out" : pin ? " packed in" : pout ? " packed out" : "",
                  best * 1e6, macs / best / 1e9);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--bench") == 0) return run_bench(argc > 2 ? argv[2] : nullptr, argc > 3 ? argv[3] : nullptr,
                                                         argc > 4 ? std::atoi(argv[4]) : 30,
                                                         argc > 5 ? argv[5] : "");
  return run_checks(argc > 1 && std::strcmp(argv[1], "--quick") == 0);
}
