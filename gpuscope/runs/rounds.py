"""Arms measured side by side: each round runs every arm once, in an order that alternates, so that machine drift
(thermal state, other load, page cache) hits every arm alike. A/B runs of two builds and the doctor's verification
of a remedy both measure this way."""
from __future__ import annotations

from typing import Callable, Mapping

from gpuscope import log
from gpuscope.trace.model import Trace


def interleaved(arms: Mapping[str, Callable[[int], Trace]], rounds: int, *, say: str = "gpuscope") -> dict[str, list[Trace]]:
    """`arms[name](round)` for every round and arm, the arms' order reversed on odd rounds; their traces by arm."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    pieces: dict[str, list[Trace]] = {name: [] for name in arms}
    names = list(arms)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            log.say(f"{say}: round {round_index + 1}/{rounds}: {name}")
            pieces[name].append(arms[name](round_index))
    return pieces
