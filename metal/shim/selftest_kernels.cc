// selftest.metal compiled through host_shim.h, like kernels_shim.cc does for
// binconv.metal.
#include <cstdint>
#include <cstring>

#include "shim_runtime.h"

#include "selftest.metal"

namespace {

using binconv::metal_shim::LaneIds;

#define BINCONV_SELFTEST_WRAPPER(kernel_name)                                              \
  void run_##kernel_name(void* const* b, const LaneIds& id) {                              \
    kernel_name(static_cast<const uint32_t*>(b[0]), static_cast<uint32_t*>(b[1]),          \
                id.lane_index, metal::uint2(id.group_pos[0], id.group_pos[1]),             \
                metal::uint2(id.group_size[0], id.group_size[1]));                         \
  }
BINCONV_SELFTEST_WRAPPER(selftest_reverse)
BINCONV_SELFTEST_WRAPPER(selftest_reverse_racy)
BINCONV_SELFTEST_WRAPPER(selftest_divergent)
#undef BINCONV_SELFTEST_WRAPPER

const binconv::metal_shim::KernelInfo kSelftests[] = {
    {"selftest_reverse", run_selftest_reverse, 2, true},
    {"selftest_reverse_racy", run_selftest_reverse_racy, 2, true},
    {"selftest_divergent", run_selftest_divergent, 2, true},
};

}  // namespace

namespace binconv {
namespace metal_shim {
const KernelInfo* find_selftest_kernel(const char* name) {
  for (const KernelInfo& k : kSelftests)
    if (std::strcmp(k.name, name) == 0) return &k;
  return nullptr;
}
}  // namespace metal_shim
}  // namespace binconv
