// Python bindings of jax_binconv._cuda: only the handler capsules.
#include <pybind11/pybind11.h>

#include <cstdlib>
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
