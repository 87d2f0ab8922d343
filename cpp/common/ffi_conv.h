// The FFI side of docs/ffi.md, written once for every handler (CPU, CUDA,
// Metal shim): the attribute struct, the operand/result/attribute binding,
// and the validation that turns a call into a checked ConvParams. Each
// handler adds only its context (thread pool, stream) and the limits of its
// own kernels. Host code only: includes the XLA FFI API.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "binconv_params.h"
#include "xla/ffi/api/ffi.h"

namespace binconv {

// The attributes of docs/ffi.md, decoded together by .Attrs<ConvAttrs>().
struct ConvAttrs {
  int32_t conv_type;
  int64_t in_channels;
  int64_t stride_h, stride_w;
  int64_t dilation_h, dilation_w;
  int64_t pad_top, pad_bottom, pad_left, pad_right;
  int64_t groups;
  float pad_value;
  bool beta_scaling;
  int32_t activation;
  float negative_slope;
};

}  // namespace binconv

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    ::binconv::ConvAttrs, ::xla::ffi::StructMember<int32_t>("conv_type"),
    ::xla::ffi::StructMember<int64_t>("in_channels"), ::xla::ffi::StructMember<int64_t>("stride_h"),
    ::xla::ffi::StructMember<int64_t>("stride_w"), ::xla::ffi::StructMember<int64_t>("dilation_h"),
    ::xla::ffi::StructMember<int64_t>("dilation_w"), ::xla::ffi::StructMember<int64_t>("pad_top"),
    ::xla::ffi::StructMember<int64_t>("pad_bottom"), ::xla::ffi::StructMember<int64_t>("pad_left"),
    ::xla::ffi::StructMember<int64_t>("pad_right"), ::xla::ffi::StructMember<int64_t>("groups"),
    ::xla::ffi::StructMember<float>("pad_value"), ::xla::ffi::StructMember<bool>("beta_scaling"),
    ::xla::ffi::StructMember<int32_t>("activation"),
    ::xla::ffi::StructMember<float>("negative_slope"));

