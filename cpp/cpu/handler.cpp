// The XLA FFI handlers jax_binconv_conv2d_cpu_v1 and _v2 (contract: docs/ffi.md):
// checks every operand against the attributes, then runs the kernel of the
// currently selected ISA on the calling thread plus as many helper threads
// as XLA's intra-op pool has (minus one; see HelperPool).
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <string>
#include <thread>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu_runtime.h"
#include "kernel_api.h"
#include "ffi_conv.h"
#include "xla/ffi/api/ffi.h"

#if defined(__APPLE__) && defined(JAX_BINCONV_HAVE_METAL)
#include "metal_dispatch.h"
#endif

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace ffi = xla::ffi;

namespace binconv {
namespace cpu {

// ---------------------------------------------------------------- ISA state

namespace {

#if defined(__x86_64__)
// CPUID says what the core has; XCR0 says whether the OS saves the wider
// registers on a context switch. Both are needed before running AVX code.
uint64_t read_xcr0() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return 0;
  if (!(ecx & (1u << 27))) return 0;  // OSXSAVE
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}
#endif

bool isa_runs(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
#if defined(__x86_64__)
    case Isa::kAvx2: {
      __builtin_cpu_init();
      const uint64_t xcr0 = read_xcr0();
      return __builtin_cpu_supports("avx2") && (xcr0 & 0x6) == 0x6;
    }
    case Isa::kAvx512: {
      __builtin_cpu_init();
      const uint64_t xcr0 = read_xcr0();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vpopcntdq") &&
             (xcr0 & 0xe6) == 0xe6;  // SSE, AVX, opmask, ZMM0-15 upper, ZMM16-31
    }
#endif
#if defined(__aarch64__)
    case Isa::kNeon: return true;  // Advanced SIMD is mandatory on AArch64
#endif
    default: return false;
  }
}

Isa initial_isa() {
  const char* env = std::getenv("JAX_BINCONV_CPU_ISA");
  if (env && *env) {
    Isa want;
    if (isa_from_name(env, &want) && isa_runs(want)) return want;
    std::fprintf(stderr,
                 "jax_binconv: JAX_BINCONV_CPU_ISA=%s is unknown or not supported by this CPU; "
                 "using %s\n",
                 env, isa_name(best_isa()));
  }
  return best_isa();
}

std::atomic<int>& isa_state() {
  static std::atomic<int> state{static_cast<int>(initial_isa())};
  return state;
}

int initial_threads() {
  const char* env = std::getenv("JAX_BINCONV_CPU_THREADS");
  if (!env || !*env) return 0;
  const int n = std::atoi(env);
  return n > 0 ? n : 0;
}

std::atomic<int>& threads_state() {
  static std::atomic<int> state{initial_threads()};
  return state;
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kNeon: return "neon";
  }
  return "?";
}

bool isa_from_name(const std::string& name, Isa* isa) {
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon}) {
    if (name == isa_name(i)) {
      *isa = i;
      return true;
    }
  }
  return false;
}

std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kNeon})
    if (isa_runs(i)) out.push_back(i);
  return out;
}

Isa best_isa() { return available_isas().back(); }
Isa current_isa() { return static_cast<Isa>(isa_state().load(std::memory_order_relaxed)); }

