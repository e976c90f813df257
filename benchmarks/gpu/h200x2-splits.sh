#!/usr/bin/env bash
# Issue 8 on the lent nvidia-h200-x2 (two H200s of one host), in one call: build the hooked CUDA engine for sm_90
# with NCCL and write a synthetic model (8B F16; for `large` the 70B shape in Q4_K_M, 42.5 GB, written directly), then
#   splits  record llama-bench over the split modes at depths up to 32768, one placement problem made on purpose
#           (-nkvo: KV cache on the host while layers run on both GPUs), and one in-process kernel collection over a
#           layer split ($OUT/h200x2-splits.tgz)
#   tensor  the meta-backend hooks on -sm tensor (NCCL all-reduce) and an in-process session on both GPUs
#           ($OUT/h200x2-tensor.tgz)
#   large   the 70B Q4_K_M shape over -sm none, layer 1/1 and 3/1, and tensor at depths up to 32768, then kernels per
#           GPU in-process over a layer split, which also checks FA plans against the kernels they launched
#           ($OUT/h200x2-large.tgz); runs are ordered by priority, a call cut short at 600 s keeps what it made
# The doctor runs here afterwards, on the traces that come back.
# Expects, carried with the call (none of them is in git): the pinned source as .gpu/llama-src.tar.xz (the cached
# engine-src tree without docs/, models/*.gguf and the backends not built, 7 MB), and in .whl/ the wheels the machine
# lacks: gguf, diskcache, plotly, narwhals and llama-cpp-python (`CMAKE_ARGS=-DLLAMA_BUILD=OFF pip wheel --no-deps
# llama-cpp-python==0.3.36`: pure Python).
set -uo pipefail
phase=${1:-splits}
# NVLink multicast stays off (the machine's notes): it can take the host's shared GPUs out of service
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=$PWD:/tmp/site GPUSCOPE_CACHE=/root/gscache PYTHONUNBUFFERED=1
gs() { python3 -m gpuscope.cli "$@"; }
start=$SECONDS
say() { echo "[$((SECONDS - start))s] $*" | tee -a "$OUT/progress.txt"; }

python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
{ nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv; nvidia-smi topo -m; } \
    > "$OUT/gpus.txt" 2>&1
# NCCL from the image's pip package: ggml's FindNCCL wants include/nccl.h and lib/libnccl.so under NCCL_ROOT
header=$(find "$(python3 -c 'import site; print(site.getsitepackages()[0])')" /usr/local/cuda/ -name nccl.h 2>/dev/null | head -1)
if [ -n "$header" ]; then
    nccl=$(dirname "$(dirname "$header")")
    mkdir -p /root/nccl/lib && ln -sfn "$nccl/include" /root/nccl/include
    ln -sf "$(ls "$nccl"/lib/libnccl.so* | head -1)" /root/nccl/lib/libnccl.so
    export NCCL_ROOT=/root/nccl LD_LIBRARY_PATH=$nccl/lib:${LD_LIBRARY_PATH:-}
fi
echo "NCCL: ${header:-not found}" >> "$OUT/gpus.txt"

mkdir -p /root/src /root/models /root/traces && tar xJf .gpu/llama-src.tar.xz -C /root/src
setsid nohup python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src /root/src -j 30 \
    > /root/build.log 2>&1 < /dev/null &
say "build started"
if [ "$phase" = large ]; then model=/root/models/70b-q4_k_m.gguf; shape="70b --type q4_k_m"
else model=/root/models/8b-f16.gguf; shape=8b; fi
gs model synth --shape $shape --out $model 2>&1 | tail -1
say "model written"
while pgrep -f "engine build" > /dev/null; do sleep 3; done
tail -3 /root/build.log; cp /root/build.log "$OUT/build.log"
say "build done"
bin=$(gs engine path cuda | tail -1) || exit 1

run() {  # name, timeout, llama-bench args...
    local name=$1 limit=$2; shift 2
    say "$name"
    timeout "$limit" python3 -m gpuscope.cli record --capacity 4194304 --out /root/traces/$name.trace -- \
        $bin/llama-bench -m $model -ngl 99 -fa 1 -r 1 -p 0 -n 32 "$@" 2>&1 \
        | grep -E '^\| |gpuscope record:|error|failed' | tee -a "$OUT/bench.txt"
    tar czf "$OUT/h200x2-$phase.tgz" -C /root/traces .  # after every run: a call cut short keeps what it made
}
kernels() {  # name, session config: kernels per GPU in-process (torch's profiler around a session on the build)
    say "$1"
    timeout 150 python3 -m gpuscope.cli collect kernels --engine cuda --model $model --config "$2" \
        --depths 0,8192 --steps 8 --out /root/traces/$1.trace 2>&1 | tail -25 | tee -a "$OUT/kernels.txt"
    tar czf "$OUT/h200x2-$phase.tgz" -C /root/traces .
}
deep=0,8192,32768
case $phase in
splits)
    run x2-sm-none 60 -sm none -d $deep
    run x2-sm-layer-ts1-1 60 -sm layer -ts 1/1 -d $deep
    run x2-sm-layer-ts3-1 60 -sm layer -ts 3/1 -d $deep
    # a tensor override that matches nothing turns the scheduler's pipeline parallelism off (llama_context's condition)
    run x2-sm-layer-ts1-1-pp-off 60 -sm layer -ts 1/1 -ot "gpuscope_matches_nothing=CUDA0" -d $deep
    run x2-sm-row 75 -sm row -d $deep
    run x2-sm-tensor 75 -sm tensor -d $deep
    # made on purpose: the KV cache kept on the host while the layers run on both GPUs
    run x2-sm-layer-nkvo 60 -sm layer -ts 1/1 -nkvo 1 -d 0,2048
    kernels x2-kernels-layer 'devices=CUDA0,CUDA1 split_mode=layer tensor_split=1,1 flash_attn=on'
    ;;
tensor)
    python3 -m gpuscope.cli model synth --shape tiny --out /root/models/tiny.gguf 2>&1 | tail -1
    say "in-process session on both GPUs, tensor split, tiny model"
    timeout 60 python3 -m gpuscope.cli sweep --engine cuda --model /root/models/tiny.gguf \
        --config 'devices=CUDA0,CUDA1 split_mode=tensor flash_attn=on' --depths 0 --steps 4 \
        --out /root/traces/x2-session-tensor-tiny.trace 2>&1 | tail -4 | tee -a "$OUT/session.txt"
    run x2-sm-tensor 75 -sm tensor -d $deep
    kernels x2-kernels-tensor 'devices=CUDA0,CUDA1 split_mode=tensor flash_attn=on'
    ;;
large)
    run x2-70b-sm-layer-ts1-1 90 -sm layer -ts 1/1 -d $deep
    run x2-70b-sm-tensor 90 -sm tensor -d $deep
    kernels x2-70b-kernels-layer 'devices=CUDA0,CUDA1 split_mode=layer tensor_split=1,1 flash_attn=on'
    run x2-70b-sm-none 75 -sm none -d $deep
    run x2-70b-sm-layer-ts3-1 75 -sm layer -ts 3/1 -d $deep
    ;;
esac
say "done"
