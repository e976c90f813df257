#!/usr/bin/env bash
# Issue 15 on the lent nvidia-h200, in one call: where the recording's cost per decode step comes from.
# Builds the hooked CUDA engine (sm_90) from the carried pinned source while `gpuscope bench ring` measures the
# emit on the machine's own CPU, synthesizes the Llama 1B shape (F16: about 1.3 ms a step, where a fixed cost per
# step shows most), then runs benchmarks/gpu/recording_cost.py (hooks off / a ring nobody drains / recorded /
# recorded with CLOCK_MONOTONIC, interleaved) until the call's time is nearly spent.
# Carried with the call (not in git): .gpu/llama-src.tar.xz and .whl/ as h200-prelude.sh says.
source benchmarks/gpu/h200-prelude.sh
lscpu | grep -E 'Model name|^CPU\(s\)' > "$OUT/cpu.txt"
for run in 1 2 3; do python3 -m gpuscope.cli bench ring --json > "$OUT/bench-ring-$run.json" 2>&1; done
say "bench ring done"
model=$(python3 -c "from gpuscope.models.synth import synth_model; print(synth_model('1b', seed=0))")
say "model $model"
built
python3 benchmarks/gpu/recording_cost.py --build cuda --model "$model" --depth ${DEPTHS:-0 4096} --rounds ${ROUNDS:-5} \
    --n-gen 128 --budget-s ${BUDGET_S:-200} -- -ngl 99 -fa 1 > "$OUT/recording-cost.json" 2> "$OUT/recording-cost.log"
say "recording cost done ($?)"
tail -30 "$OUT/recording-cost.log"
