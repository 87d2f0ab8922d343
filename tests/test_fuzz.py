"""Bounded fuzzing of the C++ FFI handlers (issue 8, item 2) with
fuzz/ffi_fuzz.py: hostile shapes, dtypes, buffer sizes and attributes go
straight into ``jax.ffi.ffi_call``; a crash, a sanitizer report, a valid call
that fails or disagrees with the oracle, or an invalid call that returns a
result fails the test.

* atheris, coverage-guided, on the normal build (~35 s);
* the corpus plus random inputs under ASan/UBSan (~25 s). gcc's libasan
  hijacks libFuzzer's coverage symbols, so atheris gets no coverage feedback
  when it is preloaded: under ASan the harness draws random inputs instead.

JAX_BINCONV_FUZZ_SECONDS scales both (default 60 in total). Longer runs by
hand: docs/hardening.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(REPO, "fuzz")
sys.path.insert(0, FUZZ)
import asan_build  # noqa: E402

SECONDS = float(os.environ.get("JAX_BINCONV_FUZZ_SECONDS", "60"))
# Known, still-open findings the bounded runs steer around so that they keep
# finding new ones (names in fuzz/ffi_fuzz.py, _KNOWN); each has a failing
# regression test (tests/test_hardening.py) until its owner fixes it. Remove an
# entry when that test passes. Every finding so far is fixed: nothing to steer.
KNOWN_OPEN = ""


def _private_package(tmp_path):
    """A copy of jax_binconv with the built modules: a module replaced in place
    under a running process (a developer re-copying a fresh build) crashes it."""
    import jax_binconv

    src = os.path.dirname(jax_binconv.__file__)
    built = jax_binconv.lowering.available
    if "cpu" not in built:
        pytest.fail(f"jax_binconv._cpu is not built ({jax_binconv.lowering.load_errors}): "
                    "fuzzing would test nothing")
    dst = tmp_path / "pkg"
    shutil.copytree(src, dst / "jax_binconv", ignore=shutil.ignore_patterns("__pycache__"))
    # An editable install keeps the compiled modules outside the source tree.
    for mod in built.values():
        if os.path.dirname(os.path.abspath(mod.__file__)) != os.path.abspath(src):
            shutil.copy2(mod.__file__, dst / "jax_binconv")
    asan_build.isolate_package_root(str(dst))
    return str(dst)


def _check(proc, what):
    out = proc.stdout + proc.stderr
    report = asan_build.sanitizer_report(out)
    assert report is None, f"{what}: sanitizer report:\n{report}"
    assert proc.returncode == 0, (
        f"{what}: exit {proc.returncode}"
        f"{' (signal %d)' % -proc.returncode if proc.returncode < 0 else ''}:\n{out[-6000:]}")
    return out


def test_atheris_coverage_guided(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris, "
                        "the 'fuzz' extra); the ASan run below still fuzzes")
    env = dict(os.environ, PYTHONPATH=_private_package(tmp_path), JAX_PLATFORMS="cpu",
               FFI_FUZZ_KNOWN=KNOWN_OPEN)
    env.pop("XLA_FLAGS", None)
    work = tmp_path / "corpus"
    work.mkdir()
    secs = max(5, int(SECONDS * 0.6))
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", os.path.join(FUZZ, "ffi_fuzz.py"), str(work),
         os.path.join(FUZZ, "corpus"), f"-max_total_time={secs}", "-seed=1", "-timeout=60",
         "-rss_limit_mb=6144", f"-artifact_prefix={tmp_path}/"],
        env=env, capture_output=True, text=True, timeout=secs + 240, cwd=tmp_path)
    out = _check(proc, "atheris")
    assert "Done " in out and " runs in " in out, out[-3000:]
    crashes = [f for f in os.listdir(tmp_path) if f.startswith(("crash-", "oom-", "timeout-"))]
    assert not crashes, crashes


def test_corpus_and_random_inputs_under_asan():
    try:
        asan_build.runtime_libs()
    except asan_build.SanitizerUnavailable as e:
        pytest.skip(f"no sanitizer runtime: {e}")
    env = asan_build.sanitizer_env(asan_build.sanitized_package())
    env["FFI_FUZZ_KNOWN"] = KNOWN_OPEN
    script = os.path.join(FUZZ, "ffi_fuzz.py")
    proc = subprocess.run([sys.executable, "-W", "ignore", script, "--replay",
                           os.path.join(FUZZ, "corpus")],
                          env=env, capture_output=True, text=True, timeout=600)
    out = _check(proc, "corpus replay under ASan")
    assert "replayed" in out
    secs = max(5, int(SECONDS * 0.4))
    env["FFI_FUZZ_SEED"] = "1"
    proc = subprocess.run([sys.executable, "-W", "ignore", script, "--random", str(secs)],
                          env=env, capture_output=True, text=True, timeout=secs + 240)
    out = _check(proc, "random inputs under ASan")
    assert "random inputs in" in out, out[-2000:]


def test_corpus_replay_without_steering():
    """The whole corpus, known findings included, on the normal build: fails
    (exit with a signal or an assertion) while a known finding is open."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("FFI_FUZZ_KNOWN", None)
    import jax_binconv

    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(jax_binconv.__file__))) \
        + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-W", "ignore", os.path.join(FUZZ, "ffi_fuzz.py"),
                           "--replay", os.path.join(FUZZ, "corpus")],
                          env=env, capture_output=True, text=True, timeout=600)
    _check(proc, "corpus replay")
