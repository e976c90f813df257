#!/usr/bin/env bash
# Issue 13's calibration on the lent nvidia-h200, in one call: build the hooked CUDA engine for sm_90 while the
# synthetic models are written, then `gpuscope bench doctor --engine cuda` (the GPU scenario set, 2 interleaved
# rounds). Writes $OUT/bench-doctor.txt (the table, then one JSON line), $OUT/gpu.txt and the scenarios' traces as
# $OUT/bench-doctor-traces.tar.gz.
# Expects, carried with the call (none of them in git): the pinned source as .gpu/llama-src.tar.xz (the cached
# engine-src tree without docs/, models/*.gguf and the backends not built, 7 MB), and in .whl/ the wheels the machine
# lacks for its Python 3.12: gguf, diskcache, plotly, narwhals, pyyaml, scipy and llama-cpp-python
# (`CMAKE_ARGS=-DLLAMA_BUILD=OFF pip wheel --no-deps llama-cpp-python==0.3.36`: pure Python).
set -uo pipefail
export PYTHONPATH=$PWD:/tmp/site GPUSCOPE_CACHE=/root/gscache PYTHONUNBUFFERED=1
start=$SECONDS
say() { echo "[$((SECONDS - start))s] $*" | tee -a "$OUT/progress.txt"; }
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
mkdir -p /root/src && tar xJf .gpu/llama-src.tar.xz -C /root/src
python3 -m gpuscope.cli engine build --backend cuda --cuda-arch 90 --src /root/src/llama.cpp-0c1e57098 -j 16 \
    > /root/build.log 2>&1 &
build=$!
python3 -c "from gpuscope.models.synth import synth_model
for shape, seed in (('1b', 0), ('1b,n_embd=1536', 0), ('1b,n_layer=2', 1)): print(synth_model(shape, seed=seed))"
say "models written"
wait $build; tail -3 /root/build.log; cp /root/build.log "$OUT/build.log"
say "build done"
python3 -m gpuscope.cli bench doctor --engine cuda --rounds 2 --keep /root/keep --json > "$OUT/bench-doctor.txt" \
    2> /root/bench-doctor.err
tail -40 /root/bench-doctor.err > "$OUT/bench-doctor.err"
say "bench done"
tar czf "$OUT/bench-doctor-traces.tar.gz" -C /root keep
du -sh /root/keep "$OUT/bench-doctor-traces.tar.gz"
cat "$OUT/bench-doctor.txt" | head -30
