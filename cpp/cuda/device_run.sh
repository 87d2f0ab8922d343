#!/usr/bin/env bash
# One device-machine session: build, then the stages named in $@ (smoke,
# test, sanitize, bench). Logs go to $OUT (the device tool brings them back).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.."
t0=$SECONDS
stamp() { echo "=== [$((SECONDS - t0)) s] $*"; }

stamp "device"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import jax; print('jax', jax.__version__, jax.devices())" 2>&1 | tail -1 | tee -a "$OUT/device.txt"

stamp "build"
# A warm machine keeps the editable install's CMake cache (build/{wheel_tag}):
# a timeline build's -DCMAKE_CUDA_FLAGS=-DJAX_BINCONV_TIMELINE would survive
# into the next plain run (S22-8's table ran so). Without CMAKE_ARGS, reset it.
export CMAKE_ARGS=${CMAKE_ARGS:--DCMAKE_CUDA_FLAGS=}
echo "CMAKE_ARGS=$CMAKE_ARGS" | tee -a "$OUT/device.txt"
cmake_build() {
  cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DJAX_BINCONV_CUDA=ON \
    -DJAX_BINCONV_METAL_SHIM=OFF -DPython_EXECUTABLE="$(command -v python3)" \
    -Dpybind11_DIR="$(python3 -m pybind11 --cmakedir)" >>"$OUT/build.log" 2>&1 &&
    cmake --build build/gpu -j16 >>"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  cp build/gpu/cpp/cuda/_cuda*.so build/gpu/cpp/cpu/_cpu*.so jax_binconv/
}
if JAX_BINCONV_CUDA=ON CMAKE_BUILD_PARALLEL_LEVEL=16 python3 -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1; then
  echo "pip install -e . OK"
else
  echo "pip install failed:"; tail -30 "$OUT/build.log"
fi
if ! python3 -c "import jax_binconv._cuda" 2>>"$OUT/build.log"; then
  echo "jax_binconv._cuda not importable from the tree after pip; building with CMake"
  cmake_build
fi
# (C75xx: ptxas serialized a kernel's wgmmas, an info line only: C7515,
# S23-8; C7511, "insufficient register resources", S24-5. C7519, an
# injected warpgroup.arrive, is normal here.)
grep -iE "warning|spill|C75[0-9][0-9]" "$OUT/build.log" | grep -v C7519 | grep -i cuda | head -20
python3 -c "import jax_binconv as jb; print('available:', sorted(jb.lowering.available), jb.lowering.load_errors)"

# compute-sanitizer, one process per "tool:pytest -k selection" line on stdin
# (long runs of a whole selection crashed inside the sanitizer at random
# points; short ones are reliable). $1: kernel-name substring, $2: timeout
# per selection (s), $3: name of the combined log in $OUT.
san_list() {
  export XLA_PYTHON_CLIENT_ALLOCATOR=platform
  local i=0 line tool k
  while IFS= read -r line; do
    tool=${line%%:*}; k=${line#*:}; i=$((i + 1))
    timeout "$2" compute-sanitizer --tool "$tool" --kernel-name "kns=$1" --print-limit 20 \
      python3 -m pytest tests/test_gpu.py -q -p no:xdist -k "$k" >"$OUT/san_$i.log" 2>&1
    echo "[$tool] $k: rc=$? $(grep -E 'passed|failed' "$OUT/san_$i.log" | tail -1) | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/san_$i.log" | tail -1)"
  done
  cat "$OUT"/san_*.log > "$OUT/$3.log"; rm -f "$OUT"/san_*.log
  unset XLA_PYTHON_CLIENT_ALLOCATOR
}