bool set_current_isa(Isa isa) {
  if (!isa_runs(isa)) return false;
  isa_state().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

int max_threads() { return threads_state().load(std::memory_order_relaxed); }
void set_max_threads(int n) { threads_state().store(n > 0 ? n : 0, std::memory_order_relaxed); }

// ------------------------------------------------------------ thread pool

namespace {

// JAX_BINCONV_DEBUG_POOL=1 prints, per call, when helpers start, how the
// items split and how long each phase takes (stderr).
bool debug_pool() {
  static const bool on = std::getenv("JAX_BINCONV_DEBUG_POOL") != nullptr;
  return on;
}

// Threads that ran at least one item of the last parallel_for (diagnostics).
std::atomic<int> last_workers_{0};
std::atomic<int> last_pool_threads_{0};
// Timings of the last call (diagnostics, microseconds): the whole kernel, and
// per parallel phase its duration and when the first helper took an item
// (-1: none did). At most kMaxPhases phases are recorded.
constexpr int kMaxPhases = 4;
std::atomic<double> last_kernel_us_{0};
std::atomic<int> last_phases_{0};
std::atomic<double> last_sched_us_{0};  // how long the caller took to publish a job and wake helpers
std::atomic<double> last_phase_us_[kMaxPhases];
std::atomic<double> last_helper_us_[kMaxPhases];
std::atomic<int64_t> last_phase_items_[kMaxPhases];
std::atomic<int64_t> last_caller_items_[kMaxPhases];

// Waiting on a 32-bit atomic word: a futex on Linux, a mutex and condition
// variable elsewhere. wait() returns when the word may differ from `expected`
// (spurious returns allowed: callers re-check).
#if defined(__linux__)
void word_wait(std::atomic<uint32_t>* a, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(a), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
}
void word_wake(std::atomic<uint32_t>* a, int count) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(a), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr,
          0);
}
#else
std::mutex& word_mu() {
  static std::mutex* m = new std::mutex;
  return *m;
}
std::condition_variable& word_cv() {
  static std::condition_variable* cv = new std::condition_variable;
  return *cv;
}
void word_wait(std::atomic<uint32_t>* a, uint32_t expected) {
  std::unique_lock<std::mutex> lock(word_mu());
  if (a->load(std::memory_order_seq_cst) == expected) word_cv().wait(lock);
}
void word_wake(std::atomic<uint32_t>*, int) {
  { std::lock_guard<std::mutex> lock(word_mu()); }
  word_cv().notify_all();
}
#endif

double us_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
}

// Helper threads of our own, persistent across calls: one job slot that a
// calling thread owns for the duration of a parallel_for (another caller
// that finds the slot taken runs its items alone), helpers that spin on the
// slot's epoch word for a short while after their last work and then sleep
// on it (a futex). Publishing a job bumps the epoch; the caller makes the
// wake-up system call only when a helper actually sleeps, so binary layers
// that follow each other (a chain) hand work to helpers that are still
// spinning, without a system call and without waking threads that have
// nothing to do. XLA's FFI ThreadPool::Schedule queues with Eigen's
// enqueueNoNotification, which wakes no parked pool thread: helpers
// scheduled there rarely joined a call on the 2-vCPU dev VM; the number of
// helpers used still follows XLA's intra-op pool size (or set_num_threads).
//
// Items are claimed from one 64-bit word, generation (high 32 bits) and claim
// state (low 32 bits: the front and back of the items left, or the next item
// of a large job; see work), with compare-and-swap: a helper that is late for
// a job can never claim an item of a later one, and between jobs the word
// holds a state with no item left, so a claim against a half-published job
// fails.
// Never destroyed: helpers may still wait at process exit.
class HelperPool {
 public:
  static HelperPool& get() {
    static const bool registered = [] {
      // A forked child has none of the parent's threads (and maybe a held
      // slot): it starts over with a fresh instance (the old one is leaked).
      pthread_atfork(nullptr, nullptr, [] {
        instance().store(new HelperPool, std::memory_order_release);
      });
      return true;
    }();
    (void)registered;
    HelperPool* p = instance().load(std::memory_order_acquire);
    if (!p) {
      HelperPool* fresh = new HelperPool;
      if (instance().compare_exchange_strong(p, fresh, std::memory_order_acq_rel))
        p = fresh;
      else
        delete fresh;
    }
    return *p;
  }

  // Takes the job slot for the calling thread; false when another thread holds it.
  bool try_acquire() { return !busy_.exchange(true, std::memory_order_acquire); }
  void release() { busy_.store(false, std::memory_order_release); }

