#!/usr/bin/env bash
# Issue 14 item 6 on the lent nvidia-h200, in one call: the README's main command as a user with a GPU runs it.
# `gpuscope demo` finds the H200 and nvcc, builds the hooked CUDA engine from the pinned source in the cache,
# and sweeps all layers on the GPU beside the CPU alone. The H200 has no internet, so the pinned source is carried
# (.gpu/llama-src.tar.xz, placed where the cache keeps it) and the model is synthetic (Llama 1B shape, F16).
# Writes $OUT/demo (report, trace, the demo's output) and $OUT/nvidia-smi-h200.txt (tests/data/tools).
# Carried with the call (not in git): .gpu/llama-src.tar.xz and .whl/ as h200-prelude.sh says.
set -uo pipefail
export PYTHONPATH=$PWD:/tmp/site GPUSCOPE_CACHE=/root/gscache PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader > "$OUT/nvidia-smi-h200.txt"
mkdir -p $GPUSCOPE_CACHE/engine-src && tar xJf .gpu/llama-src.tar.xz -C $GPUSCOPE_CACHE/engine-src
model=$(python3 -c "from gpuscope.models.synth import synth_model; print(synth_model('1b', seed=0))")
mkdir -p "$OUT/demo"
python3 -m gpuscope.cli demo --out /root/demo --model "$model" --depths 0,1024,4096 --steps 16 \
    > "$OUT/demo/stdout.txt" 2> "$OUT/demo/stderr.txt"
echo "demo exit $?"
cp -r /root/demo/demo-report.html /root/demo/demo-sweep.trace "$OUT/demo/"
grep -v "^\[" "$OUT/demo/stderr.txt" | tail -8
head -40 "$OUT/demo/stdout.txt"
