// The XLA FFI handler jax_binconv_conv2d_cpu_v1 (contract: docs/ffi.md):
// checks every operand against the attributes, then runs the kernel of the
// currently selected ISA on the calling thread plus as many helper threads
// as XLA's intra-op pool has (minus one; see HelperThreads).
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <deque>
#include <functional>
#include <mutex>
#include <pthread.h>
#include <string>
#include <thread>

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

// Helper threads of our own, parked on a condition variable (a futex) and
// woken by the call that needs them. XLA's FFI ThreadPool::Schedule queues a
// task with Eigen's enqueueNoNotification: no parked pool thread is woken,
// so a helper starts only when some pool thread happens to be awake. On the
// 2-vCPU dev VM, interleaved with XLA convolutions, helpers scheduled there
// joined in a small fraction of calls (the caller ran the layer alone); a
// woken thread of our own starts in about 3 us. A helper runs helper tasks
// (one executor's jobs, until it closes or idles) and between them spins
// briefly for the next task (binary layers back to back) before sleeping.
// The number of threads used still follows XLA's intra-op pool size (or
// set_num_threads). Never destroyed: threads may still wait at process exit.
// JAX_BINCONV_CPU_HELPERS=xla schedules helpers on XLA's pool instead;
// =both requests each helper from both (the first to start works, at most
// threads - 1 helpers work). On the dev VM neither beat our own threads alone.
constexpr int kHelpersOwn = 0, kHelpersXla = 1, kHelpersBoth = 2;
int helper_mode() {
  static const int mode = [] {
    const char* env = std::getenv("JAX_BINCONV_CPU_HELPERS");
    const std::string v = env ? env : "";
    return v == "xla" ? kHelpersXla : v == "both" ? kHelpersBoth : kHelpersOwn;
  }();
  return mode;
}

class HelperThreads {
 public:
  static HelperThreads& get() {
    static const bool registered = [] {
      // A forked child has none of the parent's threads (and maybe a locked
      // mutex): it starts over with a fresh instance (the old one is leaked).
      pthread_atfork(nullptr, nullptr, [] {
        instance().store(new HelperThreads, std::memory_order_release);
      });
      return true;
    }();
    (void)registered;
    HelperThreads* p = instance().load(std::memory_order_acquire);
    if (!p) {
      HelperThreads* fresh = new HelperThreads;
      if (instance().compare_exchange_strong(p, fresh, std::memory_order_acq_rel))
        p = fresh;
      else
        delete fresh;
    }
    return *p;
  }
  // Queues `count` copies of the task and wakes (or starts) threads for them.
  void run(int count, const std::function<void()>& task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < count; ++i) tasks_.push_back(task);
      queued_.fetch_add(count, std::memory_order_release);
      while (threads_ < kMaxThreads && threads_ - busy_ < static_cast<int>(tasks_.size())) {
        ++threads_;
        std::thread(&HelperThreads::loop, this).detach();
      }
    }
    if (count == 1)
      cv_.notify_one();
    else
      cv_.notify_all();
  }

 private:
  static constexpr int kMaxThreads = 256;
  static constexpr int kSpinUs = 50;

  void loop() {
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int spins = 0; queued_.load(std::memory_order_acquire) == 0; ++spins) {
        if ((spins & 63) == 0 &&
            std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinUs))
          break;
#if defined(__x86_64__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ volatile("yield");
#endif
      }
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
        queued_.fetch_sub(1, std::memory_order_relaxed);
        ++busy_;
      }
      task();
      std::lock_guard<std::mutex> lock(mu_);
      --busy_;
    }
  }

  static std::atomic<HelperThreads*>& instance() {
    static std::atomic<HelperThreads*> p{nullptr};
    return p;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  std::atomic<int> queued_{0};
  int threads_ = 0, busy_ = 0;
};