  // Wakes sleeping helpers early (before the job is ready): waking an idle
  // vCPU takes tens of microseconds on the dev VM, so the handler asks for
  // them before its setup. They spin on the epoch until the job comes.
  void prewake(int helpers) {
    ensure_threads(helpers);
    active_.store(helpers, std::memory_order_relaxed);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      epoch_.fetch_add(1, std::memory_order_seq_cst);
      word_wake(&epoch_, INT_MAX);  // any sleeper may be the one needed (see loop)
    }
  }

  struct Result {
    int64_t caller_items = 0;
    int workers = 1;
    double helper_us = -1.0, sched_us = 0.0;
  };

  // Runs fn(0..n-1) on the caller (which must hold the slot) and up to
  // `helpers` helper threads; returns when every item has finished.
  Result run(int64_t n, int helpers, const std::function<void(int64_t)>& fn) {
    Result res;
    ensure_threads(helpers);
    const auto t0 = std::chrono::steady_clock::now();
    // Close the previous generation before touching the job fields: from here
    // on no claim against it (or against this one, until published) succeeds.
    const uint64_t gen = (ctr_.load(std::memory_order_relaxed) >> 32) + 1;
    ctr_.store((gen << 32) | kClosed, std::memory_order_seq_cst);
    n_.store(n, std::memory_order_release);
    fn_.store(&fn, std::memory_order_release);
    done_.store(0, std::memory_order_relaxed);
    workers_.store(0, std::memory_order_relaxed);
    first_claim_ns_.store(-1, std::memory_order_relaxed);
    active_.store(helpers, std::memory_order_relaxed);
    published_.store(t0.time_since_epoch().count(), std::memory_order_relaxed);
    ctr_.store((gen << 32) | (n <= kMaxSplit ? static_cast<uint64_t>(n) : 0),
               std::memory_order_release);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) word_wake(&epoch_, INT_MAX);
    res.sched_us = us_since(t0);
    res.caller_items = work(gen, /*helper=*/false);
    // The last items usually finish within microseconds: spin before sleeping.
    const uint32_t nn = static_cast<uint32_t>(n);
    for (int spin = 0; spin < 20000 && done_.load(std::memory_order_acquire) != nn; ++spin)
      cpu_relax();
    while (done_.load(std::memory_order_acquire) != nn) {
      waiting_.store(1, std::memory_order_seq_cst);
      const uint32_t d = done_.load(std::memory_order_seq_cst);
      if (d != nn) word_wait(&done_, d);
    }
    waiting_.store(0, std::memory_order_relaxed);
    res.workers = 1 + workers_.load(std::memory_order_relaxed);
    const int64_t ns = first_claim_ns_.load(std::memory_order_relaxed);
    res.helper_us = ns < 0 ? -1.0 : ns / 1000.0;
    return res;
  }

 private:
  // Between jobs the low word reads as no item left in either claim layout
  // (split: front 0xffff >= back 0xffff; ascending: index >= any n).
  static constexpr uint64_t kClosed = 0xffffffffu;
  // Jobs of at most this many items are claimed from both ends (see work).
  static constexpr int64_t kMaxSplit = 0xffff;
  static constexpr int kMaxThreads = 256;
  // How long a helper spins for the next job after its last work before it
  // sleeps: long enough to bridge the gap between binary layers that follow
  // each other (~2 us in a jitted chain), short enough not to hold a core
  // from XLA's own work (100 us and 20 us gave the same XLA times in
  // benchmarks/cpu.py on the dev VM).
  static constexpr int kSpinUs = 50;

  static std::atomic<HelperPool*>& instance() {
    static std::atomic<HelperPool*> p{nullptr};
    return p;
  }

  void ensure_threads(int count) {
    count = std::min(count, kMaxThreads);
    if (nthreads_.load(std::memory_order_acquire) >= count) return;
    std::lock_guard<std::mutex> lock(grow_mu_);
    for (int i = nthreads_.load(std::memory_order_relaxed); i < count; ++i) {
      std::thread(&HelperPool::loop, this, i).detach();
      nthreads_.store(i + 1, std::memory_order_release);
    }
  }

  // Claims and runs items of generation `gen` until none is left; returns how many.
  // A job of at most kMaxSplit items is claimed from both ends: the low word
  // holds front << 16 | back, the caller takes items from the front and the
  // helpers from the back. Each thread then runs a contiguous run of items
  // (neighbouring pixels: it packs the input rows it reads itself instead of
  // waiting for rows a thread on the neighbouring item is packing, and in a
  // chain of layers or a loop of calls the same half of the data stays with
  // the same core). Larger jobs: the low word is the next item, everyone
  // takes ascending items. Either way one compare-and-swap on the whole word
  // (generation included) claims an item, so a claim against a stale or
  // unpublished job fails.
  int64_t work(uint64_t gen, bool helper) {
    int64_t mine = 0;
    uint64_t c = ctr_.load(std::memory_order_acquire);
    for (;;) {
      if ((c >> 32) != gen) return mine;
      const int64_t n = n_.load(std::memory_order_acquire);
      int64_t i;
      uint64_t next;
      if (n <= kMaxSplit) {
        const int64_t front = static_cast<int64_t>((c >> 16) & 0xffff);
        const int64_t back = static_cast<int64_t>(c & 0xffff);
        if (front >= back) return mine;
        if (helper) {
          i = back - 1, next = c - 1;
        } else {
          i = front, next = c + 0x10000;
        }
      } else {
        i = static_cast<int64_t>(c & 0xffffffffu);
        if (i >= n) return mine;
        next = c + 1;
      }
      const std::function<void(int64_t)>* fn = fn_.load(std::memory_order_acquire);
      if (!ctr_.compare_exchange_weak(c, next, std::memory_order_acq_rel,
                                      std::memory_order_acquire))
        continue;  // c holds the current value
      if (mine++ == 0 && helper) {
        workers_.fetch_add(1, std::memory_order_relaxed);
        int64_t expect = -1;
        first_claim_ns_.compare_exchange_strong(
            expect, static_cast<int64_t>(us_since_published() * 1000.0), std::memory_order_relaxed);
      }
      (*fn)(i);
      const uint32_t d = done_.fetch_add(1, std::memory_order_seq_cst) + 1;
      if (d == static_cast<uint32_t>(n_.load(std::memory_order_relaxed)) &&
          waiting_.load(std::memory_order_seq_cst))
        word_wake(&done_, 1);
      c = ctr_.load(std::memory_order_acquire);
    }
  }

  void loop(int index) {
#if defined(__linux__)
    pthread_setname_np(pthread_self(), "binconv-helper");  // visible in perf / top -H
#endif
    uint32_t seen = epoch_.load(std::memory_order_acquire);
    auto idle_since = std::chrono::steady_clock::now();
    for (;;) {
      uint32_t e = epoch_.load(std::memory_order_acquire);
      bool slept = false;
      for (int spins = 0; e == seen; ++spins) {
        if ((spins & 63) == 63 && us_since(idle_since) > kSpinUs) {
          sleepers_.fetch_add(1, std::memory_order_seq_cst);
          if (epoch_.load(std::memory_order_seq_cst) == seen) word_wait(&epoch_, seen);
          sleepers_.fetch_sub(1, std::memory_order_seq_cst);
          slept = true;
          spins = 0;
        } else {
          cpu_relax();
        }
        e = epoch_.load(std::memory_order_acquire);
      }
      seen = e;
      // Helpers past the current thread count (set_num_threads lowered it)
      // are woken too, since a futex wake picks its sleepers arbitrarily:
      // they go straight back to sleep.
      if (index >= active_.load(std::memory_order_relaxed)) {
        idle_since = std::chrono::steady_clock::time_point();
        continue;
      }
      if (slept) {
        idle_since = std::chrono::steady_clock::now();
        // Woken on a busy machine, this thread may have preempted the caller
        // on the caller's own core (measured on the dev VM: the caller then sat
        // in the wake-up call while the helper worked alone). Give the core
        // back once first.
        std::this_thread::yield();
      }
      const uint64_t c = ctr_.load(std::memory_order_acquire);
      if (debug_pool())
        std::fprintf(stderr, "jax_binconv helper %d: epoch %u, slept %d, +%.1f us after publish\n",
                     index, seen, slept ? 1 : 0, us_since_published());
      if (work(c >> 32, /*helper=*/true) > 0) idle_since = std::chrono::steady_clock::now();
    }
  }

  std::atomic<bool> busy_{false};
  std::atomic<uint64_t> ctr_{kClosed};  // generation << 32 | claim state (see work)
  std::atomic<int64_t> n_{0};
  std::atomic<const std::function<void(int64_t)>*> fn_{nullptr};
  std::atomic<uint32_t> done_{0};
  std::atomic<uint32_t> waiting_{0};  // the caller sleeps on done_
  std::atomic<uint32_t> epoch_{0};    // bumped per job (and prewake); helpers wait on it
  std::atomic<int> sleepers_{0};
  std::atomic<int> active_{0};        // helpers with index < active_ take part
  std::atomic<int> workers_{0};       // helpers that ran an item of the current job
  std::atomic<int64_t> first_claim_ns_{-1};
  std::atomic<std::chrono::steady_clock::rep> published_{0};  // when the current job was published
  double us_since_published() const {
    const std::chrono::steady_clock::time_point t(
        std::chrono::steady_clock::duration(published_.load(std::memory_order_relaxed)));
    return us_since(t);
  }
  std::atomic<int> nthreads_{0};
  std::mutex grow_mu_;
};

