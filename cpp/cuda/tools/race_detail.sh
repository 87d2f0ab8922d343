# racecheck with per-hazard reports on one fast float_io case, and the SASS around the PC
export XLA_PYTHON_CLIENT_ALLOCATOR=platform
timeout 150 compute-sanitizer --tool racecheck --racecheck-report hazard --kernel-name kns=fast_ --print-limit 4 \
  python3 -m pytest tests/test_gpu.py -q -p no:xdist -k "fast_kernel_float_io and auto-cp.async and 2-xnor" > $OUT/race.log 2>&1
echo "race rc=$?"; grep -E "passed|failed|SUMMARY" $OUT/race.log | tail -3
grep -A12 -m3 "Race reported\|Error" $OUT/race.log | head -50
unset XLA_PYTHON_CLIENT_ALLOCATOR
cuobjdump -sass jax_binconv/_cuda*.so > $OUT/all.sass 2>/dev/null
python3 - $OUT/race.log $OUT/all.sass <<'PY'
import re, sys
log = open(sys.argv[1]).read(); sass = open(sys.argv[2]).read().split('\n')
pcs = sorted(set(re.findall(r'(fast_conv_kernel<\(int\)(\d)>)[^+]*\+(0x[0-9a-f]+)', log)), key=str)
for _, epi, pc in pcs[:3]:
    print('== EPI', epi, 'pc', pc)
    inside = False; arch = None
    for i, l in enumerate(sass):
        if 'arch = sm_' in l: arch = l.strip()
        if 'Function :' in l: inside = ('fast_conv_kernelILi%sE' % epi) in l and arch and 'sm_90' in arch
        if inside and re.search(r'/\*%04x\*/' % int(pc, 16), l):
            print('\n'.join(x.split('/* 0x')[0].rstrip() for x in sass[i-40:i+4] if x.strip())); break
PY
rm -f $OUT/all.sass
