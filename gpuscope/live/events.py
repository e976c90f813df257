"""What a live dashboard derives from the events of a ring read so far (a RingTap): memory held now, and the
decode steps of a program that reports none itself."""
from __future__ import annotations

import pandas as pd

from gpuscope.analysis.memory import buffer_lifetimes
from gpuscope.analysis.steps import step_table
from gpuscope.trace.ringtap import RingTap

MAPPED = " (mapped file)"


def held_now(buffer: pd.DataFrame) -> pd.DataFrame:
    """Bytes each location holds now, per owner (from the `buffer` events read so far): location, owner, bytes.
    Buffers over a mapped model file count as '<owner> (mapped file)'."""
    if not len(buffer):
        return pd.DataFrame(columns=["location", "owner", "bytes"])
    lifetimes = buffer_lifetimes(buffer)
    alive = lifetimes[lifetimes["free_ns"].isna()]
    owners = alive["owner"].astype(str).where(~alive["mapped"].astype(bool), alive["owner"].astype(str) + MAPPED)
    held = alive.assign(owner=owners).groupby(["location", "owner"], sort=True)["size"].sum()
    return held.rename("bytes").reset_index()


def hook_steps(tap: RingTap, program: str) -> pd.DataFrame:
    """Decode steps of a ring read so far, from its hook events (any engine program): step, config (`program` and
    its contexts), n_tokens, context, wall_ns, complete."""
    return step_table(tap.table("decode_begin"), tap.table("ubatch"), tap.table("decode_submitted"),
                      tap.table("decode_synced"), meta={"program": program})