export XLA_PYTHON_CLIENT_PREALLOCATE=false
for stage in "$@"; do
  case "$stage" in
    smoke)
      stamp smoke
      timeout 120 python3 -m pytest tests/test_gpu.py -q -x -k "lowering or big_layer or test_channels" 2>&1 | tail -30
      ;;
    fast)
      stamp fast
      timeout 240 python3 -m pytest tests/test_gpu.py -q -n 8 -k "fast_kernel or set_kernel" >"$OUT/fast.log" 2>&1
      echo "pytest rc=$?"; grep -E "passed|failed|error" "$OUT/fast.log" | tail -3
      grep -E "^(FAILED|ERROR)" "$OUT/fast.log" | head -20
      ;;
    fuzz)
      # tests/test_gpu_fuzz.py: its default draws (and the check that they
      # reached every kernel), and beside it FUZZ_EXAMPLES draws of seed
      # FUZZ_SEED on 6 xdist workers (CPU-bound: the reference and the
      # compiles), on the one GPU.
      stamp fuzz
      export JAX_BINCONV_GPU_FUZZ_VERBOSE=1
      timeout ${FUZZ_TIMEOUT:-420} python3 -m pytest tests/test_gpu_fuzz.py -q -s -p no:xdist \
        >"$OUT/fuzz_0.log" 2>&1 &
      JAX_BINCONV_GPU_FUZZ_SEED=${FUZZ_SEED:-1} JAX_BINCONV_GPU_FUZZ_EXAMPLES=${FUZZ_EXAMPLES:-400} \
        timeout ${FUZZ_TIMEOUT:-420} python3 -m pytest tests/test_gpu_fuzz.py -q -n 6 -k random \
        >"$OUT/fuzz_1.log" 2>&1 &
      wait
      for f in "$OUT"/fuzz_*.log; do
        echo "$(basename "$f"): $(grep -E 'passed|failed' "$f" | tail -1)"
        grep -E "kernels run|^(FAILED|ERROR)|Error" "$f" | head -12
      done
      unset JAX_BINCONV_GPU_FUZZ_VERBOSE
      ;;
    sanfuzz)
      # compute-sanitizer (memcheck, racecheck) on our kernels over fuzz
      # draws: SANFUZZ_EXAMPLES draws of seeds SANFUZZ_SEED0 (3).. in parallel processes,
      # two per tool.
      stamp sanfuzz
      export XLA_PYTHON_CLIENT_ALLOCATOR=platform
      i=0
      for tool in memcheck memcheck racecheck racecheck; do
        i=$((i + 1))
        JAX_BINCONV_GPU_FUZZ_SEED=$((i + ${SANFUZZ_SEED0:-3} - 1)) JAX_BINCONV_GPU_FUZZ_EXAMPLES=${SANFUZZ_EXAMPLES:-12} \
          timeout ${SANFUZZ_TIMEOUT:-400} compute-sanitizer --tool $tool --kernel-name kns=binconv \
          --print-limit 20 python3 -m pytest tests/test_gpu_fuzz.py -q -p no:xdist -k random \
          >"$OUT/sanfuzz_$i.log" 2>&1 &
      done
      wait
      for i in 1 2 3 4; do
        echo "sanfuzz_$i: $(grep -E 'passed|failed' "$OUT/sanfuzz_$i.log" | tail -1) | $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanfuzz_$i.log" | tail -1)"
      done
      unset XLA_PYTHON_CLIENT_ALLOCATOR
      ;;
    test)
      stamp test
      timeout ${TEST_TIMEOUT:-300} python3 -m pytest tests/test_gpu.py -q -n 8 -rs --timeout 240 \
        --junitxml="$OUT/junit.xml" >"$OUT/test.log" 2>&1
      echo "pytest rc=$?"; grep -E "passed|failed|error" "$OUT/test.log" | tail -3
      grep -E "^(FAILED|ERROR)" "$OUT/test.log" | head -40
      ;;
    sanitize)
      sel=${SAN_SELECT:-"big_layer or packed_in_and_out and 64-128-2 or test_groups and 2-66 or pad_values and 256 or lowering or tiny or trailing or large_k"}
      for tool in memcheck racecheck; do
        for alloc in platform default; do
          stamp "sanitize $tool (XLA allocator: $alloc)"
          if [ $alloc = platform ]; then export XLA_PYTHON_CLIENT_ALLOCATOR=platform; else unset XLA_PYTHON_CLIENT_ALLOCATOR; fi
          tsel=$sel; [ $tool = racecheck ] && tsel=${RACE_SELECT:-$sel}
          timeout ${SAN_TIMEOUT:-200} compute-sanitizer --tool $tool \
            --kernel-name kns=binconv --print-limit 20 \
            python3 -m pytest tests/test_gpu.py -q -p no:xdist -k "$tsel" >"$OUT/sanitize_${tool}_$alloc.log" 2>&1
          rc=$?
          echo "$tool rc=$rc"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed|Invalid|Race|hazard" "$OUT/sanitize_${tool}_$alloc.log" | tail -8
          [ $rc -ne 139 ] && break
        done
      done
      unset XLA_PYTHON_CLIENT_ALLOCATOR
      ;;
    sanitize1)
      # The general kernels (see san_list).
      san_list binconv 90 sanitize_all <<'LIST'