// parallel_for on the calling thread plus helper threads (HelperPool). The
// caller waits for items, not for helpers, so a helper that starts late (or
// never, when the other cores are busy) cannot block it: a late helper finds
// no work left.
class PoolExecutor final : public Executor {
 public:
  static void record_phase(int64_t n, int64_t caller_items, double helper_us, double us) {
    const int i = last_phases_.fetch_add(1, std::memory_order_relaxed);
    if (i >= kMaxPhases) return;
    last_phase_items_[i].store(n, std::memory_order_relaxed);
    last_caller_items_[i].store(caller_items, std::memory_order_relaxed);
    last_helper_us_[i].store(helper_us, std::memory_order_relaxed);
    last_phase_us_[i].store(us, std::memory_order_relaxed);
  }
  explicit PoolExecutor(int threads) : threads_(threads) {
    if (threads_ > 1) {
      HelperPool& hp = HelperPool::get();
      owner_ = hp.try_acquire();
      if (owner_) hp.prewake(threads_ - 1);
    }
  }
  ~PoolExecutor() override {
    if (owner_) HelperPool::get().release();
  }
  int num_threads() const override { return threads_; }

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) const override {
    if (n <= 0) return;
    const bool dbg = debug_pool();
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t want = std::min<int64_t>(threads_, n) - 1;
    if (want <= 0 || !owner_ || n >= (int64_t{1} << 31)) {
      for (int64_t i = 0; i < n; ++i) fn(i);
      last_workers_.store(1, std::memory_order_relaxed);
      record_phase(n, n, -1.0, us_since(t0));
      if (dbg) std::fprintf(stderr, "jax_binconv serial: %ld items in %.1f us\n", (long)n, us_since(t0));
      return;
    }
    const HelperPool::Result r = HelperPool::get().run(n, static_cast<int>(want), fn);
    last_workers_.store(r.workers, std::memory_order_relaxed);
    last_sched_us_.store(r.sched_us, std::memory_order_relaxed);
    record_phase(n, r.caller_items, r.helper_us, us_since(t0));
    if (dbg)
      std::fprintf(stderr,
                   "jax_binconv caller: %ld items done in %.1f us, caller took %ld, first helper "
                   "claim +%.1f us\n",
                   (long)n, us_since(t0), (long)r.caller_items, r.helper_us);
  }

 private:
  int threads_;
  bool owner_ = false;
};
// ---------------------------------------------------------------- handler

