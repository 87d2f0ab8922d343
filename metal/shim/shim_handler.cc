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
#include "shim_runtime.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace binconv {
namespace metal_shim {
namespace {

std::string dims_str(ffi::AnyBuffer::Dimensions d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

ffi::Error invalid(const std::string& msg) {
  return ffi::Error::InvalidArgument("jax_binconv_conv2d_metalshim_v1: " + msg);
}

ffi::Error check_vector(const char* name, const ffi::AnyBuffer& b, int64_t len) {
  if (b.element_type() != ffi::F32)
    return invalid(std::string(name) + " must be float32");
  if (b.dimensions().size() != 1 || b.dimensions()[0] != len)
    return invalid(std::string(name) + " must have shape [" + std::to_string(len) + "], got " +
                   dims_str(b.dimensions()));
  return ffi::Error::Success();
}

// Sizes beyond this are rejected before any arithmetic on them can overflow
// int64 (products of a few of them stay below 2^63).
constexpr int64_t kMaxAttr = int64_t{1} << 30;

ffi::Error conv2d_impl(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer input_bias,
                       ffi::AnyBuffer input_scale, ffi::AnyBuffer output_scale,
                       ffi::AnyBuffer output_bias, ffi::Result<ffi::AnyBuffer> out,
                       int32_t conv_type, int64_t in_channels, int64_t stride_h, int64_t stride_w,
                       int64_t dilation_h, int64_t dilation_w, int64_t pad_top, int64_t pad_bottom,
                       int64_t pad_left, int64_t pad_right, int64_t groups, float pad_value,
                       bool beta_scaling, int32_t activation, float negative_slope) {
  ConvParams p;
  if (conv_type != BINARY_WEIGHTS && conv_type != XNOR && conv_type != AND)
    return invalid("conv_type must be 0, 1 or 2, got " + std::to_string(conv_type));
  if (activation < 0 || activation >= kNumActivations)
    return invalid("activation must be in [0, " + std::to_string(kNumActivations) + "), got " +
                   std::to_string(activation));
  const int64_t ints[] = {in_channels, stride_h, stride_w, dilation_h, dilation_w, groups};
  const char* int_names[] = {"in_channels", "stride_h", "stride_w", "dilation_h", "dilation_w", "groups"};
  for (int i = 0; i < 6; ++i)
    if (ints[i] < 1 || ints[i] > kMaxAttr)
      return invalid(std::string(int_names[i]) + " must be in [1, 2^30], got " + std::to_string(ints[i]));
  const int64_t pads[] = {pad_top, pad_bottom, pad_left, pad_right};
  for (int64_t v : pads)
    if (v < 0 || v > kMaxAttr) return invalid("padding must be in [0, 2^30], got " + std::to_string(v));

  p.type = conv_type;
  p.activation = activation;
  p.negative_slope = negative_slope;
  p.c = in_channels;
  p.stride_h = stride_h;
  p.stride_w = stride_w;
  p.dil_h = dilation_h;
  p.dil_w = dilation_w;
  p.pad_top = pad_top;
  p.pad_bottom = pad_bottom;
  p.pad_left = pad_left;
  p.pad_right = pad_right;
  p.groups = groups;
  p.pad_value = pad_value;
  p.beta_scaling = beta_scaling;

  if (conv_type == XNOR && !(pad_value == 0.0f || pad_value == 1.0f || pad_value == -1.0f))
    return invalid("pad_value for XNOR must be -1, 0 or 1, got " + std::to_string(pad_value));
  if (conv_type == AND && !(pad_value == 0.0f || pad_value == 1.0f))
    return invalid("pad_value for AND must be 0 or 1, got " + std::to_string(pad_value));
  if (!std::isfinite(pad_value)) return invalid("pad_value must be finite");

  // x: F32 [..., H, W, C] or U32 [..., H, W, ceil(C/32)].
  const auto xd = x.dimensions();
  if (xd.size() < 4) return invalid("x must have rank >= 4, got " + dims_str(xd));
  if (x.element_type() == ffi::F32) {
    p.x_packed = false;
  } else if (x.element_type() == ffi::U32) {
    p.x_packed = true;
  } else {
    return invalid("x must be float32 or uint32 (packed)");
  }
  const size_t r = xd.size();
  p.h = xd[r - 3];
  p.w = xd[r - 2];
  int64_t n = 1;
  for (size_t i = 0; i + 3 < r; ++i) {
    if (xd[i] < 0) return invalid("x has a negative dimension");
    n *= xd[i];
    if (n > kMaxAttr) return invalid("batch too large");
  }
  p.n = n;
  if (p.h < 1 || p.w < 1 || p.h > kMaxAttr || p.w > kMaxAttr)
    return invalid("x's H and W must be >= 1, got " + dims_str(xd));
  const int64_t want_last = p.x_packed ? packed_words(p.c) : p.c;
  if (xd[r - 1] != want_last)
    return invalid(std::string("x's last dimension must be ") +
                   (p.x_packed ? "ceil(in_channels/32) = " : "in_channels = ") +
                   std::to_string(want_last) + ", got " + dims_str(xd));
  if (p.x_packed && conv_type == BINARY_WEIGHTS)
    return invalid("packed x needs XNOR or AND");
  if (p.c % groups != 0) return invalid("groups must divide in_channels");
  if (p.x_packed && groups > 1 && p.cg() % 32 != 0)
    return invalid("packed x with groups > 1 needs in_channels/groups to be a multiple of 32");

  // w: U32 [O, KH, KW, ceil(Cg/32)].
  const auto wd = w.dimensions();
  if (w.element_type() != ffi::U32 || wd.size() != 4)
    return invalid("w must be uint32 [O, KH, KW, ceil(Cg/32)], got " + dims_str(wd));
  p.o = wd[0];
  p.kh = wd[1];
  p.kw = wd[2];
  if (p.o < 1 || p.kh < 1 || p.kw < 1 || p.o > kMaxAttr || p.kh > kMaxAttr || p.kw > kMaxAttr)
    return invalid("w's O, KH and KW must be >= 1, got " + dims_str(wd));
  if (p.o % groups != 0) return invalid("groups must divide the output channels");
  if (wd[3] != p.w_words())
    return invalid("w's last dimension must be ceil((in_channels/groups)/32) = " +
                   std::to_string(p.w_words()) + ", got " + dims_str(wd));

  if (auto e = check_vector("input_bias", input_bias, p.c); e.failure()) return e;
  if (auto e = check_vector("input_scale", input_scale, p.c); e.failure()) return e;
  if (auto e = check_vector("output_scale", output_scale, p.o); e.failure()) return e;
  if (auto e = check_vector("output_bias", output_bias, p.o); e.failure()) return e;

  if (p.h + pad_top + pad_bottom < p.eff_kh() || p.w + pad_left + pad_right < p.eff_kw())
    return invalid("the padded input is smaller than the dilated kernel");

  // Result: F32 [..., Ho, Wo, O] or U32 [..., Ho, Wo, ceil(O/32)].
  const auto od = out->dimensions();
  if (out->element_type() == ffi::F32) {
    p.out_packed = false;
  } else if (out->element_type() == ffi::U32) {
    p.out_packed = true;
  } else {
    return invalid("the result must be float32 or uint32 (packed)");
  }
  bool shape_ok = od.size() == r;
  for (size_t i = 0; shape_ok && i + 3 < r; ++i) shape_ok = od[i] == xd[i];
  if (shape_ok)
    shape_ok = od[r - 3] == p.ho() && od[r - 2] == p.wo() &&
               od[r - 1] == (p.out_packed ? p.out_words() : p.o);
  if (!shape_ok)
    return invalid("the result's shape must be [..., " + std::to_string(p.ho()) + ", " +
                   std::to_string(p.wo()) + ", " +
                   std::to_string(p.out_packed ? p.out_words() : p.o) + "], got " + dims_str(od));

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
                              xla::ffi::Ffi::Bind()
                                  .Arg<xla::ffi::AnyBuffer>()  // x
                                  .Arg<xla::ffi::AnyBuffer>()  // w
                                  .Arg<xla::ffi::AnyBuffer>()  // input_bias
                                  .Arg<xla::ffi::AnyBuffer>()  // input_scale
                                  .Arg<xla::ffi::AnyBuffer>()  // output_scale
                                  .Arg<xla::ffi::AnyBuffer>()  // output_bias
                                  .Ret<xla::ffi::AnyBuffer>()  // out
                                  .Attr<int32_t>("conv_type")
                                  .Attr<int64_t>("in_channels")
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w")
                                  .Attr<int64_t>("dilation_h")
                                  .Attr<int64_t>("dilation_w")
                                  .Attr<int64_t>("pad_top")
                                  .Attr<int64_t>("pad_bottom")
                                  .Attr<int64_t>("pad_left")
                                  .Attr<int64_t>("pad_right")
                                  .Attr<int64_t>("groups")
                                  .Attr<float>("pad_value")
                                  .Attr<bool>("beta_scaling")
                                  .Attr<int32_t>("activation")
                                  .Attr<float>("negative_slope"));