memcheck:big_layer
memcheck:packed_in_and_out and 64-128-2
memcheck:test_groups and 2-66
memcheck:pad_values and 256 and SAME
memcheck:tiny or trailing or lowering
memcheck:large_k
memcheck:packed_output_edges and relu6 or nonfinite
memcheck:test_epilogue and tanh or test_channels and 33
racecheck:big_layer
racecheck:tiny or test_groups and 2-66 and xnor
racecheck:packed_output_edges and sign
racecheck:test_epilogue and tanh and binary
LIST
      ;;
    sanfast)
      # compute-sanitizer on the fast kernels (fast_conv_kernel, fast_tables_kernel), one process per selection.
      san_list fast_ 120 sanitize_fast <<'LIST'
memcheck:fast_kernel_packed_io and auto and (0-xnor or 2-and)
memcheck:fast_kernel_packed_io and auto and (4-xnor or 7-and)
memcheck:fast_kernel_float_io and auto and (1-xnor or 3-and or 5-xnor or 8-and)
memcheck:fast_kernel_persistent
racecheck:fast_kernel_packed_io and auto and (1-xnor or 6-and)
racecheck:fast_kernel_float_io and auto and (2-xnor or 8-and)
racecheck:fast_kernel_float_io and auto-cp.async and (4-xnor or 12-and)
racecheck:fast_kernel_packed_io and auto and (4-and or 12-xnor)
memcheck:fast_kernel_packed_io and auto and (12-xnor or 13-and or 14-xnor)
memcheck:fast_kernel_packed_io and auto and (22-xnor or 23-and or 24-xnor)
memcheck:fast_kernel_float_io and auto and (22-and or 23-xnor or 24-and)
racecheck:fast_kernel_packed_io and auto and (22-and or 23-xnor)
LIST
      ;;
    santab)
      # compute-sanitizer on fast_tables_kernel alone (the convolution runs natively): its
      # forms (wide, narrow with the packing in the same launch, C = 64's half-word loads).
      san_list fast_tables 120 sanitize_tables <<'LIST'
memcheck:fast_kernel_packed_io and auto and (0-xnor or 2-and or 15-xnor or 16-and)
memcheck:fast_kernel_float_io and auto and (1-xnor or 3-and or 17-xnor or 18-and)
memcheck:fast_kernel_packed_io and wgmma and (0-xnor or 2-and or 4-xnor or 7-and)
racecheck:fast_kernel_packed_io and auto and (1-xnor or 6-and or 15-and)
racecheck:fast_kernel_float_io and auto and (2-xnor or 8-and or 16-xnor)
racecheck:fast_kernel_packed_io and wgmma and (1-xnor or 3-and)
LIST
      ;;
    sanwg)
      # compute-sanitizer on the wgmma kernel (set_fast_wgmma; the tests' "wgmma" policy, A
      # from shared memory where it runs, and "wgmma-rs", A from registers: "wgmma" matches
      # both; the three selections after them only the first; the last two: the
      # weight-wait test, whose knob poisons the weights and issues their copies late).
      san_list fast_ 150 sanitize_wg <<'LIST'
memcheck:fast_kernel_packed_io and wgmma and (0-xnor or 2-and or 4-xnor or 7-and)
memcheck:fast_kernel_float_io and wgmma and (1-xnor or 3-and or 22-xnor or 24-and)
memcheck:fast_kernel_packed_io and wgmma and (11-xnor or 13-and or 14-xnor or 23-and)
racecheck:fast_kernel_packed_io and wgmma and (1-xnor or 6-and)
racecheck:fast_kernel_float_io and wgmma and (2-xnor or 8-and)
memcheck:fast_kernel_packed_io and wgmma and not rs and (5-xnor or 9-and or 12-xnor)
memcheck:fast_kernel_float_io and wgmma and not rs and (9-xnor or 12-and or 8-xnor)
racecheck:fast_kernel_packed_io and wgmma and not rs and (0-and or 12-xnor)
memcheck:waits_for_weights and (c128 or images)
racecheck:waits_for_weights and c512
LIST
      ;;
    sanauto)
      # compute-sanitizer on the default mode's kernel choice at few tiles
      # (test_fast_wgmma_auto_mode: the wgmma shared-memory form for packed x
      # at N = 1, the mma.sync kernel beside it).
      san_list fast_ 200 sanitize_auto <<'LIST'
memcheck:test_fast_wgmma_auto_mode
racecheck:test_fast_wgmma_auto_mode
LIST
      ;;
    sansplit)
      # compute-sanitizer on the wgmma kernel's split epilogue (one tile a
      # block, float output: warpgroup 1 runs the epilogue of channels
      # 64-127 from a handover in shared memory), on and off.
      san_list fast_ 240 sanitize_split <<'LIST'
