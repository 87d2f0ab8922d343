// jax_binconv._cpu: registers the CPU FFI target and exposes the ISA switch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu_runtime.h"

namespace py = pybind11;
using namespace binconv::cpu;

PYBIND11_MODULE(_cpu, m) {
  m.doc() =
      "CPU kernels of jax_binconv (XNOR/AND popcount convolution). The ISA is chosen at import: "
      "JAX_BINCONV_CPU_ISA=scalar|avx2|avx512|neon forces one (an unknown or unsupported value "
      "prints a warning to stderr and falls back to the best one); otherwise the best this CPU "
      "and OS support. JAX_BINCONV_CPU_THREADS=n caps the threads used (default: the size of "
      "XLA's intra-op pool); the helper threads are this module's own (a persistent pool woken "
      "per call).";
  m.def("registrations", [] {
    py::dict d;
    d["jax_binconv_conv2d_cpu_v1"] = py::capsule(conv2d_handler_address());
    d["jax_binconv_conv2d_cpu_v2"] = py::capsule(conv2d_v2_handler_address());
    return d;
  }, "FFI targets of this module: {name: capsule} (typed FFI, api_version 1).");
  m.def("available_isas", [] {
    std::vector<std::string> out;
    for (Isa i : available_isas()) out.emplace_back(isa_name(i));
    return out;
  }, "ISAs this machine can run, worst first.");
  m.def("get_isa", [] { return std::string(isa_name(current_isa())); },
        "The ISA the handler uses on its next call.");
  m.def("set_isa", [](const std::string& name) {
    Isa isa;
    if (!isa_from_name(name, &isa))
      throw py::value_error("unknown ISA '" + name + "'; expected scalar, avx2, avx512 or neon");
    if (!set_current_isa(isa))
      throw py::value_error("ISA '" + name + "' is not supported by this CPU/OS");
  }, py::arg("name"), "Select the kernel ISA for subsequent calls (process-wide).");
  m.def("last_call_stats", [] {
    py::dict d;
    d["workers"] = last_call_workers();
    d["pool_threads"] = last_call_pool_threads();
    const CallTimings t = last_call_timings();
    d["kernel_us"] = t.kernel_us;
    py::list phases;
    for (const PhaseTiming& ph : t.phases) {
      py::dict e;
      e["us"] = ph.us;
      e["helper_us"] = ph.helper_us;
      e["items"] = ph.items;
      e["caller_items"] = ph.caller_items;
      phases.append(e);
    }
    d["phases"] = phases;
    d["sched_us"] = t.sched_us;
    return d;
  }, "Diagnostics of the last call: threads that ran work items in its last phase, the "
     "size of XLA's intra-op pool, the kernel's time (kernel_us) and per parallel phase its "
     "time, when the first helper thread joined (helper_us, -1: none), its items and those the "
     "calling thread ran; sched_us: how long the last phase's publishing and wake-up took.");
  m.def("get_num_threads", &max_threads, "Thread cap (0: all threads of XLA's intra-op pool).");
  m.def("set_num_threads", &set_max_threads, py::arg("n"),
        "Cap the threads a call uses (0: all of XLA's intra-op pool). Results do not depend on it.");
}
