// XLA FFI handler `jax_binconv_conv2d_metalshim_v1` (test-only): the
// operands and attributes of docs/ffi.md, validated like every other
// backend's handler, then executed as the Metal plan (binconv_plan.h)
// through the C++-compiled Metal kernels. Every bad buffer or attribute
// comes back as ffi::Error::InvalidArgument; nothing aborts.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "binconv_params.h"
#include "binconv_plan.h"
#include "ffi_conv.h"
#include "shim_runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace binconv {
namespace metal_shim {
namespace {

ffi::Error invalid(const std::string& msg) {
  return ffi::Error::InvalidArgument("jax_binconv_conv2d_metalshim_v1: " + msg);
}

ffi::Error conv2d_impl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer input_bias,
                       ffi::AnyBuffer input_scale, ffi::AnyBuffer output_scale,
                       ffi::AnyBuffer output_bias, ffi::Result<ffi::AnyBuffer> out,
                       ConvAttrs attrs) {
  ConvParams p;
  if (auto e = parse_conv2d("jax_binconv_conv2d_metalshim_v1", x, w, input_bias, input_scale,
                            output_scale, output_bias, *out, attrs, &p);
      e.failure())
    return e;
  // The Metal kernels index a batch with 32-bit grid coordinates.
  if (p.n > (int64_t{1} << 30)) return invalid("batch too large for the Metal kernels");
  // Groups of packed input must start on a word (Python unpacks otherwise).
  if (p.x_packed && p.groups > 1 && p.cg() % 32 != 0)
    return invalid("packed x with groups > 1 needs in_channels/groups to be a multiple of 32");

  if (p.n == 0) return ffi::Error::Success();

  // Test hook: the macOS host lowers the lane count when a pipeline cannot
  // run 64 threads per threadgroup; the kernels must be right for any count.
  uint32_t lanes = metal_plan::kDefaultLanes;
  if (const char* env = std::getenv("JAX_BINCONV_METAL_SHIM_LANES")) {
    const long v = std::strtol(env, nullptr, 10);
    if (v < 1 || v > 1024) return invalid("JAX_BINCONV_METAL_SHIM_LANES must be in [1, 1024]");
    lanes = static_cast<uint32_t>(v);
  }
  metal_plan::Plan plan;
  std::string why;
  if (!metal_plan::make_plan(p, lanes, &plan, &why)) return invalid(why);

  // The operands were checked above; the plan's byte counts must agree.
  void* const operand[] = {x.untyped_data(), w.untyped_data(), input_bias.untyped_data(),
                           input_scale.untyped_data(), output_scale.untyped_data(),
                           output_bias.untyped_data(), out->untyped_data()};
  const size_t operand_bytes[] = {x.size_bytes(), w.size_bytes(), input_bias.size_bytes(),
                                  input_scale.size_bytes(), output_scale.size_bytes(),
                                  output_bias.size_bytes(), out->size_bytes()};
  for (int i = 0; i < 7; ++i)
    if (operand_bytes[i] != plan.bytes[i])
      return ffi::Error::Internal("metal shim: plan and operand sizes disagree for buffer " +
                                  std::to_string(i));

  std::vector<uint32_t> xpk(plan.bytes[metal_plan::B_XPK] / 4);
  std::vector<float> mean_abs(plan.bytes[metal_plan::B_MEAN_ABS] / 4);
  void* logical[metal_plan::kNumBuffers];
  for (int i = 0; i < 7; ++i) logical[i] = operand[i];
  logical[metal_plan::B_XPK] = xpk.data();
  logical[metal_plan::B_MEAN_ABS] = mean_abs.data();

  if (plan.zero_output) std::memset(out->untyped_data(), 0, plan.bytes[metal_plan::B_OUT]);
  for (int s = 0; s < plan.num_steps; ++s) {
    const metal_plan::Step& step = plan.steps[s];
    const KernelInfo* k = find_kernel(metal_plan::kernel_name(step.kernel));
    if (k == nullptr || k->num_bindings != step.num_buffers + 1)
      return ffi::Error::Internal(std::string("metal shim: kernel table mismatch for ") +
                                  metal_plan::kernel_name(step.kernel));
    void* bindings[metal_plan::kMaxBindings + 1];
    for (int i = 0; i < step.num_buffers; ++i) bindings[i] = logical[step.buffers[i]];
    bindings[step.num_buffers] = &plan.args;
    std::string error;
    if (!dispatch(*k, bindings, step.threadgroups, step.threads_per_threadgroup, &error))
      return ffi::Error::Internal("metal shim: " + error);
  }
  return ffi::Error::Success();
}

}  // namespace
}  // namespace metal_shim
}  // namespace binconv

XLA_FFI_DEFINE_HANDLER_SYMBOL(BinconvConv2dMetalShim, binconv::metal_shim::conv2d_impl,
                              binconv::bind_conv2d(xla::ffi::Ffi::Bind()));