namespace binconv {

namespace ffi = ::xla::ffi;

// The result, with kWorkspace a second one (the device workspace of
// docs/ffi.md), then the attributes: the tail of both bindings below.
template <bool kWorkspace, typename Binding>
auto bind_conv2d_results(Binding b) {
  auto with_result = std::move(b).template Ret<ffi::AnyBuffer>();
  if constexpr (kWorkspace)
    return std::move(with_result).template Ret<ffi::AnyBuffer>().template Attrs<ConvAttrs>();
  else
    return std::move(with_result).template Attrs<ConvAttrs>();
}

// Appends the operands (x, w, input_bias, input_scale, output_scale,
// output_bias), the result and the attributes to a binding that already
// holds the handler's context, e.g. bind_conv2d(ffi::Ffi::Bind().Ctx<...>()).
// The handler's signature is then (ctx..., AnyBuffer x6, Result<AnyBuffer>, ConvAttrs);
// with kWorkspace a second result (the device workspace of docs/ffi.md)
// follows the first.
template <bool kWorkspace = false, typename Binding>
auto bind_conv2d(Binding b) {
  return bind_conv2d_results<kWorkspace>(std::move(b)
                                             .template Arg<ffi::AnyBuffer>()   // x
                                             .template Arg<ffi::AnyBuffer>()   // w
                                             .template Arg<ffi::AnyBuffer>()   // input_bias
                                             .template Arg<ffi::AnyBuffer>()   // input_scale
                                             .template Arg<ffi::AnyBuffer>()   // output_scale
                                             .template Arg<ffi::AnyBuffer>());  // output_bias
}

// The binding of targets whose four per-channel vectors come as one operand
// (docs/ffi.md, "affine"): x, w, affine = concat(input_bias [C],
// input_scale [C], output_scale [O], output_bias [O]), the result, the
// attributes. With every vector at its default the caller's concatenation
// is one non-splat constant, which XLA keeps as a literal; four separate
// default vectors are splats, which XLA materializes with a broadcast kernel
// on every call. kWorkspace: a second result, the workspace (CUDA).
template <bool kWorkspace = false, typename Binding>
auto bind_conv2d_affine(Binding b) {
  return bind_conv2d_results<kWorkspace>(std::move(b)
                                             .template Arg<ffi::AnyBuffer>()   // x
                                             .template Arg<ffi::AnyBuffer>()   // w
                                             .template Arg<ffi::AnyBuffer>());  // affine
}

inline std::string dims_str(ffi::AnyBuffer::Dimensions d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

inline const char* dtype_str(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::U32: return "uint32";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::S32: return "int32";
    default: return "another dtype";
  }
}

// Bounds that keep every size product below int64 overflow and every
// accumulator exact; backends check their own, tighter limits afterwards.
constexpr int64_t kMaxGeometry = int64_t{1} << 24;  // strides, dilations, pads, H, W, KH, KW, groups
constexpr int64_t kMaxChannels = int64_t{1} << 30;  // C, O
constexpr int64_t kMaxBatch = int64_t{1} << 40;
constexpr int64_t kMaxTapsTimesCg = int64_t{1} << 30;  // int32 accumulators stay exact
// Elements of the padded input copy a kernel may make, and of the result:
// far beyond any memory, yet 2^46 * 64 bytes stays inside int64.
constexpr int64_t kMaxElements = int64_t{1} << 46;

// Four buffer views into the affine operand, each exactly what the separate
// operand would be, so that parse_conv2d checks and reads them unchanged.
struct AffineViews {
  XLA_FFI_Buffer buf[4];
  int64_t dims[4];
  ffi::AnyBuffer view(int i) const { return ffi::AnyBuffer(&buf[i]); }
};

// Splits `affine` (F32 [2 C + 2 O], C = in_channels, O = w's first dim).
// Where C or w are malformed the views get length 0, and parse_conv2d then
// reports in_channels or w by name.
inline ffi::Error split_affine(std::string_view target, const ffi::AnyBuffer& affine,
                               const ffi::AnyBuffer& w, const ConvAttrs& a, AffineViews* v) {
  const auto wd = w.dimensions();
  int64_t c = a.in_channels, o = wd.size() == 4 ? wd[0] : 0;
  if (c < 1 || c > kMaxChannels || o < 0 || o > kMaxChannels) c = o = 0;
  const auto ad = affine.dimensions();
  if (c > 0 && (affine.element_type() != ffi::DataType::F32 || ad.size() != 1 ||
                ad[0] != 2 * c + 2 * o))
    return ffi::Error::InvalidArgument(
        std::string(target) + ": affine must be float32 [2*in_channels + 2*O] = [" +
        std::to_string(2 * c + 2 * o) + "] (input_bias, input_scale, output_scale, output_bias), got " +
        dims_str(ad));
  char* base = static_cast<char*>(affine.untyped_data());
  const int64_t lens[4] = {c, c, o, o};
  int64_t off = 0;
  for (int i = 0; i < 4; ++i) {
    v->dims[i] = lens[i];
    v->buf[i] = XLA_FFI_Buffer{sizeof(XLA_FFI_Buffer), nullptr, XLA_FFI_DataType_F32,
                               base ? base + off * 4 : nullptr, 1, &v->dims[i]};
    off += lens[i];
  }
  return ffi::Error::Success();
}

// a * b when it stays <= limit, else -1 (a, b >= 0).
inline int64_t mul_bounded(int64_t a, int64_t b, int64_t limit) {
  if (a < 0 || b < 0) return -1;
  if (a == 0 || b == 0) return 0;
  if (a > limit / b) return -1;
  return a * b;
}

// Checks one call against docs/ffi.md and fills *p. Messages start with
// the target name, so an error says which kernel refused what.
inline ffi::Error parse_conv2d(std::string_view target, const ffi::AnyBuffer& x,
                               const ffi::AnyBuffer& w, const ffi::AnyBuffer& input_bias,
                               const ffi::AnyBuffer& input_scale,
                               const ffi::AnyBuffer& output_scale,
                               const ffi::AnyBuffer& output_bias, const ffi::AnyBuffer& out,
                               const ConvAttrs& a, ConvParams* p) {
  auto invalid = [&](const std::string& msg) {
    return ffi::Error::InvalidArgument(std::string(target) + ": " + msg);
  };
  if (a.conv_type < BINARY_WEIGHTS || a.conv_type > AND)
    return invalid("conv_type must be 0 (BINARY_WEIGHTS), 1 (XNOR) or 2 (AND), got " +
                   std::to_string(a.conv_type));
  if (a.activation < 0 || a.activation >= kNumActivations)
    return invalid("activation must be in [0, " + std::to_string(kNumActivations) + "), got " +
                   std::to_string(a.activation));
  const std::pair<const char*, int64_t> positive[] = {
      {"stride_h", a.stride_h},     {"stride_w", a.stride_w}, {"dilation_h", a.dilation_h},
      {"dilation_w", a.dilation_w}, {"groups", a.groups}};
  for (const auto& [name, v] : positive)
    if (v < 1 || v > kMaxGeometry)
      return invalid(std::string(name) + " must be in [1, 2^24], got " + std::to_string(v));
  const std::pair<const char*, int64_t> pads[] = {{"pad_top", a.pad_top},
                                                  {"pad_bottom", a.pad_bottom},
                                                  {"pad_left", a.pad_left},
                                                  {"pad_right", a.pad_right}};
  for (const auto& [name, v] : pads)
    if (v < 0 || v > kMaxGeometry)
      return invalid(std::string(name) + " must be in [0, 2^24], got " + std::to_string(v));
  if (a.in_channels < 1 || a.in_channels > kMaxChannels)
    return invalid("in_channels must be in [1, 2^30], got " + std::to_string(a.in_channels));
  if (a.in_channels % a.groups != 0)
    return invalid("groups (" + std::to_string(a.groups) + ") must divide in_channels (" +
                   std::to_string(a.in_channels) + ")");
  if (!std::isfinite(a.pad_value)) return invalid("pad_value must be finite");
  if (a.conv_type == XNOR && !(a.pad_value == 0.0f || a.pad_value == 1.0f || a.pad_value == -1.0f))
    return invalid("XNOR allows pad_value -1, 0 or +1, got " + std::to_string(a.pad_value));
  if (a.conv_type == AND && !(a.pad_value == 0.0f || a.pad_value == 1.0f))
    return invalid("AND allows pad_value 0 or 1, got " + std::to_string(a.pad_value));

  p->type = a.conv_type;
  p->c = a.in_channels;
  p->stride_h = a.stride_h;
  p->stride_w = a.stride_w;
  p->dil_h = a.dilation_h;
  p->dil_w = a.dilation_w;
  p->pad_top = a.pad_top;
  p->pad_bottom = a.pad_bottom;
  p->pad_left = a.pad_left;
  p->pad_right = a.pad_right;
  p->groups = a.groups;
  p->pad_value = a.pad_value;
  p->beta_scaling = a.beta_scaling;
  p->activation = a.activation;
  p->negative_slope = a.negative_slope;

  // x: F32 [..., H, W, C] or U32 [..., H, W, ceil(C/32)]
  const auto xd = x.dimensions();
  if (x.element_type() == ffi::DataType::F32) {
    p->x_packed = false;
  } else if (x.element_type() == ffi::DataType::U32) {
    p->x_packed = true;
  } else {
    return invalid(std::string("x must be float32 or uint32 (packed), got ") +
                   dtype_str(x.element_type()));
  }
  const size_t xr = xd.size();
  if (xr < 4) return invalid("x must have rank >= 4, got " + dims_str(xd));
  int64_t n = 1;
  for (size_t i = 0; i + 3 < xr; ++i) {
    if (xd[i] < 0 || (xd[i] > 0 && n > kMaxBatch / xd[i]))
      return invalid("x's batch dims must multiply to at most 2^40, got " + dims_str(xd));
    n *= xd[i];
  }
  p->n = n;
  p->h = xd[xr - 3];
  p->w = xd[xr - 2];
  if (p->h < 1 || p->w < 1 || p->h > kMaxGeometry || p->w > kMaxGeometry)
    return invalid("x's H and W must be in [1, 2^24], got " + dims_str(xd));
  const int64_t want_xc = p->x_packed ? packed_words(a.in_channels) : a.in_channels;
  if (xd[xr - 1] != want_xc)
    return invalid("x's last dim must be " + std::to_string(want_xc) +
                   (p->x_packed ? " (packed words of in_channels)" : " (in_channels)") +
                   ", got " + dims_str(xd));
  if (p->x_packed && a.conv_type == BINARY_WEIGHTS)
    return invalid("packed x needs conv_type XNOR or AND");

  // w: U32 [O, KH, KW, ceil(Cg/32)]
  const auto wd = w.dimensions();
  if (w.element_type() != ffi::DataType::U32 || wd.size() != 4)
    return invalid(std::string("w must be uint32 [O, KH, KW, ceil(Cg/32)], got ") +
                   dtype_str(w.element_type()) + " " + dims_str(wd));
  p->o = wd[0];
  p->kh = wd[1];
  p->kw = wd[2];
  if (p->o < 1 || p->kh < 1 || p->kw < 1) return invalid("w has an empty dim: " + dims_str(wd));
  if (p->o > kMaxChannels || p->kh > kMaxGeometry || p->kw > kMaxGeometry)
    return invalid("w is too large: " + dims_str(wd));
  if (p->o % a.groups != 0)
    return invalid("groups (" + std::to_string(a.groups) + ") must divide O (" +
                   std::to_string(p->o) + ")");
  if (wd[3] != p->w_words())
    return invalid("w's last dim must be ceil(Cg/32) = " + std::to_string(p->w_words()) +
                   ", got " + dims_str(wd));
  if (p->kh * p->kw * p->cg() >= kMaxTapsTimesCg)
    return invalid("KH*KW*C/groups must be below 2^30 (int32 accumulators)");

  auto check_vector = [&](const char* name, const ffi::AnyBuffer& b, int64_t len) {
    if (b.element_type() != ffi::DataType::F32 || b.dimensions().size() != 1 ||
        b.dimensions()[0] != len)
      return invalid(std::string(name) + " must be float32 [" + std::to_string(len) + "], got " +
                     dtype_str(b.element_type()) + " " + dims_str(b.dimensions()));
    return ffi::Error::Success();
  };
  if (auto e = check_vector("input_bias", input_bias, p->c); e.failure()) return e;
  if (auto e = check_vector("input_scale", input_scale, p->c); e.failure()) return e;
  if (auto e = check_vector("output_scale", output_scale, p->o); e.failure()) return e;
  if (auto e = check_vector("output_bias", output_bias, p->o); e.failure()) return e;

  if (p->h + a.pad_top + a.pad_bottom < p->eff_kh() || p->w + a.pad_left + a.pad_right < p->eff_kw())
    return invalid("the padded input is smaller than the dilated kernel (empty output)");
  // Kernels size scratch as N * Hp * Wp * (channels or words): refuse calls
  // whose products would overflow instead of allocating a wrapped-around size.
  {
    int64_t e = mul_bounded(std::max<int64_t>(p->n, 1), p->h + a.pad_top + a.pad_bottom, kMaxElements);
    e = e < 0 ? -1 : mul_bounded(e, p->w + a.pad_left + a.pad_right, kMaxElements);
    e = e < 0 ? -1 : mul_bounded(e, p->c + p->groups, kMaxElements);
    int64_t r = mul_bounded(std::max<int64_t>(p->n, 1), p->ho(), kMaxElements);
    r = r < 0 ? -1 : mul_bounded(r, p->wo(), kMaxElements);
    r = r < 0 ? -1 : mul_bounded(r, p->o, kMaxElements);
    if (e < 0 || r < 0)
      return invalid("the padded input or the result would exceed 2^46 elements");
  }

  // result: F32 [..., Ho, Wo, O] or U32 [..., Ho, Wo, ceil(O/32)]
  const auto od = out.dimensions();
  if (out.element_type() == ffi::DataType::F32) {
    p->out_packed = false;
  } else if (out.element_type() == ffi::DataType::U32) {
    p->out_packed = true;
  } else {
    return invalid(std::string("the result must be float32 or uint32 (packed), got ") +
                   dtype_str(out.element_type()));
  }
  const int64_t ho = p->ho(), wo = p->wo();
  const int64_t want_oc = p->out_packed ? p->out_words() : p->o;
  bool ok = od.size() == xr;
  for (size_t i = 0; ok && i + 3 < xr; ++i) ok = od[i] == xd[i];
  ok = ok && od[xr - 3] == ho && od[xr - 2] == wo && od[xr - 1] == want_oc;
  if (!ok) {
    std::string want = "[";
    for (size_t i = 0; i + 3 < xr; ++i) want += std::to_string(xd[i]) + ", ";
    want += std::to_string(ho) + ", " + std::to_string(wo) + ", " + std::to_string(want_oc) + "]";
    return invalid("the result must have shape " + want + ", got " + dims_str(od));
  }
  return ffi::Error::Success();
}

}  // namespace binconv
