// Executes a C++-compiled Metal kernel over its grid the way the GPU would,
// as far as the kernels can observe it:
//   - threadgroups run one after the other (Metal promises no order and no
//     concurrency between threadgroups, so a correct kernel cannot tell);
//   - the lanes of a threadgroup run as fibers (ucontext) on the calling OS
//     thread. A lane runs until it reaches threadgroup_barrier or returns;
//     when every lane waits at the barrier, all are released. So everything
//     written to threadgroup memory before a barrier is visible to every lane
//     after it, and nothing written after it is visible before it, exactly
//     the guarantee Metal gives. A lane that returns while others wait at a
//     barrier is a divergent barrier (undefined behaviour in Metal): the
//     dispatch fails with an error instead of hanging or guessing;
//   - kernels without barriers run their lanes as plain calls in lane order.
// Threadgroup memory is the kernels' `static thread_local` arrays
// (host_shim.h): one object per OS thread, shared by the fibers of the
// threadgroup running there. The runner keeps everything per OS thread, so
// concurrent XLA calls on several threads do not interfere.
#if defined(__APPLE__)
// macOS keeps the (deprecated) ucontext routines behind _XOPEN_SOURCE;
// _DARWIN_C_SOURCE keeps the rest of libc visible.
#define _XOPEN_SOURCE 700
#define _DARWIN_C_SOURCE
#pragma clang diagnostic ignored "-Wdeprecated-declarations"
#endif
#include <ucontext.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shim_runtime.h"

