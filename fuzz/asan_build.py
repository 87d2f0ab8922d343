"""Build the C++ extensions with AddressSanitizer + UndefinedBehaviorSanitizer
and lay them out as an importable ``jax_binconv`` package that shadows the
normal one. Used by tests/test_sanitizers.py, tests/test_fuzz.py and
fuzz/build.sh.

    python fuzz/asan_build.py [BUILD_DIR]     # prints the environment to use

The build is incremental (CMake + Ninja in BUILD_DIR, default
``build/sanitizers``); only the ``_cpu`` and ``_metal_shim`` targets are built.
Python does not link the sanitizer runtimes, so processes that import the
modules need ``LD_PRELOAD`` of libasan (and libstdc++, so that ASan's
``__cxa_throw`` interceptor finds the real one: jaxlib throws C++ exceptions
internally). :func:`sanitizer_env` returns all of it.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAN_FLAGS = "-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -g"
DEFAULT_BUILD_DIR = os.environ.get("JAX_BINCONV_SANITIZER_BUILD_DIR",
                                   os.path.join(REPO, "build", "sanitizers"))

ASAN_OPTIONS = ":".join([
    "detect_leaks=0",             # CPython and jaxlib keep allocations alive on purpose
    "halt_on_error=1",
    "abort_on_error=0",
    "allocator_may_return_null=1",  # a huge request must reach the kernel as nullptr
    "detect_stack_use_after_return=0",  # the Metal shim's ucontext fibers
    "handle_segv=1",
    "print_summary=1",
])
UBSAN_OPTIONS = "halt_on_error=1:print_stacktrace=1:report_error_type=1"


class SanitizerUnavailable(Exception):
    """The compiler has no ASan/UBSan runtime (tests skip on this, and only this)."""


def _cxx():
    return os.environ.get("CXX", "g++")


@functools.lru_cache(None)
def runtime_libs():
    """Paths to preload: (libasan, libstdc++). Raises SanitizerUnavailable."""
    cxx = _cxx()
    if shutil.which(cxx) is None:
        raise SanitizerUnavailable(f"no C++ compiler {cxx!r} on PATH")
    libs = []
    for name in ("libasan.so", "libstdc++.so.6"):
        out = subprocess.run([cxx, f"-print-file-name={name}"], capture_output=True, text=True)
        path = out.stdout.strip()
        if out.returncode != 0 or not os.path.isabs(path) or not os.path.exists(path):
            raise SanitizerUnavailable(f"{cxx} has no {name} (sanitizer runtime not installed)")
        libs.append(os.path.realpath(path))
    ubsan = subprocess.run([cxx, "-print-file-name=libubsan.so"], capture_output=True, text=True)
    if not os.path.isabs(ubsan.stdout.strip()):
        raise SanitizerUnavailable(f"{cxx} has no libubsan.so")
    return tuple(libs)


def _run(cmd, log):
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    log.append(f"$ {' '.join(cmd)}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    if proc.returncode != 0:
        raise RuntimeError("sanitizer build failed:\n" + "\n".join(log))


@functools.lru_cache(None)
def build(build_dir: str = DEFAULT_BUILD_DIR, jobs: int = 2) -> dict:
    """Configure (once) and build the sanitized modules; {target: .so path}.

    Processes that build the same directory at once (pytest -n: one per
    worker) take turns on a lock file beside it; the later ones find the
    build up to date."""
    runtime_libs()
    os.makedirs(os.path.dirname(os.path.abspath(build_dir)), exist_ok=True)
    with open(os.path.abspath(build_dir) + ".lock", "w") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no sanitizer runtime there either
            fcntl = None
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        return _build_locked(build_dir, jobs)


def _build_locked(build_dir: str, jobs: int) -> dict:
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on PATH: install it (pip install {tool}) to build "
                               "the sanitized kernels")
    import pybind11  # noqa: F401 - a clear ImportError if missing

    log: list[str] = []
    configure = ["cmake", "-S", REPO, "-B", build_dir, "-G", "Ninja",
                 "-DCMAKE_BUILD_TYPE=Debug", "-DJAX_BINCONV_CUDA=OFF",
                 f"-DCMAKE_CXX_COMPILER={shutil.which(_cxx())}",
                 # -O1 instead of the targets' -O3: a third less compile time
                 f"-DCMAKE_CXX_COMPILER_LAUNCHER={os.path.join(REPO, 'fuzz', 'cxx_o1.sh')}",
                 f"-DPython_EXECUTABLE={sys.executable}",
                 f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
                 f"-DCMAKE_CXX_FLAGS={SAN_FLAGS}",
                 f"-DCMAKE_SHARED_LINKER_FLAGS={SAN_FLAGS}",
                 f"-DCMAKE_MODULE_LINKER_FLAGS={SAN_FLAGS}"]
    stamp = os.path.join(build_dir, "hardening-configure.txt")
    wanted = "\n".join(configure)
    if not os.path.exists(stamp) or open(stamp).read() != wanted:
        if os.path.exists(stamp):
            shutil.rmtree(build_dir)  # ours, configured differently: start clean
        elif os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
            raise RuntimeError(f"{build_dir} holds a CMake build that fuzz/asan_build.py did not "
                               "configure; give the sanitizer build a directory of its own")
        _run(configure, log)
        with open(stamp, "w") as fh:
            fh.write(wanted)
    targets = ["_cpu"]
    if os.path.isdir(os.path.join(REPO, "metal", "shim")):
        targets.append("_metal_shim")
    _run(["cmake", "--build", build_dir, "--target", *targets, "-j", str(jobs)], log)
    found = {}
    for t in targets:
        hits = glob.glob(os.path.join(build_dir, "**", f"{t}.*.so"), recursive=True) + \
            glob.glob(os.path.join(build_dir, "**", f"{t}.so"), recursive=True)
        if not hits:
            raise RuntimeError(f"built {t} but found no {t}*.so under {build_dir}")
        found[t] = max(hits, key=os.path.getmtime)
    return found


def make_package(modules: dict, root: str) -> str:
    """Copy jax_binconv's Python sources and the sanitized modules under root."""
    pkg = os.path.join(root, "jax_binconv")
    if os.path.exists(pkg):
        shutil.rmtree(pkg)
    shutil.copytree(os.path.join(REPO, "jax_binconv"), pkg,
                    ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.metallib"))
    for so in modules.values():
        shutil.copy2(so, pkg)
    isolate_package_root(root)
    return root


# An editable install (pip install -e, as the README and CI use) puts a
# finder at the front of sys.meta_path that maps `jax_binconv` to the
# source tree and the regular build, whatever PYTHONPATH says. Processes
# that must import a private copy drop that finder at start-up: Python runs
# the first `sitecustomize` on sys.path after site-packages' .pth files.
_SITECUSTOMIZE = """\
import sys
sys.meta_path[:] = [f for f in sys.meta_path
                    if not ("ScikitBuild" in type(f).__name__
                            and "jax_binconv" in repr(getattr(f, "known_source_files", "")))]
"""


def isolate_package_root(root: str) -> None:
    """Make a PYTHONPATH entry holding a private jax_binconv win over an editable install."""
    with open(os.path.join(root, "sitecustomize.py"), "w") as f:
        f.write(_SITECUSTOMIZE)


@functools.lru_cache(None)
def sanitized_package() -> str:
    """Build (incrementally) and lay out the sanitized package once per process."""
    import tempfile

    return make_package(build(), tempfile.mkdtemp(prefix="jax_binconv_asan_"))


def sanitizer_env(pkg_root: str, base=None) -> dict:
    env = dict(os.environ if base is None else base)
    env["LD_PRELOAD"] = " ".join(runtime_libs())
    env["ASAN_OPTIONS"] = ASAN_OPTIONS
    env["UBSAN_OPTIONS"] = UBSAN_OPTIONS
    env["PYTHONPATH"] = os.pathsep.join([pkg_root, os.path.join(REPO, "fuzz")])
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)
    return env


def sanitizer_report(text: str) -> str | None:
    """The first sanitizer report in a process's output, or None."""
    for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                   "AddressSanitizer: CHECK failed", "SUMMARY: UndefinedBehaviorSanitizer"):
        i = text.find(marker)
        if i >= 0:
            return text[max(0, i - 200):i + 4000]
    return None


if __name__ == "__main__":
    bdir = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_BUILD_DIR
    mods = build(bdir)
    root = make_package(mods, os.path.join(bdir, "pkg"))
    env = sanitizer_env(root, base={})
    for k in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS", "PYTHONPATH", "JAX_PLATFORMS"):
        print(f"export {k}='{env[k]}'")
