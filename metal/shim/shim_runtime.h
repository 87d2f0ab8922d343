// The interface between the C++-compiled Metal kernels (kernels_shim.cc,
// the only file that sees host_shim.h's macros) and the rest of the shim.
#pragma once

#include <cstdint>
#include <string>

namespace binconv {
namespace metal_shim {

// The built-in values Metal hands a lane (all three dimensions).
struct LaneIds {
  uint32_t grid_pos[3];
  uint32_t lane_pos[3];
  uint32_t lane_index;
  uint32_t group_pos[3];
  uint32_t group_size[3];
  uint32_t groups_in_grid[3];
};

// A kernel called for one lane. bindings[i] is what the host binds at
// [[buffer(i)]]; the argument block is the last binding.
using KernelEntry = void (*)(void* const* bindings, const LaneIds& ids);

struct KernelInfo {
  const char* name;
  KernelEntry entry;
  int num_bindings;    // buffers + the argument block
  bool uses_barriers;  // needs the fiber runner
};

// nullptr for an unknown name.
const KernelInfo* find_kernel(const char* name);
// The kernels of shim/selftest.metal, which test the runner itself.
const KernelInfo* find_selftest_kernel(const char* name);

// Runs `kernel` over threadgroups[0..2] x group_size[0..2] like
// dispatchThreadgroups:threadsPerThreadgroup:. Returns false with *error on
// a barrier misuse.
bool dispatch(const KernelInfo& kernel, void* const* bindings,
              const uint32_t threadgroups[3], const uint32_t group_size[3],
              std::string* error);

}  // namespace metal_shim
}  // namespace binconv
