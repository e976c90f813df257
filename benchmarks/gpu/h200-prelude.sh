# Sourced by the one-call H200 scripts beside it: the carried wheels installed for the machine's Python 3.12, the
# GPU named in $OUT/gpu.txt, and the hooked CUDA engine for sm_90 building in the background from the carried
# pinned source ($build is its pid; wait for it). Carried with the call (none of them in git): .gpu/llama-src.tar.xz
# (the cached engine-src tree without docs/, models/*.gguf and the backends not built, 7 MB) and .whl/ (gguf,
# diskcache, plotly, narwhals, pyyaml, scipy, and llama-cpp-python as a pure-Python wheel:
# `CMAKE_ARGS=-DLLAMA_BUILD=OFF pip wheel --no-deps llama-cpp-python==0.3.36`).
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
built() { wait "$build"; tail -3 /root/build.log; cp /root/build.log "$OUT/build.log"; say "build done"; }
