// Python bindings of jax_binconv._cuda: only the handler capsules.
#include <pybind11/pybind11.h>

#include "cuda_handler.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "jax_binconv CUDA kernels (XLA FFI handlers for the cuda platform)";
  m.def("registrations", []() {
    py::dict d;
    d["jax_binconv_conv2d_cuda_v1"] =
        py::capsule(reinterpret_cast<void*>(&binconv::cuda::Conv2dCudaV1));
    return d;
  });
}
