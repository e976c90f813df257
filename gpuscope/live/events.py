"""What a live dashboard derives from the events of a ring read so far (a RingTap): the decode steps of a program
that reports none itself."""
from __future__ import annotations

import pandas as pd

from gpuscope.analysis.steps import step_table
from gpuscope.trace.ringtap import RingTap


def hook_steps(tap: RingTap, program: str) -> pd.DataFrame:
    """Decode steps of a ring read so far, from its hook events (any engine program): step, config (`program` and
    its contexts), n_tokens, context, wall_ns, complete."""
    return step_table(tap.table("decode_begin"), tap.table("ubatch"), tap.table("decode_submitted"),
                      tap.table("decode_synced"), meta={"program": program})