// parallel_for with helper threads (HelperThreads, or tasks on XLA's intra-op
// pool). The calling thread works too; helpers take items from a shared
// counter. The caller waits for items, not for helpers, so a helper that
// starts late (or never, when the other cores are busy) cannot block it:
// every job outlives the call, and a late helper finds no work left. Helpers
// stay alive across the phases of one handler call (packing, then
// convolution, when there are two), spinning briefly between them, so each
// call pays for one thread wake-up, not one per phase.
class PoolExecutor final : public Executor {
  struct Job {
    uint64_t id = 0;
    int64_t n = 0;
    const std::function<void(int64_t)>* fn = nullptr;
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::atomic<int> workers{0};
    std::chrono::steady_clock::time_point published;  // diagnostics
    std::atomic<double> helper_us{-1.0};                // diagnostics: first helper's start
    std::mutex mu;
    std::condition_variable cv;
    int64_t work() {  // returns the number of items this thread ran
      bool counted = false;
      int64_t mine = 0;
      for (;; ++mine) {
        const int64_t i = next.fetch_add(1, std::memory_order_relaxed);
        if (i >= n) return mine;  // never touches fn once every item is taken
        if (!counted) {
          counted = true;
          workers.fetch_add(1, std::memory_order_relaxed);
        }
        (*fn)(i);
        if (done.fetch_add(1, std::memory_order_acq_rel) + 1 == n) {
          std::lock_guard<std::mutex> lock(mu);
          cv.notify_all();
        }
      }
    }
  };
  struct Shared {
    std::shared_ptr<Job> job;  // accessed with std::atomic_load/atomic_store
    std::atomic<bool> closed{false};
    std::atomic<int> alive{0};    // helper tasks queued or running
    std::atomic<int> running{0};  // helper tasks past the slot check
    int max_helpers = 0;          // threads - 1
    uint64_t last_id = 0;  // caller thread only
  };

  static void pause() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
  }

  // How long an idle helper spins for the next phase or call before handing
  // its pool thread back. Long enough to bridge the gap between the phases of
  // a call and between binary layers that follow each other; short enough not
  // to hold a core while XLA runs other work on its pool.
  static constexpr int kHelperIdleUs = 100;

  static void helper_loop(const std::shared_ptr<Shared>& sh) {
    // Measured on the 2-vCPU dev VM, interleaved with XLA convolutions: in
    // about half the calls the woken pool thread preempted the caller on the
    // caller's own core (the other core busy with XLA's pool threads, which
    // spin a while after their work) and worked alone, while the caller sat
    // inside Schedule until the phase was over (3x the one-thread time).
    // Giving the core back once first lets the caller take its share.
    std::this_thread::yield();
    // Helpers may be requested twice over (XLA's pool and our threads, see
    // helper_mode): at most max_helpers of them work, the others leave.
    if (sh->running.fetch_add(1, std::memory_order_acq_rel) >= sh->max_helpers) {
      sh->running.fetch_sub(1, std::memory_order_acq_rel);
      sh->alive.fetch_sub(1, std::memory_order_acq_rel);
      return;
    }
    const bool dbg = debug_pool();
    uint64_t seen = 0;
    auto idle_since = std::chrono::steady_clock::now();
    for (int spins = 0;; ++spins) {
      std::shared_ptr<Job> job = std::atomic_load(&sh->job);
      if (job && job->id != seen) {
        seen = job->id;
        {
          double expect = -1.0;
          job->helper_us.compare_exchange_strong(
              expect, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                                job->published).count());
        }
        if (dbg)
          std::fprintf(stderr, "jax_binconv helper: job %lu, +%.1f us after publish, item %ld of %ld taken\n",
                       (unsigned long)job->id,
                       std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                                 job->published).count(),
                       (long)job->next.load(), (long)job->n);
        job->work();
        idle_since = std::chrono::steady_clock::now();
        continue;
      }
      if (sh->closed.load(std::memory_order_acquire)) break;
      // Safety net: never hold a pool thread long if the caller stalls.
      if ((spins & 255) == 0 &&
          std::chrono::steady_clock::now() - idle_since > std::chrono::microseconds(kHelperIdleUs))
        break;
      pause();
    }
    sh->running.fetch_sub(1, std::memory_order_acq_rel);
    sh->alive.fetch_sub(1, std::memory_order_acq_rel);
  }

 public:
  static void record_phase(int64_t n, int64_t caller_items, double helper_us, double us) {
    const int i = last_phases_.fetch_add(1, std::memory_order_relaxed);
    if (i >= kMaxPhases) return;
    last_phase_items_[i].store(n, std::memory_order_relaxed);
    last_caller_items_[i].store(caller_items, std::memory_order_relaxed);
    last_helper_us_[i].store(helper_us, std::memory_order_relaxed);
    last_phase_us_[i].store(us, std::memory_order_relaxed);
  }
  PoolExecutor(ffi::ThreadPool* pool, int threads)
      : pool_(pool), threads_(threads), sh_(std::make_shared<Shared>()) {
    sh_->max_helpers = threads - 1;
  }
  ~PoolExecutor() override { sh_->closed.store(true, std::memory_order_release); }
  int num_threads() const override { return threads_; }

  void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) const override {
    if (n <= 0) return;
    const int64_t want = std::min<int64_t>(threads_, n) - 1;
    if (want <= 0 || pool_ == nullptr) {
    const bool dbg = debug_pool();
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < n; ++i) fn(i);
      last_workers_.store(1, std::memory_order_relaxed);
      record_phase(n, n, -1.0,
                   std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      if (dbg)
        std::fprintf(stderr, "jax_binconv serial: %ld items in %.1f us\n", (long)n,
                     std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
      return;
    }
    auto job = std::make_shared<Job>();
    job->id = ++sh_->last_id;
    job->n = n;
    job->fn = &fn;
    job->published = std::chrono::steady_clock::now();
    std::atomic_store(&sh_->job, job);
    const int mode = helper_mode();
    const int per_helper = mode == kHelpersBoth ? 2 : 1;
    const int64_t more = want - sh_->alive.load(std::memory_order_acquire) / per_helper;
    if (more > 0) {
      sh_->alive.fetch_add(static_cast<int>(more * per_helper), std::memory_order_acq_rel);
      std::shared_ptr<Shared> sh = sh_;
      if (mode != kHelpersOwn)
        for (int64_t h = 0; h < more; ++h) pool_->Schedule([sh] { helper_loop(sh); });
      if (mode != kHelpersXla)
        HelperThreads::get().run(static_cast<int>(more), [sh] { helper_loop(sh); });
    }
    last_sched_us_.store(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                                    job->published).count(),
                         std::memory_order_relaxed);
    const int64_t caller_items = job->work();
    // The last items usually finish within microseconds: spin briefly before
    // sleeping, since a futex wake costs about as much as a small layer.
    for (int spin = 0; spin < 20000; ++spin) {
      if (job->done.load(std::memory_order_acquire) == n) break;
      pause();
    }
    if (job->done.load(std::memory_order_acquire) != n) {
      std::unique_lock<std::mutex> lock(job->mu);
      job->cv.wait(lock, [&] { return job->done.load(std::memory_order_acquire) == n; });
    }
    last_workers_.store(job->workers.load(), std::memory_order_relaxed);
    record_phase(n, caller_items, job->helper_us.load(),
                 std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                           job->published).count());
    const bool dbg = debug_pool();
    if (dbg)
      std::fprintf(stderr, "jax_binconv caller: job %lu (%ld items) done in %.1f us, caller took %ld\n",
                   (unsigned long)job->id, (long)n,
                   std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                             job->published).count(),
                   (long)caller_items);
  }

 private:
  ffi::ThreadPool* pool_;
  int threads_;
  std::shared_ptr<Shared> sh_;
};

