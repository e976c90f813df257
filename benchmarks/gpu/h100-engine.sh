#!/usr/bin/env bash
# The GPU figures of issue 3 on the lent H100, in two phases run back to back on one warm machine:
#   build    patched CUDA engine + its unpatched twin (sm_90), synthetic 8B and D=256 models
#   measure  FA route plans (llama-bench recorded), the NONE route and where its op ran, hook overhead
# Expects the pinned source as .gpu/llama-src.tar.xz and the gguf wheel in .whl/ (neither is in git).
set -uo pipefail
phase=${1:?build or measure}
export PYTHONPATH=$PWD:/tmp/site GPUSCOPE_CACHE=/root/gscache PYTHONUNBUFFERED=1
gs() { python3 -m gpuscope.cli "$@"; }
models=/root/models
case $phase in
build)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/gguf*.whl
    mkdir -p /root/src $models && tar xJf .gpu/llama-src.tar.xz -C /root/src
    setsid nohup python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src /root/src -j 10 \
        > /root/build-cuda.log 2>&1 < /dev/null &
    setsid nohup python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src /root/src --no-hooks -j 6 \
        > /root/build-nohooks.log 2>&1 < /dev/null &
    gs model synth --shape 8b --out $models/8b-f16.gguf 2>&1 | tail -1
    gs model synth --shape d256 --out $models/d256-f16.gguf 2>&1 | tail -1
    gs model synth --shape 'tiny,n_embd=640,n_head=4,n_head_kv=1,head_dim=160' --out $models/d160-f16.gguf 2>&1 | tail -1
    while pgrep -f "engine build" > /dev/null; do sleep 10; done
    tail -3 /root/build-cuda.log /root/build-nohooks.log
    ;;
measure)
    while pgrep -f "engine build" > /dev/null; do sleep 10; done  # a build phase cut short by its time limit
    tail -2 /root/build-cuda.log /root/build-nohooks.log
    bin=$(gs engine path cuda | tail -1)
    mkdir -p /root/traces
    run() {  # name, model, llama-bench args...
        local name=$1 model=$2; shift 2
        gs record --out /root/traces/$name.trace -- $bin/llama-bench -m $models/$model -ngl 99 -r 1 "$@" 2>&1 \
            | grep -E '^\| |gpuscope record:' | tail -6
    }
    for kv in "f16 f16" "q8_0 q8_0" "q8_0 f16" "iq4_nl iq4_nl"; do
        set -- $kv
        run 8b-fa1-k$1-v$2 8b-f16.gguf -fa 1 -p 512 -n 16 -ctk $1 -ctv $2
        run d256-fa1-k$1-v$2 d256-f16.gguf -fa 1 -p 512 -n 16 -ctk $1 -ctv $2
    done
    run 8b-fa0 8b-f16.gguf -fa 0 -p 512 -n 16
    run d256-fa0 d256-f16.gguf -fa 0 -p 512 -n 16
    run d160-fa1 d160-f16.gguf -fa 1 -p 512 -n 16
    python3 benchmarks/gpu/fa_routes.py /root/traces/*.trace
    tar czf $OUT/h100-fa-traces.tgz -C /root/traces .
    gs bench overhead --engine cuda --model $models/8b-f16.gguf --depth 0 8192 --rounds 3 --n-gen 64 --json \
        -- -ngl 99 -fa 1 | tee $OUT/h100-overhead.txt
    ;;
esac
