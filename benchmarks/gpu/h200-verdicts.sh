#!/usr/bin/env bash
# Issue 13 on the lent nvidia-h200, in one call: build the hooked CUDA engine for sm_90 while the 8B F16 synthetic
# model is written, then sweep it in-process over the three configurations the issue tried (every layer on the GPU
# with FlashAttention on; FlashAttention off; 24 of 32 layers on the GPU) at depths 0/4096/16384 into one trace
# ($OUT/h200-sweep.trace). The doctor reads it afterwards, here or on the machine that fetched it.
# Needs what h200-prelude.sh says is carried. Not run yet: the calibration (h200-doctor.sh) ran instead.
mkdir -p /root/models
source "$(dirname "$0")/h200-prelude.sh"
python3 -m gpuscope.cli model synth --shape 8b --out /root/models/8b-f16.gguf 2>&1 | tail -1
say "model written"
built
python3 -m gpuscope.cli sweep --engine cuda --model /root/models/8b-f16.gguf --no-progress \
    -c 'n_gpu_layers=99 flash_attn=on name=all-gpu-fa-on' -c 'n_gpu_layers=99 flash_attn=off name=all-gpu-fa-off' \
    -c 'n_gpu_layers=24 flash_attn=on name=ngl24-fa-on' --depths 0,4096,16384 --steps 32 \
    -o "$OUT/h200-sweep.trace" 2>&1 | tail -20
say "sweep done"
