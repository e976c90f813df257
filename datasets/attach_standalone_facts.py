"""Give the traces recorded before gpuscope wrote them at recording time the facts a trace now carries
(gpuscope.trace.standalone): the model's byte profile and the engine's ggml_op names. Nothing else is touched.

    python datasets/attach_standalone_facts.py      # every trace under datasets/ that lacks them

The byte profile is read from the GGUF header of the model the trace's run used: the default model's own file, or
for a synthetic model the header gpuscope's writer makes for the same shape and type (weights are random, the header
is a function of the shape; for the GPU traces that recorded a profile from their real files the two agree field
for field). Op names come from the pinned engine's ggml.h, the source of every build here (README.md).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from gpuscope.models import default_model
from gpuscope.models.synth import write_header
from gpuscope.trace.standalone import engine_op_names
from gpuscope.trace.model_bytes import model_bytes, run_settings

HERE = Path(__file__).resolve().parent

# the model file a run named -> the shape it was made from (README.md's model names)
SHAPES = {
    "llama-tiny-f16": "tiny",
    "llama-e256-l16-h4-kv2-d64-ff768-v2048-f16": "tiny,n_layer=16",
    "8b-f16": "8b",
    "d256-f16": "d256",
    "d160-f16": "tiny,n_embd=640,n_head=4,n_head_kv=1,head_dim=160",
}


def profile_of(model_path: str, scratch: Path) -> dict:
    name = Path(model_path).name
    if name.startswith("gemma-3-270m"):
        profile = model_bytes(default_model()).to_meta()
    else:
        shape = next((spec for prefix, spec in SHAPES.items() if name.startswith(prefix)), None)
        if shape is None:
            raise SystemExit(f"{model_path}: no known shape for this model; add it to SHAPES")
        profile = model_bytes(write_header(shape, "f16", scratch / f"{name}.header.gguf")).to_meta()
    return {**profile, "path": model_path}  # the file the run used, not the header written here


def attach(trace: Path, scratch: Path) -> list[str]:
    meta_file = trace / "meta.json"
    meta = json.loads(meta_file.read_text())
    added = []
    if "model_bytes" not in meta:
        meta["model_bytes"] = profile_of(run_settings(meta)["model"], scratch)
        added.append("model_bytes")
    engines = [meta.get("engine") or {}] + [run.get("engine") or {} for run in meta.get("runs") or []]
    for engine in engines:
        if engine and "ggml_ops" not in engine:
            engine["ggml_ops"] = {str(v): n for v, n in sorted(engine_op_names(engine).items())}
            added.append("engine.ggml_ops")
    if added:
        meta_file.write_text(json.dumps(meta, indent=2) + "\n")
    return added


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for trace in sorted(HERE.glob("*/*.trace")):
            added = attach(trace, Path(scratch))
            print(f"{trace.relative_to(HERE)}: {', '.join(added) or 'nothing to add'}", file=sys.stderr)


if __name__ == "__main__":
    main()
