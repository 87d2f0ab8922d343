"""Compile the CUDA kernels for sm_90a here (no GPU needed, ~45 s) and report,
per fast_conv_kernel<EPI, HALF, WG> instantiation, its registers, spills
and every ptxas C75xx note other than C7519 (an injected warpgroup.arrive,
normal here). C7511 / C7515 mean ptxas serialized that kernel's wgmmas:
sessions 23 and 24 each lost a GPU run to one (NOTES-gpu.md). Exit status 1
if any kernel has such a note.

    python3 cpp/cuda/tools/ptxas_check.py [--log FILE] [--keep-log FILE]

--log reads an existing `nvcc -Xptxas=-v` log instead of compiling.
EPI: 0 thresholds, 1 float, 2 packed through the float epilogue; WG: 0
mma.sync, 1 wgmma with A from registers, 2 from shared memory.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def compile_log():
    with tempfile.TemporaryDirectory() as d:
        cmd = ["nvcc", "-std=c++17", "-gencode", "arch=compute_90a,code=sm_90a", "-O3",
               "--expt-relaxed-constexpr", "-Xptxas=-v", "-DJAX_BINCONV_HAVE_SM90A",
               "-I", os.path.join(ROOT, "cpp/common"), "-I", os.path.join(ROOT, "cpp/cuda"),
               "-c", "-o", os.path.join(d, "k.o"),
               os.path.join(ROOT, "cpp/cuda/binconv_kernels.cu")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stdout + r.stderr)
        return r.stdout + r.stderr


def kernel_id(name):
    m = re.search(r"fast_conv_kernelILi(\d)ELb(\d)ELi(\d)", name)
    return "EPI %s HALF %s WG %s" % m.groups() if m else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log")
    ap.add_argument("--keep-log")
    args = ap.parse_args()
    text = open(args.log).read() if args.log else compile_log()
    if args.keep_log:
        with open(args.keep_log, "w") as f:
            f.write(text)
    rows, notes, cur = {}, {}, None
    for line in text.splitlines():
        m = re.search(r"\((C75\d\d)\).*function '(\S+?)'", line)
        if m and m.group(1) != "C7519":
            k = kernel_id(m.group(2))
            if k:
                notes.setdefault(k, set()).add(m.group(1))
            continue
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            cur = kernel_id(m.group(1))
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores", line)
        if m:
            rows.setdefault(cur, {})["spill"] = int(m.group(1))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            rows.setdefault(cur, {})["regs"] = int(m.group(1))
            cur = None
    for k in sorted(rows):
        r = rows[k]
        print(f"{k}: {r.get('regs', '?')} registers, {r.get('spill', 0)} bytes spilled"
              + (f", SERIALIZED ({', '.join(sorted(notes[k]))})" if k in notes else ""))
    if notes:
        sys.exit(1)


if __name__ == "__main__":
    main()