// Both targets: v1 (six operands) and v2 (x, w, affine; see split_affine).
ffi::Error Conv2dCpuImpl(const char* target, ffi::ThreadPool pool, ffi::AnyBuffer x,
                         ffi::AnyBuffer w, ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                         ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                         ffi::AnyBuffer out, const ConvAttrs& attrs) {
  // Helpers first: a sleeping one takes tens of microseconds to start on an
  // idle vCPU, so it is woken before the operands are checked.
  int threads = static_cast<int>(std::max<int64_t>(1, pool.num_threads()));
  last_pool_threads_.store(threads, std::memory_order_relaxed);
  if (const int cap = max_threads(); cap > 0) threads = cap;
  PoolExecutor ex(threads);

  ConvParams p;
  if (auto e = parse_conv2d(target, x, w, input_bias, input_scale, output_scale, output_bias,
                            out, attrs, &p);
      e.failure())
    return e;
  const int64_t n = p.n;

  if (n == 0) return ffi::Error::Success();

  ConvCall call;
  call.p = p;
  call.x = x.untyped_data();
  call.w = static_cast<const uint32_t*>(w.untyped_data());
  call.input_bias = static_cast<const float*>(input_bias.untyped_data());
  call.input_scale = static_cast<const float*>(input_scale.untyped_data());
  call.output_scale = static_cast<const float*>(output_scale.untyped_data());
  call.output_bias = static_cast<const float*>(output_bias.untyped_data());
  call.out = out.untyped_data();

#if defined(__APPLE__) && defined(JAX_BINCONV_HAVE_METAL)
  {
    std::string err;
    if (metal_try_conv2d(p, call.x, call.w, call.input_bias, call.input_scale, call.output_scale,
                         call.output_bias, call.out, &err)) {
      if (!err.empty()) return ffi::Error::Internal("jax_binconv Metal kernel failed: " + err);
      return ffi::Error::Success();
    }
  }
#endif

  const bool dbg = debug_pool();
  last_phases_.store(0, std::memory_order_relaxed);
  const auto t_start = std::chrono::steady_clock::now();
  std::string err;
  switch (current_isa()) {
#if defined(__x86_64__)
    case Isa::kAvx512: err = conv2d_avx512(call, ex); break;
    case Isa::kAvx2: err = conv2d_avx2(call, ex); break;
#endif
#if defined(__aarch64__)
    case Isa::kNeon: err = conv2d_neon(call, ex); break;
#endif
    default: err = conv2d_scalar(call, ex); break;
  }
  const double kernel_us = us_since(t_start);
  last_kernel_us_.store(kernel_us, std::memory_order_relaxed);
  if (dbg) std::fprintf(stderr, "jax_binconv handler: kernel %.1f us\n", kernel_us);
  if (!err.empty()) return ffi::Error::Internal(std::string(target) + ": " + err);
  return ffi::Error::Success();
}

