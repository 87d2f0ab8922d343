// jax_binconv._metal_shim: test-only module exposing the Metal-shim FFI
// handler (docs/ffi.md) and the embedded kernel source the macOS host
// compiles at run time when no metallib is found.
#include <pybind11/pybind11.h>

#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "binconv_metal_source.h"
#include "shim_runtime.h"
#include "xla/ffi/api/c_api.h"

extern "C" XLA_FFI_Error* BinconvConv2dMetalShim(XLA_FFI_CallFrame* call_frame);

namespace py = pybind11;

PYBIND11_MODULE(_metal_shim, m) {
  m.doc() = "Test-only: binconv.metal compiled as C++ and run through a host shim";
  m.def("registrations", []() {
    py::dict d;
    d["jax_binconv_conv2d_metalshim_v1"] =
        py::capsule(reinterpret_cast<void*>(&BinconvConv2dMetalShim));
    return d;
  });
  m.def("embedded_metal_source", []() { return std::string(binconv::kMetalSource); },
        "The self-contained MSL source (binconv_args.h spliced in) the macOS host "
        "compiles at run time when binconv.metallib is missing.");
  m.def(
      "run_selftest",
      [](const std::string& name, std::vector<uint32_t> data, uint32_t threadgroups,
         uint32_t lanes) {
        const auto* k = binconv::metal_shim::find_selftest_kernel(name.c_str());
        if (k == nullptr) throw std::invalid_argument("unknown self-test kernel " + name);
        if (static_cast<uint64_t>(threadgroups) * lanes != data.size())
          throw std::invalid_argument("data must hold threadgroups * lanes values");
        // Poison the output: a lane that never writes shows up.
        std::vector<uint32_t> out(data.size(), 0xDEADBEEFu);
        void* bindings[2] = {data.data(), out.data()};
        const uint32_t grid[3] = {threadgroups, 1, 1}, group[3] = {lanes, 1, 1};
        std::string error;
        if (!binconv::metal_shim::dispatch(*k, bindings, grid, group, &error))
          throw std::runtime_error(error);
        return out;
      },
      "Test-only: run a kernel of metal/shim/selftest.metal over threadgroups x lanes.");
}
