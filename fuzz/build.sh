#!/usr/bin/env bash
# Build the ASan+UBSan jax_binconv extensions (incremental, -j2) into
# ${1:-build/sanitizers} and print the environment that runs Python on them.
#   eval "$(fuzz/build.sh)"             # then: python fuzz/ffi_fuzz.py --random 600
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 fuzz/asan_build.py "${1:-build/sanitizers}"