// ---------------------------------------------------------------- handler

ffi::Error Conv2dCpu(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w,
                     ffi::AnyBuffer input_bias, ffi::AnyBuffer input_scale,
                     ffi::AnyBuffer output_scale, ffi::AnyBuffer output_bias,
                     ffi::Result<ffi::AnyBuffer> out, ConvAttrs attrs) {
  ConvParams p;
  if (auto e = parse_conv2d("jax_binconv_conv2d_cpu_v1", x, w, input_bias, input_scale,
                            output_scale, output_bias, *out, attrs, &p);
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
  call.out = out->untyped_data();

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

  int threads = static_cast<int>(std::max<int64_t>(1, pool.num_threads()));
  last_pool_threads_.store(threads, std::memory_order_relaxed);
  if (const int cap = max_threads(); cap > 0) threads = cap;
  PoolExecutor ex(&pool, threads);

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
  last_kernel_us_.store(
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t_start).count(),
      std::memory_order_relaxed);
  if (dbg)
    std::fprintf(stderr, "jax_binconv handler: kernel %.1f us\n",
                 std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t_start).count());
  if (!err.empty()) return ffi::Error::Internal("jax_binconv_conv2d_cpu_v1: " + err);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxBinconvConv2dCpuV1, Conv2dCpu,
                              bind_conv2d(ffi::Ffi::Bind().Ctx<ffi::ThreadPool>()));

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

}  // namespace cpu
}  // namespace binconv