memcheck:test_fast_wgmma_split_epilogue
racecheck:test_fast_wgmma_split_epilogue and True
LIST
      ;;
    sanhalf)
      # compute-sanitizer on the shared-memory form's tiles whose rows 64-127
      # hold no pixel (FastArgs::wg_skip_half), on and off.
      san_list fast_ 300 sanitize_half <<'LIST'
memcheck:test_fast_wgmma_skip_half
racecheck:test_fast_wgmma_skip_half and True
memcheck:test_fast_wgmma_half_tiles
racecheck:test_fast_wgmma_half_tiles and True
LIST
      ;;
    sanc64)
      # compute-sanitizer on the fast kernels' C = 64 cases (FAST_CASES 15-21),
      # and C >= 128 cases with warps past O (4-6, 10).
      san_list fast_ 120 sanitize_c64 <<'LIST'
memcheck:fast_kernel_packed_io and auto and (15-xnor or 16-and or 17-xnor or 21-and)
memcheck:fast_kernel_float_io and auto and (18-xnor or 19-and or 20-xnor or 16-xnor)
racecheck:fast_kernel_packed_io and auto and (15-and or 19-xnor)
racecheck:fast_kernel_float_io and auto and (17-and or 20-xnor)
memcheck:fast_kernel_packed_io and auto and (4-xnor or 5-and or 6-xnor)
racecheck:fast_kernel_float_io and auto and (5-xnor or 10-and)
LIST
      ;;
    sanprep)
      # compute-sanitizer on the x packing (prep_kernel, and prep_x in fast_tables_kernel).
      san_list prep 150 sanitize_prep <<'LIST'
memcheck:test_beta_scaling and xnor
memcheck:fast_kernel_float_io and auto and (15-xnor or 16-and or 17-xnor or 0-and or 1-xnor)
racecheck:test_beta_scaling and not xnor
LIST
      san_list fast_tables 150 sanitize_prep2 <<'LIST'
memcheck:fast_kernel_float_io and auto and (15-xnor or 16-and or 17-xnor or 0-and or 1-xnor)
LIST
      ;;
    prof)
      # ncu of the fast kernel: one launch per $PROF_LAYERS entry (layer:N:io),
      # summary sections as text, SASS source counters (stall samples) as CSV;
      # PROF_EXTRA: more ncu options (e.g. "--section MemoryWorkloadAnalysis_Tables").
      for spec in ${PROF_LAYERS:-L3:256:packed}; do
        IFS=: read -r pl pn pio ppol <<<"$spec"
        ppol=${ppol:-auto}
        stamp "prof $pl $pn $pio $ppol"
        rep="$OUT/prof_${pl}_${pn}_${pio}_${ppol}"
        timeout 240 ncu --kernel-name regex:${PROF_KERNEL:-fast_conv} --launch-skip 1 --launch-count 1 \
          --section SpeedOfLight --section LaunchStats --section Occupancy --section SchedulerStats \
          --section WarpStateStats --section ComputeWorkloadAnalysis --section SourceCounters ${PROF_EXTRA:-} \
          --import-source no -f -o "$rep" python3 benchmarks/gpu_profile.py "$pl" "$pn" "$ppol" "$pio" >"$rep.run.log" 2>&1
        echo "ncu rc=$?"; tail -2 "$rep.run.log"
        ncu --import "$rep.ncu-rep" --page details >"$rep.txt" 2>&1
        grep -E "Duration|Executed Ipc A|Registers Per|Achieved Occupancy|No Eligible|Issued Warp|Warp Cycles Per Issued|Stall" "$rep.txt" | head -30
        # stall reasons (cycles per issued instruction), largest first, from the raw
        # metrics (kept in $OUT as CSV only with PROF_EXTRA: the device tool
        # returns a limited number of files)
        ncu --import "$rep.ncu-rep" --page raw --csv >"$rep.raw.csv" 2>/dev/null
        python3 - "$rep.raw.csv" <<'PY'
import csv, sys
r = list(csv.reader(open(sys.argv[1])))
if len(r) > 2:
    v = [(h, x) for h, x in zip(r[0], r[2]) if h.startswith("smsp__average_warps_issue_stalled_") and h.endswith("_per_issue_active.ratio")]
    v = sorted(((float(x.replace(",", "")), h[34:-23]) for h, x in v if x.replace(",", "").replace(".", "").isdigit()), reverse=True)
    print("  stalls/issue:", ", ".join(f"{n} {x:.2f}" for x, n in v[:10]))
