#!/usr/bin/env bash
# Issue 13's calibration on the lent nvidia-h200, in one call: build the hooked CUDA engine for sm_90 while the
# synthetic models are written, then `gpuscope bench doctor --engine cuda` (the GPU scenario set, 2 interleaved
# rounds). Writes $OUT/bench-doctor.txt (the table, then one JSON line), $OUT/gpu.txt and the scenarios' traces as
# $OUT/bench-doctor-traces.tar.gz.
# Needs what h200-prelude.sh says is carried.
source "$(dirname "$0")/h200-prelude.sh"
python3 -c "from gpuscope.models.synth import synth_model
for shape, seed in (('1b', 0), ('1b,n_embd=1536', 0), ('1b,n_layer=2', 1)): print(synth_model(shape, seed=seed))"
say "models written"
built
python3 -m gpuscope.cli bench doctor --engine cuda --rounds 2 --keep /root/keep --json > "$OUT/bench-doctor.txt" \
    2> /root/bench-doctor.err
tail -40 /root/bench-doctor.err > "$OUT/bench-doctor.err"
say "bench done"
tar czf "$OUT/bench-doctor-traces.tar.gz" -C /root keep
du -sh /root/keep "$OUT/bench-doctor-traces.tar.gz"
cat "$OUT/bench-doctor.txt" | head -30