ffi::Error Conv2dCpuV1(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                       ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                       ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                       ffi::Result<ffi::AnyBuffer> out, ConvAttrs attrs) {
  return Conv2dCpuImpl("jax_binconv_conv2d_cpu_v1", pool, x, w, input_bias, input_scale,
                       output_scale, output_bias, *out, attrs);
}

ffi::Error Conv2dCpuV2(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                       ffi::AnyBuffer affine, ffi::Result<ffi::AnyBuffer> out, ConvAttrs attrs) {
  constexpr const char* kTarget = "jax_binconv_conv2d_cpu_v2";
  AffineViews v;
  if (auto e = split_affine(kTarget, affine, w, attrs, &v); e.failure()) return e;
  return Conv2dCpuImpl(kTarget, pool, x, w, v.view(0), v.view(1), v.view(2), v.view(3), *out,
                       attrs);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxBinconvConv2dCpuV1, Conv2dCpuV1,
                              bind_conv2d(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxBinconvConv2dCpuV2, Conv2dCpuV2,
                              bind_conv2d_affine(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

int last_call_workers() { return last_workers_.load(std::memory_order_relaxed); }
int last_call_pool_threads() { return last_pool_threads_.load(std::memory_order_relaxed); }

CallTimings last_call_timings() {
  CallTimings t;
  t.kernel_us = last_kernel_us_.load(std::memory_order_relaxed);
  t.sched_us = last_sched_us_.load(std::memory_order_relaxed);
  const int np = std::min(kMaxPhases, last_phases_.load(std::memory_order_relaxed));
  for (int i = 0; i < np; ++i)
    t.phases.push_back({last_phase_us_[i].load(std::memory_order_relaxed),
                        last_helper_us_[i].load(std::memory_order_relaxed),
                        last_phase_items_[i].load(std::memory_order_relaxed),
                        last_caller_items_[i].load(std::memory_order_relaxed)});
  return t;
}

void* conv2d_handler_address() { return reinterpret_cast<void*>(JaxBinconvConv2dCpuV1); }
void* conv2d_v2_handler_address() { return reinterpret_cast<void*>(JaxBinconvConv2dCpuV2); }

}  // namespace cpu
}  // namespace binconv
