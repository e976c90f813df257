"""`gpuscope demo`: the main job in one command (gpuscope.runs.demo)."""
from __future__ import annotations

from gpuscope.cli.options import depths
from gpuscope.runs.demo import BACKEND_CHOICES, DEFAULT_DEPTHS, DEFAULT_STEPS, demo


def _run(args) -> int:
    demo(args.out, model=args.model, engine=args.engine, depths=args.depths, steps=args.steps, backend=args.backend)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="build the engine, profile the default model, diagnose it, write an HTML report",
        description="The main job in one command: builds the patched engine for this machine if needed (CUDA or "
                    "HIP where a GPU and its compiler are here, else the CPU; it says which and why), gets the "
                    "default model, runs a context sweep on it (on a GPU beside the CPU alone, to compare), runs "
                    "the doctor, writes OUT/demo-report.html and copies the notebooks to OUT/notebooks.")
    parser.add_argument("--out", "-o", default="gpuscope-demo", help="output folder (default ./gpuscope-demo)")
    parser.add_argument("--model", default="default", help="GGUF path, or 'default' (Gemma 3 270M Q4_K_M)")
    parser.add_argument("--engine", default=None, help="engine build name or folder (default: build/reuse the "
                                                       "hooked build --backend chooses)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                        help="engine backend to build (default auto: this machine's GPU if it can build for it)")
    parser.add_argument("--depths", type=depths, default=DEFAULT_DEPTHS,
                        help="context depths (default 0,256,512,1024)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help=f"decode steps per depth (default {DEFAULT_STEPS})")
    parser.set_defaults(func=_run)