PY
        [ -z "${PROF_EXTRA:-}" ] && rm -f "$rep.raw.csv"
        ncu --import "$rep.ncu-rep" --page source --print-source sass --csv >"$rep.sass.csv" 2>&1
        rm -f "$rep.ncu-rep"
      done
      ;;
    ktimes)
      # Every kernel of a few calls under ncu (duration, DRAM bytes): which
      # kernels a call runs and what each costs. $KT_LAYERS: layer:N:io list;
      # KT_CACHE=none keeps the caches warm between kernels (ncu flushes them by default).
      for spec in ${KT_LAYERS:-L3:256:float}; do
        IFS=: read -r pl pn pio <<<"$spec"
        stamp "kernel times $pl $pn $pio"
        timeout 120 ncu --cache-control ${KT_CACHE:-all} --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
          --csv --page raw python3 benchmarks/gpu_profile.py "$pl" "$pn" auto "$pio" 2 >"$OUT/kt_${pl}_${pn}_${pio}.csv" 2>&1
        python3 - "$OUT/kt_${pl}_${pn}_${pio}.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 5]
if not rows:
    print(open(sys.argv[1]).read()[-2000:]); sys.exit()
hdr = rows[0]; ki = hdr.index("Kernel Name")
cols = [hdr.index(c) for c in ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum")]
for r in rows[2:]:
    print(f"  {r[ki][:60]:60} " + " ".join(f"{r[c]:>12}" for c in cols))
PY
      done
      ;;
    ab)
      stamp "A/B of fast-kernel variants: ${AB_ARGS:-}"
      timeout ${AB_TIMEOUT:-300} python3 benchmarks/gpu_ab.py ${AB_ARGS:-} 2>&1 | tee "$OUT/ab.log" | tail -40
      ;;
    bench)
      stamp bench
      timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/gpu.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60
      ;;
    benchnocb)
      # The same with XLA's command buffers (CUDA graphs) off, for ours and
      # the baselines alike.
      stamp "bench, command buffers off"
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" timeout ${BENCH_TIMEOUT:-300} \
        python3 benchmarks/gpu.py ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_nocb.log" | tail -40
      ;;
    others)
      # The suites besides test_gpu.py, with the GPU as JAX's default device
      # (their CPU-kernel tests must pin the CPU device); no -x: every failure.
      stamp "other test files on the GPU machine"
      timeout ${OTHERS_TIMEOUT:-300} python3 -m pytest -q -rf --tb=line -n 8 tests/test_hardening.py \
        tests/test_conv.py tests/test_grad.py tests/test_export.py tests/test_errors.py \
        tests/test_cuda_slots.py >"$OUT/others.log" 2>&1
      echo "pytest rc=$?"; grep -E "passed|failed|error" "$OUT/others.log" | tail -3
      grep -E "^(FAILED|ERROR)|crashed" "$OUT/others.log" | head -20
      ;;
    pytest)
      # tests/ files and a -k selection: PYTEST_FILES, PYTEST_K
      stamp "pytest ${PYTEST_FILES:-tests/test_gpu.py} -k ${PYTEST_K:-}"
      timeout 300 python3 -m pytest ${PYTEST_FILES:-tests/test_gpu.py} -q -x -rs -k "${PYTEST_K:-}" >"$OUT/pytest.log" 2>&1
      echo "pytest rc=$?"; grep -E "passed|failed|error" "$OUT/pytest.log" | tail -3
      grep -E "^(FAILED|ERROR)|Error|error:" "$OUT/pytest.log" | head -20
      ;;
    wsprobe)
      # cpp/cuda/tools/ws_probe.cu: today's two-warpgroup tile loop against
      # other block shapes and epilogue forms, synthetic tiles, ~15 s
      # (NOTES-gpu.md S26-1..S26-7). WSPROBE_ARGS: "ws" or "all" for more forms.
      stamp wsprobe
      nvcc -std=c++17 -gencode arch=compute_90a,code=sm_90a -O3 -o /tmp/ws_probe \
        cpp/cuda/tools/ws_probe.cu >"$OUT/wsprobe_build.log" 2>&1 || { tail -20 "$OUT/wsprobe_build.log"; continue; }
      timeout 120 /tmp/ws_probe ${WSPROBE_ARGS:-} 2>&1 | tee "$OUT/wsprobe.txt"
      ;;
  esac
done
stamp done
