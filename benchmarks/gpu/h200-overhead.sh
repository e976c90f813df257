#!/usr/bin/env bash
# Issue 15's engine-level figures on the lent nvidia-h200, in two calls run back to back on one warm machine:
#   build    the hooked CUDA engine and its --no-hooks twin for sm_90 (in parallel), the synthetic 8B model,
#            and `gpuscope bench ring` on the machine's own CPU
#   measure  `gpuscope bench overhead` (recording / hooks without a ring / the unpatched twin, interleaved)
# Carried with the call (not in git): .gpu/llama-src.tar.xz and .whl/ as h200-prelude.sh says.
set -uo pipefail
phase=${1:?build or measure}
export PYTHONPATH=$PWD:/tmp/site GPUSCOPE_CACHE=/root/gscache PYTHONUNBUFFERED=1
gs() { python3 -m gpuscope.cli "$@"; }
model=/root/models/8b-f16.gguf
case $phase in
build)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
    lscpu | grep -E 'Model name|^CPU\(s\)|Flags' | sed 's/Flags:.*\(constant_tsc\).*\(nonstop_tsc\).*/Flags: ... \1 ... \2 .../' \
        > "$OUT/cpu.txt"
    mkdir -p /root/src /root/models && tar xJf .gpu/llama-src.tar.xz -C /root/src
    src=/root/src/llama.cpp-0c1e57098
    setsid nohup python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src $src -j 9 \
        > /root/build-cuda.log 2>&1 < /dev/null &
    setsid nohup python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src $src --no-hooks -j 6 \
        > /root/build-nohooks.log 2>&1 < /dev/null &
    for run in 1 2 3; do gs bench ring --json > "$OUT/bench-ring-$run.json" 2>&1; done
    gs model synth --shape 8b --out $model 2>&1 | tail -1
    while pgrep -f "engine build" > /dev/null; do sleep 5; done
    tail -2 /root/build-cuda.log /root/build-nohooks.log | tee "$OUT/builds.txt"
    ;;
measure)
    while pgrep -f "engine build" > /dev/null; do sleep 5; done  # a build phase cut short by its time limit
    gs bench overhead --engine cuda --model $model --depth 0 8192 --rounds 3 --n-gen 64 --json \
        -- -ngl 99 -fa 1 2>&1 | tee "$OUT/overhead.txt"
    ;;
esac