// AddressSanitizer must be told about every stack switch, or it reports
// false stack overflows and loses track of fake stacks (issue 8 builds the
// shim with ASan). Without ASan the hooks compile to nothing.
#if defined(__SANITIZE_ADDRESS__)
#define BINCONV_SHIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BINCONV_SHIM_ASAN 1
#endif
#endif
#ifdef BINCONV_SHIM_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace binconv {
namespace metal_shim {
namespace {

enum class LaneState { kReady, kAtBarrier, kDone };

// Called just before and just after each swapcontext (see ASan's
// common_interface_defs.h for the protocol).
inline void switch_begin(void** fake_stack, const void* bottom, size_t size) {
#ifdef BINCONV_SHIM_ASAN
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}
inline void switch_end(void* fake_stack, const void** bottom_old, size_t* size_old) {
#ifdef BINCONV_SHIM_ASAN
  __sanitizer_finish_switch_fiber(fake_stack, bottom_old, size_old);
#else
  (void)fake_stack, (void)bottom_old, (void)size_old;
#endif
}

struct Lane {
  ucontext_t context;
  LaneState state = LaneState::kReady;
  LaneIds ids;
  void* fake_stack = nullptr;  // ASan bookkeeping while the lane is switched out
};

struct FiberGroup {
  // 256 KiB: the kernels need a few KiB, but sanitizer builds (issue 8)
  // inflate frames considerably.
  static constexpr size_t kStackBytes = 256 * 1024;
  ucontext_t scheduler;
  std::vector<Lane> lanes;
  std::vector<std::unique_ptr<char[]>> stacks;
  const KernelInfo* kernel = nullptr;
  void* const* bindings = nullptr;
  size_t current = 0;
  bool in_fiber = false;
  void* scheduler_fake_stack = nullptr;
  const void* scheduler_stack = nullptr;  // learnt by the first lane that starts
  size_t scheduler_stack_size = 0;
  bool stray_barrier = false;  // a barrier reached outside the fiber runner
};

thread_local FiberGroup* t_group = nullptr;

void fiber_main() {
  FiberGroup* g = t_group;
  switch_end(nullptr, &g->scheduler_stack, &g->scheduler_stack_size);
  Lane& lane = g->lanes[g->current];
  g->kernel->entry(g->bindings, lane.ids);
  lane.state = LaneState::kDone;
  // Returning resumes uc_link, the scheduler; this fiber's stack is done.
  switch_begin(nullptr, g->scheduler_stack, g->scheduler_stack_size);
}

void fill_ids(LaneIds* ids, const uint32_t tg[3], const uint32_t tgs[3], const uint32_t grid[3],
              uint32_t lx, uint32_t ly, uint32_t lz) {
  const uint32_t local[3] = {lx, ly, lz};
  for (int d = 0; d < 3; ++d) {
    ids->group_pos[d] = tg[d];
    ids->group_size[d] = tgs[d];
    ids->groups_in_grid[d] = grid[d];
    ids->lane_pos[d] = local[d];
    ids->grid_pos[d] = tg[d] * tgs[d] + local[d];
  }
  ids->lane_index = (lz * tgs[1] + ly) * tgs[0] + lx;
}

}  // namespace

bool dispatch(const KernelInfo& kernel, void* const* bindings, const uint32_t threadgroups[3],
              const uint32_t group_size[3], std::string* error) {
  const uint64_t lanes_per_group = uint64_t{group_size[0]} *
                                   group_size[1] * group_size[2];
  if (lanes_per_group == 0 || lanes_per_group > 1024) {
    *error = "threads per threadgroup must be 1..1024 (Metal's limit)";
    return false;
  }
  thread_local FiberGroup group;
  FiberGroup* const previous = t_group;
  t_group = &group;
  group.kernel = &kernel;
  group.bindings = bindings;
  group.stray_barrier = false;
  group.lanes.resize(lanes_per_group);
  while (group.stacks.size() < lanes_per_group)
    group.stacks.emplace_back(new char[FiberGroup::kStackBytes]);

  bool ok = true;
  uint32_t tg[3];
  for (tg[2] = 0; ok && tg[2] < threadgroups[2]; ++tg[2])
    for (tg[1] = 0; ok && tg[1] < threadgroups[1]; ++tg[1])
      for (tg[0] = 0; ok && tg[0] < threadgroups[0]; ++tg[0]) {
        size_t i = 0;
        for (uint32_t lz = 0; lz < group_size[2]; ++lz)
          for (uint32_t ly = 0; ly < group_size[1]; ++ly)
            for (uint32_t lx = 0; lx < group_size[0]; ++lx, ++i) {
              Lane& lane = group.lanes[i];
              fill_ids(&lane.ids, tg, group_size, threadgroups, lx, ly, lz);
              lane.state = LaneState::kReady;
            }

        if (!kernel.uses_barriers) {
          for (size_t l = 0; l < lanes_per_group; ++l) {
            group.current = l;
            kernel.entry(bindings, group.lanes[l].ids);
          }
          if (group.stray_barrier) {
            *error = std::string(kernel.name) + ": threadgroup_barrier in a kernel the shim runs without fibers";
            ok = false;
          }
          continue;
        }

        for (size_t l = 0; l < lanes_per_group; ++l) {
          Lane& lane = group.lanes[l];
          getcontext(&lane.context);
          lane.context.uc_stack.ss_sp = group.stacks[l].get();
          lane.context.uc_stack.ss_size = FiberGroup::kStackBytes;
          lane.context.uc_link = &group.scheduler;
          makecontext(&lane.context, fiber_main, 0);
        }
        for (;;) {
          // One phase: every lane runs up to its next barrier or its end.
          for (size_t l = 0; l < lanes_per_group; ++l) {
            if (group.lanes[l].state != LaneState::kReady) continue;
            group.current = l;
            group.in_fiber = true;
            switch_begin(&group.scheduler_fake_stack, group.stacks[l].get(), FiberGroup::kStackBytes);
            swapcontext(&group.scheduler, &group.lanes[l].context);
            switch_end(group.scheduler_fake_stack, nullptr, nullptr);
            group.in_fiber = false;
          }
          size_t waiting = 0, done = 0;
          for (const Lane& lane : group.lanes) {
            if (lane.state == LaneState::kAtBarrier) ++waiting;
            if (lane.state == LaneState::kDone) ++done;
          }
          if (done == lanes_per_group) break;
          if (waiting != lanes_per_group) {
            // The waiting fibers are abandoned: their stacks hold only plain
            // data and are reused by the next dispatch.
            *error = std::string(kernel.name) + ": divergent threadgroup_barrier (" +
                     std::to_string(done) + " of " + std::to_string(lanes_per_group) +
                     " lanes returned while the others wait)";
            ok = false;
            break;
          }
          for (Lane& lane : group.lanes) lane.state = LaneState::kReady;
        }
      }
  t_group = previous;
  return ok;
}

}  // namespace metal_shim
}  // namespace binconv

// Called by metal::threadgroup_barrier (host_shim.h) from inside a kernel.
void binconv_shim_threadgroup_barrier() {
  using binconv::metal_shim::t_group;
  using binconv::metal_shim::LaneState;
  if (t_group == nullptr || !t_group->in_fiber) {
    if (t_group != nullptr) t_group->stray_barrier = true;
    return;
  }
  auto* g = t_group;
  auto& lane = g->lanes[g->current];
  lane.state = LaneState::kAtBarrier;
  binconv::metal_shim::switch_begin(&lane.fake_stack, g->scheduler_stack, g->scheduler_stack_size);
  swapcontext(&lane.context, &g->scheduler);
  binconv::metal_shim::switch_end(lane.fake_stack, &g->scheduler_stack, &g->scheduler_stack_size);
}
