#!/usr/bin/env bash
# Same-machine A/B of whole source trees (e.g. an older commit against the
# working tree), for changes that no run-time knob can switch off.
#
#   here:    mkdir -p build/ab/old && git archive <rev> | tar -x -C build/ab/old
#   device:  bash cpp/cuda/tools/ab_trees.sh old [more names under build/ab]
#            (run's carry: ["build/ab"]; AB_BENCH: gpu.py's arguments;
#            ROUNDS: rounds of runs, default 2, the trees' order reversed
#            in every second round; AB_REUSE=1: a warm machine's earlier
#            builds, rebuilt only where changed; AB_TAG: a suffix for
#            this call's result files)
#
# Each tree (the working tree is "cur") is built with CMake (sm_90a only:
# the production path on an H100; "90" would leave out the wgmma kernel;
# AB_ARCHS_<name>=... for another list) into
# /tmp/pkg_<name>/jax_binconv, then benchmarks/gpu.py runs for each in turn,
# its package from PYTHONPATH. An editable install of jax_binconv would
# shadow PYTHONPATH (its import hook comes first), so it is removed.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
root=$(pwd)
pip uninstall -y jax_binconv >/dev/null 2>&1
sp=$(python3 -c "import site; print(site.getsitepackages()[0])")
rm -f "$sp"/*jax_binconv*.pth "$sp"/_jax_binconv_editable*.py
# $1 name, $2 source dir, $3 targets; AB_ARCHS_<name>: its CUDA archs
# (default 90a-real). With AB_REUSE=1 a build dir already configured (a warm
# machine's earlier call) is only rebuilt, where its sources changed.
bld() {
  local av="AB_ARCHS_$1"
  if [ "${AB_REUSE:-0}" != 1 ] || [ ! -f /tmp/b_$1/CMakeCache.txt ]; then
    cmake -S "$2" -B /tmp/b_$1 -G Ninja -DCMAKE_BUILD_TYPE=Release -DJAX_BINCONV_CUDA=ON \
      -DJAX_BINCONV_CUDA_ARCHS="${!av:-90a-real}" -DJAX_BINCONV_METAL_SHIM=OFF -DPython_EXECUTABLE="$(command -v python3)" \
      -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >/tmp/b_$1.log 2>&1 || { echo "configure $1 failed"; tail -20 /tmp/b_$1.log; return; }
  fi
  cmake --build /tmp/b_$1 -j8 --target $3 >>/tmp/b_$1.log 2>&1 || { echo "build $1 failed"; tail -20 /tmp/b_$1.log; }
}
bld cur "$root" "_cuda _cpu" &
for v in "$@"; do bld "$v" "$root/build/ab/$v" _cuda & done
wait
for v in cur "$@"; do
  src=$root; [ "$v" != cur ] && src=$root/build/ab/$v
  mkdir -p /tmp/pkg_$v && cp -r "$src/jax_binconv" /tmp/pkg_$v/ &&
    cp /tmp/b_$v/cpp/cuda/_cuda*.so /tmp/b_cur/cpp/cpu/_cpu*.so /tmp/pkg_$v/jax_binconv/
  # (from /tmp: the repository root's source package would come first)
  (cd /tmp && PYTHONPATH=/tmp/pkg_$v python3 -c "import jax_binconv as j, jax_binconv._cuda as c, os; print('$v', os.path.dirname(j.__file__), 'wgmma', c.wgmma_available())" 2>&1 | tail -1)
done
export XLA_PYTHON_CLIENT_PREALLOCATE=false
# The trees' order turns each round (the first: cur first, the second: last,
# ...): in S25-2, with cur always first, rows the trees share ran 7-50%
# slower at N = 1 in cur. Files: ab_<tree>_<round>[_<AB_TAG>].txt (AB_TAG
# keeps a second call on a warm machine from overwriting the first's).
trees=(cur "$@")
for r in $(seq "${ROUNDS:-2}"); do
  order=("${trees[@]}")
  if [ $((r % 2)) -eq 0 ]; then order=(); for ((i = ${#trees[@]} - 1; i >= 0; i--)); do order+=("${trees[$i]}"); done; fi
  for v in "${order[@]}"; do
    f="$OUT/ab_${v}_$r${AB_TAG:+_$AB_TAG}.txt"
    PYTHONPATH=/tmp/pkg_$v timeout "${AB_T:-150}" python3 benchmarks/gpu.py \
      ${AB_BENCH:---layers L2,L3,L4,L7 --batches 1,256 --reps 10} >"$f" 2>&1
    echo "== $v round $r"
    grep -E "^L[0-9]" "$f" | awk '{printf "%s/%s/%s %s  ", $1, $2, $3, $4} END {print ""}'
  done
done
