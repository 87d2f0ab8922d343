// binconv.metal compiled as C++ (through shim_include/metal_stdlib ->
// host_shim.h), plus one wrapper per kernel that unpacks the runner's
// bindings and lane ids into the kernel's own parameter list. Standard
// headers come first: host_shim.h's macros (device, thread, constant, ...)
// must not touch them.
#include <cstdint>
#include <cstring>

#include "shim_runtime.h"

#include "../binconv.metal"

namespace {

using binconv::metal_shim::LaneIds;

template <typename T>
T* bind(void* const* b, int i) { return static_cast<T*>(b[i]); }

const BinconvArgs& args_at(void* const* b, int i) { return *static_cast<const BinconvArgs*>(b[i]); }

void run_pack_input(void* const* b, const LaneIds& id) {
  binconv_pack_input(bind<const float>(b, 0), bind<const float>(b, 1), bind<const float>(b, 2),
                     bind<uint32_t>(b, 3), args_at(b, 4), id.grid_pos[0]);
}

void run_mean_abs(void* const* b, const LaneIds& id) {
  binconv_mean_abs(bind<const float>(b, 0), bind<const float>(b, 1), bind<const float>(b, 2),
                   bind<float>(b, 3), args_at(b, 4), id.grid_pos[0]);
}

void run_conv_bits(void* const* b, const LaneIds& id) {
  binconv_conv_bits(bind<const uint32_t>(b, 0), bind<const uint32_t>(b, 1),
                    bind<const float>(b, 2), bind<const float>(b, 3), bind<const float>(b, 4),
                    bind<float>(b, 5), bind<metal::atomic_uint>(b, 6), args_at(b, 7),
                    metal::uint2(id.group_pos[0], id.group_pos[1]),
                    id.lane_index, metal::uint2(id.group_size[0], id.group_size[1]));
}

void run_conv_float(void* const* b, const LaneIds& id) {
  binconv_conv_float(bind<const float>(b, 0), bind<const uint32_t>(b, 1),
                     bind<const float>(b, 2), bind<const float>(b, 3), bind<const float>(b, 4),
                     bind<const float>(b, 5), bind<const float>(b, 6), bind<float>(b, 7),
                     bind<metal::atomic_uint>(b, 8), args_at(b, 9),
                     metal::uint2(id.group_pos[0], id.group_pos[1]),
                     id.lane_index, metal::uint2(id.group_size[0], id.group_size[1]));
}

const binconv::metal_shim::KernelInfo kKernels[] = {
    {"binconv_pack_input", run_pack_input, 5, false},
    {"binconv_mean_abs", run_mean_abs, 5, false},
    {"binconv_conv_bits", run_conv_bits, 8, true},
    {"binconv_conv_float", run_conv_float, 10, true},
};

}  // namespace

namespace binconv {
namespace metal_shim {
const KernelInfo* find_kernel(const char* name) {
  for (const KernelInfo& k : kKernels)
    if (std::strcmp(k.name, name) == 0) return &k;
  return nullptr;
}
}  // namespace metal_shim
}  // namespace binconv
