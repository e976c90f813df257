"""Record the GPU traces for gpuscope's doctor tests (run on the device machine)."""
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpuscope.models.synth import synth_model
from gpuscope.trace.model import save_trace
from gpuscope.runs.record import record


def read_bandwidth_gbps() -> float:
    """A read-only reduction over 8 GiB of f16: the device's practical read bandwidth."""
    x = torch.ones(4 << 30, dtype=torch.float16, device="cuda")
    for _ in range(3):
        x.sum()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(10):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        x.sum()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    nbytes = x.numel() * x.element_size()
    del x
    torch.cuda.empty_cache()
    return nbytes / best / 1e9


def main() -> None:
    bin_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    tiny = str(synth_model("tiny"))
    big = str(synth_model("8b,n_layer=8"))
    print(f"models in {time.time() - t0:.0f} s", flush=True)
    bandwidth = read_bandwidth_gbps()
    print(f"read bandwidth {bandwidth:.0f} GB/s", flush=True)
    bench = str(bin_dir / "llama-bench")
    depths = "0,2048,4096,8192,16384"
    runs = {
        "gpu-8b8l-fa-on": [bench, "-m", big, "-ngl", "99", "-fa", "1", "-p", "0", "-n", "32", "-d", depths, "-r", "1"],
        "gpu-8b8l-fa-off": [bench, "-m", big, "-ngl", "99", "-fa", "0", "-p", "0", "-n", "32", "-d", depths, "-r", "1"],
        "gpu-tiny": [bench, "-m", tiny, "-ngl", "99", "-fa", "1", "-p", "0", "-n", "64", "-r", "2"],
        "gpu-tiny-kv-iq4nl": [bench, "-m", tiny, "-ngl", "99", "-fa", "1", "-ctk", "iq4_nl", "-ctv", "iq4_nl",
                              "-p", "0", "-n", "32", "-r", "1"],
    }
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
    for name, command in runs.items():
        t = time.time()
        trace = record(command, out / f"{name}.trace", stdout=subprocess.PIPE)
        trace.meta["bandwidth_gbps"] = {"CUDA0": round(bandwidth, 1)}
        trace.meta["machine"] = {"gpu": smi, "bandwidth_method": "torch f16 sum over 8 GiB, best of 10"}
        save_trace(trace, out / f"{name}.trace")
        print(f"{name}: {time.time() - t:.1f} s", flush=True)
        print(trace.meta.get("stdout", "")[-1500:], flush=True)


if __name__ == "__main__":
    main()
