// Process-wide state of the CPU backend shared by the FFI handler and the
// Python module: which ISA runs, and an optional cap on threads.
#pragma once

#include <string>
#include <vector>

#include "kernel_api.h"

namespace binconv {
namespace cpu {

const char* isa_name(Isa isa);
bool isa_from_name(const std::string& name, Isa* isa);
std::vector<Isa> available_isas();  // what this CPU and OS can run, worst first
Isa best_isa();
Isa current_isa();
// False (and no change) when the ISA cannot run here.
bool set_current_isa(Isa isa);
// 0: use every thread of XLA's intra-op pool; n > 0: use at most n threads.
int max_threads();
void set_max_threads(int n);

// Diagnostics of the last call: threads that ran work items in its last
// parallel phase, and the size of XLA's intra-op pool it was given.
int last_call_workers();
int last_call_pool_threads();

// Diagnostics of the last call (microseconds): the kernel, and per parallel
// phase its duration, when the first helper thread joined it (-1: none), its
// items and how many the calling thread ran.
struct PhaseTiming {
  double us, helper_us;
  int64_t items, caller_items;
};
struct CallTimings {
  double kernel_us = 0;
  std::vector<PhaseTiming> phases;
  double sched_us = 0;  // last phase: publishing the job and waking helpers
};
CallTimings last_call_timings();

// The typed XLA FFI handler (api_version 1) behind jax_binconv_conv2d_cpu_v1.
void* conv2d_handler_address();
// jax_binconv_conv2d_cpu_v2: the same with the four vectors as one operand.
void* conv2d_v2_handler_address();

}  // namespace cpu
}  // namespace binconv
