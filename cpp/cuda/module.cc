// Python bindings of jax_binconv._cuda: only the handler capsules.
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "binconv_kernels.h"
#include "cuda_handler.h"

namespace py = pybind11;

namespace {
// Index of `mode` in `names` (a string knob's modes, by its C++ value), or
// a ValueError: `expected` and the mode given.
template <size_t N>
int mode_index(const std::string& mode, const char* const (&names)[N], const char* expected) {
  for (size_t i = 0; i < N; ++i)
    if (mode == names[i]) return (int)i;
  throw py::value_error(std::string(expected) + ", got '" + mode + "'");
}

// An integer knob: set_<name>(arg) with arg in [lo, hi] (else a ValueError
// that names it) and get_<name>().
void def_int_knob(py::module_& m, const std::string& name, const char* arg, int lo, int hi,
                  void (*set)(int), int (*get)(), const char* doc) {
  const std::string setter = "set_" + name;
  m.def(
      setter.c_str(),
      [setter, arg, lo, hi, set](int v) {
        if (v < lo || v > hi)
          throw py::value_error(setter + ": " + arg + " must be in [" + std::to_string(lo) +
                                ", " + std::to_string(hi) + "]");
        set(v);
      },
      py::arg(arg), doc);
  m.def(("get_" + name).c_str(), [get]() { return get(); });
}

// A bool knob: set_<name>(on) and get_<name>().
void def_bool_knob(py::module_& m, const std::string& name, void (*set)(bool), bool (*get)(),
                   const char* doc) {
  m.def(("set_" + name).c_str(), [set](bool on) { set(on); }, py::arg("on"), doc);
  m.def(("get_" + name).c_str(), [get]() { return get(); });
}

// What the most recent call did, reported by `get` as 1 / 0, or -1 before
// any such call: True / False, or None.
void def_last_bool(py::module_& m, const char* name, int (*get)(), const char* doc) {
  m.def(
      name,
      [get]() {
        const int v = get();
        return v < 0 ? py::object(py::none()) : py::object(py::bool_(v != 0));
      },
      doc);
}
}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "jax_binconv CUDA kernels (XLA FFI handlers for the cuda platform)";
  m.def("registrations", []() {
    py::dict d;
    d["jax_binconv_conv2d_cuda_v1"] =
        py::capsule(reinterpret_cast<void*>(&binconv::cuda::Conv2dCudaV1));
    d["jax_binconv_conv2d_cuda_v2"] =
        py::capsule(reinterpret_cast<void*>(&binconv::cuda::Conv2dCudaV2));
    d["jax_binconv_conv2d_cuda_v3"] =
        py::capsule(reinterpret_cast<void*>(&binconv::cuda::Conv2dCudaV3));
    return d;
  });
  m.def("handler_calls", &binconv::cuda::handler_calls,
        "How many times XLA has called the CUDA handlers in this process (a call that XLA "
        "captured into a CUDA graph is replayed without calling the handler again).");
  // Functions of one call's geometry, which Python passes as the keyword
  // arguments of the lowering (validated there; checked again here): `fn`
  // gets them as ConvParams. Needs no GPU.
  auto def_geometry = [&m](const char* name, auto fn, const char* doc) {
    m.def(
        name,
        [name, fn](int32_t conv_type, int64_t n, int64_t h, int64_t w, int64_t c, int64_t o,
                   int64_t kh, int64_t kw, int64_t stride_h, int64_t stride_w,
                   int64_t dilation_h, int64_t dilation_w, int64_t pad_top, int64_t pad_bottom,
                   int64_t pad_left, int64_t pad_right, int64_t groups, float pad_value,
                   bool beta_scaling, int32_t activation, float negative_slope, bool x_packed,
                   bool out_packed) {
          if (n < 0 || h < 1 || w < 1 || c < 1 || o < 1 || kh < 1 || kw < 1 || stride_h < 1 ||
              stride_w < 1 || dilation_h < 1 || dilation_w < 1 || pad_top < 0 ||
              pad_bottom < 0 || pad_left < 0 || pad_right < 0 || groups < 1 ||
              c % groups != 0 || o % groups != 0)
            throw std::invalid_argument(std::string(name) + ": invalid convolution geometry");
          binconv::ConvParams p;
          p.type = conv_type;
          p.n = n;
          p.h = h;
          p.w = w;
          p.c = c;
          p.o = o;
          p.kh = kh;
          p.kw = kw;
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
          p.activation = activation;
          p.negative_slope = negative_slope;
          p.x_packed = x_packed;
          p.out_packed = out_packed;
          return fn(p);
        },
        py::arg("conv_type"), py::arg("n"), py::arg("h"), py::arg("w"), py::arg("c"),
        py::arg("o"), py::arg("kh"), py::arg("kw"), py::arg("stride_h"), py::arg("stride_w"),
        py::arg("dilation_h"), py::arg("dilation_w"), py::arg("pad_top"),
        py::arg("pad_bottom"), py::arg("pad_left"), py::arg("pad_right"), py::arg("groups"),
        py::arg("pad_value"), py::arg("beta_scaling"), py::arg("activation"),
        py::arg("negative_slope"), py::arg("x_packed"), py::arg("out_packed"), doc);
  };
  // Size of the v2/v3 workspace result: Python calls it while lowering.
  def_geometry(
      "workspace_bytes",
      [](const binconv::ConvParams& p) { return binconv::cuda::workspace_bytes(p); },
      "Bytes of the workspace result of jax_binconv_conv2d_cuda_v2/v3 (docs/ffi.md) for one "
      "call.");
  def_geometry(
      "fast_slot_plan",
      [](const binconv::ConvParams& p) -> py::object {
        binconv::cuda::FastSlotPlan sp;
        if (!binconv::cuda::fast_slot_plan(p, &sp)) return py::none();
        py::dict d;
        d["rmax"] = sp.rmax;
        d["srows"] = sp.srows;
        d["erow"] = sp.erow;
        d["wslot"] = sp.wslot;
        d["mtiles"] = sp.mtiles;
        d["dyback"] = sp.dyback;
        d["dymask"] = sp.dymask;
        return d;
      },
      "The fast kernel's input-slot plan (rmax, srows, erow, wslot, mtiles, dyback, dymask) for one "
      "call's geometry, or None where the fast kernel does not apply. Needs no GPU (tests).");
  // JAX_BINCONV_CUDA_KERNEL=auto|general: the fast popcount kernel where it
  // applies (default), or always the general one.
  auto parse_policy = [](const std::string& name) {
    if (name == "auto") return binconv::cuda::KERNEL_AUTO;
    if (name == "general") return binconv::cuda::KERNEL_GENERAL;
    throw std::invalid_argument("kernel must be 'auto' or 'general'; got '" + name + "'");
  };
  if (const char* env = std::getenv("JAX_BINCONV_CUDA_KERNEL")) {
    try {
      binconv::cuda::set_kernel_policy(parse_policy(env));
    } catch (const std::invalid_argument& e) {
      PyErr_WarnEx(PyExc_RuntimeWarning,
                   ("JAX_BINCONV_CUDA_KERNEL ignored: " + std::string(e.what())).c_str(), 1);
    }
  }
  m.def(
      "set_kernel",
      [parse_policy](const std::string& name) {
        binconv::cuda::set_kernel_policy(parse_policy(name));
      },
      py::arg("name"),
      "Kernel policy of the popcount types: 'auto' (the fast kernel where it applies) or "
      "'general' (always the general kernel). Process-wide, read at every call.");
  m.def("get_kernel", []() {
    return std::string(binconv::cuda::kernel_policy() == binconv::cuda::KERNEL_GENERAL
                           ? "general"
                           : "auto");
  });
  m.def(
      "last_kernel",
      []() {
        switch (binconv::cuda::last_kernel_path()) {
          case binconv::cuda::KERNEL_PATH_FAST: return std::string("fast");
          case binconv::cuda::KERNEL_PATH_GENERAL: return std::string("general");
          case binconv::cuda::KERNEL_PATH_BINARY_WEIGHTS: return std::string("binary_weights");
          default: return std::string("none");
        }
      },
      "The kernel the most recent call ran: 'fast', 'general', 'binary_weights' or 'none'.");
  def_bool_knob(
      m, "tma_slots", binconv::cuda::set_tma_slots, binconv::cuda::tma_slots,
      "Fast kernel input copies: tensor maps on sm_90 (True, the default) or cp.async "
      "(False; what older GPUs run). Process-wide, read at every call.");
  def_bool_knob(
      m, "fast_pdl", binconv::cuda::set_fast_pdl, binconv::cuda::fast_pdl,
      "Programmatic dependent launch of the fast kernel's tables and convolution kernels "
      "(default True; a benchmark knob, results are the same). Process-wide.");
  static const char* const kWeightCopies[] = {"cp.async", "bulk", "tensor_map"};
  m.def(
      "set_fast_weight_copy",
      [](const std::string& mode) {
        binconv::cuda::set_fast_weight_copy(mode_index(
            mode, kWeightCopies, "set_fast_weight_copy: mode must be 'tensor_map', 'bulk' or "
                                 "'cp.async'"));
      },
      py::arg("mode"),
      "How the fast kernel copies its weights, the most wanted: 'tensor_map' (the default: one "
      "box per block on sm_90 where O is a multiple of 32, else 'bulk'), 'bulk' (one bulk copy "
      "per channel row, sm_90) or 'cp.async' (what older GPUs run). A benchmark knob, results "
      "are the same. Process-wide.");
  m.def("get_fast_weight_copy",
        []() { return std::string(kWeightCopies[binconv::cuda::fast_weight_copy()]); });
  def_bool_knob(
      m, "fast_fused_prep", binconv::cuda::set_fast_fused_prep, binconv::cuda::fast_fused_prep,
      "Float x on the fast kernel: its packing and the epilogue tables in one kernel (True, "
      "the default, where that grid has at most 8192 blocks) or two kernels in turn (False). "
      "A benchmark knob, results are the same. Process-wide.");
  def_bool_knob(
      m, "fast_fused_tables_first", binconv::cuda::set_fast_fused_tables_first,
      binconv::cuda::fast_fused_tables_first,
      "Float x on the fast kernel, packing and tables in one kernel: the tables' blocks "
      "dispatched before the packing's (True) instead of after them (False, the default), so "
      "that their chain of dependent steps overlaps the packing instead of following its last "
      "wave. A benchmark knob, results are the same. Process-wide.");
  static const char* const kWgmmaModes[] = {"off", "on", "auto", "rs"};
  static const char* const kWgmmaDoc =
      "The fast kernel's K loop on Hopper's warpgroup MMAs (wgmma) or on mma.sync. wgmma "
      "runs only where the GPU is compute capability 9.0, the build has sm_90a code, C != 64 "
      "and its shared memory fits. mode 'auto' (the default): there where it pays (every SM "
      "gets a 128-row tile, the K loop has at least 3 steps of 256 bits, and the output is "
      "not packed through the float epilogue: beta with float x or a non-monotone "
      "activation); 'on' (or True): wherever it can run; 'off' (or False): never. The "
      "wgmma kernel reads its A operand from shared memory where that form runs (stride 1 "
      "along x, C / 128 one or even), else from registers; 'rs': the wgmma kernel wherever "
      "it can run, A always from registers (a benchmark and test mode). Results are the "
      "same. Process-wide.";
  m.def(
      "set_fast_wgmma",
      [](const std::string& mode) {
        binconv::cuda::set_fast_wgmma(mode_index(
            mode, kWgmmaModes,
            "set_fast_wgmma: mode must be 'auto', 'on', 'off' or 'rs' (or a bool)"));
      },
      py::arg("mode"), kWgmmaDoc);
  m.def(
      "set_fast_wgmma",
      [](bool on) {
        binconv::cuda::set_fast_wgmma(on ? binconv::cuda::kWgmmaOn : binconv::cuda::kWgmmaOff);
      },
      py::arg("mode"), kWgmmaDoc);
  m.def("get_fast_wgmma",
        []() { return std::string(kWgmmaModes[binconv::cuda::fast_wgmma()]); },
        "The set_fast_wgmma mode: 'auto', 'on', 'off' or 'rs'.");
  def_last_bool(
      m, "last_wgmma", binconv::cuda::last_wgmma,
      "Whether the most recent fast-kernel call ran the wgmma kernel (None: no fast call yet).");
  m.def(
      "last_wgmma_form",
      []() {
        const int v = binconv::cuda::last_wgmma();
        return v < 0 ? py::object(py::none())
                     : py::object(py::str(v == 2 ? "ss" : v == 1 ? "rs" : ""));
      },
      "The wgmma form of the most recent fast-kernel call: 'ss' (A from shared memory), "
      "'rs' (A from registers), '' (mma.sync), None (no fast call yet).");
  def_int_knob(
      m, "debug_weight_delay", "us", 0, 10000, binconv::cuda::set_debug_weight_delay,
      binconv::cuda::debug_weight_delay,
      "Test knob: the wgmma kernel, where its weights come by tensor map, fills their shared "
      "memory with ones and issues their copies `us` microseconds late (0, the default: no "
      "delay), so that a K loop that read the weights before they land would give a wrong "
      "result. Results are the same. Process-wide.");
  def_int_knob(
      m, "debug_tile_rounds", "rounds", -1, 64, binconv::cuda::set_debug_tile_rounds,
      binconv::cuda::debug_tile_rounds,
      "Test and tuning knob: the wgmma kernel gives its first `rounds` rounds of M tiles to "
      "the blocks that start first (those not waiting for fast_tables_kernel's SMs), so the "
      "others take that many tiles fewer; -1 (the default): estimated per call, 0: the plain "
      "strided order. Results are the same. Process-wide.");
  m.def(
      "last_tile_rounds",
      []() {
        const int v = binconv::cuda::last_tile_rounds();
        return v < 0 ? py::object(py::none()) : py::object(py::int_(v));
      },
      "The early rounds (set_debug_tile_rounds) the most recent wgmma-kernel call ran with "
      "(None: no such call yet).");
  def_bool_knob(
      m, "fast_wg_split", binconv::cuda::set_fast_wg_split, binconv::cuda::fast_wg_split,
      "The wgmma kernel's shared-memory form with one tile a block (at most a quarter as "
      "many tiles as SMs) and float output: its second warpgroup, which has no tile, runs "
      "the epilogue of the tile's channels 64-127 (default True; a benchmark knob, results "
      "are the same). Process-wide.");
  def_bool_knob(
      m, "fast_wg_skip_half", binconv::cuda::set_fast_wg_skip_half,
      binconv::cuda::fast_wg_skip_half,
      "The wgmma kernel's shared-memory form with float output or packed output by "
      "thresholds: a tile whose rows 64-127 hold no pixel (7x7 at N = 1; the last tile of "
      "some calls) issues the MMAs and runs the epilogue of rows 0-63 only (default True; a "
      "benchmark knob, results are the same). Process-wide.");
  def_bool_knob(
      m, "fast_wg_half_tiles", binconv::cuda::set_fast_wg_half_tiles,
      binconv::cuda::fast_wg_half_tiles,
      "The wgmma kernel's shared-memory form with float output or packed output by "
      "thresholds in tiles of 64 rows (8 groups of 8 pixels) instead of 128 where twice the "
      "tiles still fit the SMs: each block's MMAs and epilogue halve, on twice as many SMs "
      "(default True; needs set_fast_wg_skip_half; a benchmark knob, results are the same). "
      "Process-wide.");
  def_bool_knob(
      m, "fast_wg_half_tiles_always", binconv::cuda::set_fast_wg_half_tiles_always,
      binconv::cuda::fast_wg_half_tiles_always,
      "With set_fast_wg_half_tiles: tiles of 64 rows wherever the shared-memory form runs "
      "them, also where twice the tiles do not fit the SMs (blocks then loop over more, "
      "smaller tiles; default False; a benchmark knob, results are the same). "
      "Process-wide.");
  def_last_bool(
      m, "last_wg_half_tiles", binconv::cuda::last_wg_half_tiles,
      "Whether the most recent wgmma-kernel call ran the shared-memory form in tiles of 64 "
      "rows (None: no wgmma-kernel call yet).");
  def_last_bool(
      m, "last_wg_split", binconv::cuda::last_wg_split,
      "Whether the most recent wgmma-kernel call ran the shared-memory form with at most a "
      "quarter as many tiles as SMs, float output, weights of 3 K blocks or more (at 3x3, C "
      ">= 256) and the split allowed (None: no wgmma-kernel call yet; False for the "
      "register-A form and for packed output).");
  m.def(
      "timeline_read",
      []() {
        std::vector<unsigned char> bytes;
        int rec = 0;
        const cudaError_t err = binconv::cuda::timeline_read(&bytes, &rec);
        if (err == cudaErrorNotSupported)
          throw std::runtime_error("timeline_read: a build with -DJAX_BINCONV_TIMELINE only");
        if (err != cudaSuccess)
          throw std::runtime_error(std::string("timeline_read: ") + cudaGetErrorString(err));
        return py::make_tuple(py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                              rec);
      },
      "Debugging aid (-DJAX_BINCONV_TIMELINE builds): (records, record size in bytes) of the "
      "fast kernels' timeline marks since the last read; see cpp/cuda/tools/timeline.py.");
  m.def("wgmma_available", []() { return binconv::cuda::wgmma_available(); },
        "Whether this build has sm_90a code and the current GPU can run it (compute capability "
        "9.0): where the fast kernel's K loop can run on wgmma.");
  m.def(
      "last_weight_copy",
      []() {
        const int v = binconv::cuda::last_weight_copy();
        return v < 0 ? py::object(py::none()) : py::object(py::str(kWeightCopies[v]));
      },
      "How the most recent fast-kernel call copied its weights (None: no fast call yet).");
  def_last_bool(
      m, "last_tma_slots", binconv::cuda::last_tma_slots,
      "Whether the most recent fast-kernel call copied its input by tensor map (None: no "
      "fast call yet).");
  m.def(
      "measure_ceilings",
      [](size_t copy_bytes) {
        binconv::cuda::Ceilings c;
        const cudaError_t err = binconv::cuda::measure_ceilings(&c, copy_bytes);
        if (err != cudaSuccess)
          throw std::runtime_error(std::string("measure_ceilings: ") + cudaGetErrorString(err));
        py::dict d;
        d["mma_macs_per_s"] = c.mma_macs_per_s;
        d["copy_bytes_per_s"] = c.copy_bytes_per_s;
        return d;
      },
      py::arg("copy_bytes") = size_t(1) << 30,
      "Benchmark ceilings on the current CUDA device: b1 MMA rate (binary MACs/s) and "
      "device-to-device copy bandwidth (bytes read + written per second).");
}
