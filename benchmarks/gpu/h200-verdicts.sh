#!/usr/bin/env bash
# Issue 13 on the lent nvidia-h200, in one call: build the hooked CUDA engine for sm_90 while the 8B F16 synthetic
# model is written, then sweep it in-process over the three configurations the issue tried (every layer on the GPU
# with FlashAttention on; FlashAttention off; 24 of 32 layers on the GPU) at depths 0/4096/16384 into one trace
# ($OUT/h200-sweep.trace). The doctor reads it afterwards, here or on the machine that fetched it.
# Expects, carried with the call (none of them in git): the pinned source as .gpu/llama-src.tar.xz (the cached
# engine-src tree without docs/, models/*.gguf and the backends not built, 8 MB), and in .whl/ the wheels the machine
# lacks: gguf, diskcache, plotly, narwhals and llama-cpp-python (`CMAKE_ARGS=-DLLAMA_BUILD=OFF pip wheel --no-deps
# llama-cpp-python==0.3.36`: pure Python).
set -uo pipefail
export PYTHONPATH=$PWD:/tmp/site GPUSCOPE_CACHE=/root/gscache PYTHONUNBUFFERED=1
start=$SECONDS
say() { echo "[$((SECONDS - start))s] $*" | tee -a "$OUT/progress.txt"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
mkdir -p /root/src /root/models && tar xJf .gpu/llama-src.tar.xz -C /root/src
python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src /root/src -j 16 > /root/build.log 2>&1 &
build=$!
python3 -m gpuscope.cli model synth --shape 8b --out /root/models/8b-f16.gguf 2>&1 | tail -1
say "model written"
wait $build; tail -3 /root/build.log; cp /root/build.log "$OUT/build.log"
say "build done"
python3 -m gpuscope.cli sweep --engine cuda --model /root/models/8b-f16.gguf --no-progress \
    -c 'n_gpu_layers=99 flash_attn=on name=all-gpu-fa-on' -c 'n_gpu_layers=99 flash_attn=off name=all-gpu-fa-off' \
    -c 'n_gpu_layers=24 flash_attn=on name=ngl24-fa-on' --depths 0,4096,16384 --steps 32 \
    -o "$OUT/h200-sweep.trace" 2>&1 | tail -20
say "sweep done"
