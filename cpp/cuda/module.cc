// Python bindings of jax_binconv._cuda: only the handler capsules.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "binconv_kernels.h"
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
