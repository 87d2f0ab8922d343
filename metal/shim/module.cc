// jax_binconv._metal_shim: test-only module exposing the Metal-shim FFI
// handler (docs/ffi.md) and the embedded kernel source the macOS host
// compiles at run time when no metallib is found.
#include <pybind11/pybind11.h>

#include "binconv_metal_source.h"
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
}
