"""The doctor's rule on speculative decoding: is the speculative loop faster than the target decoding alone?

At stake is what the first remedy saves per emitted token, as a share of the loop's time per token: for turning
drafting off (t_spec - t_plain) / t_spec, with t_plain measured from the target's plain decode steps where the trace
has them, else estimated from its verify steps (gpuscope.analysis.speculation names the method); for a shorter
draft, the time per token its acceptance by position predicts.
"""
from __future__ import annotations

from gpuscope.doctor.findings import Finding
from gpuscope.doctor.registry import rule
from gpuscope.units import duration, number, share as percent, times

# A loop within 10% of the target alone is called even, not slower: on the shared 2-core machine the target
# alone's rate moved by up to a third between two runs a second apart (tests/test_speculation.py), while the
# calibration's slower loops were 14-47% (the target's q8_0 copy as the draft) and 85-89% (a random draft) slower.
SLOWER_MARGIN = 0.10
# Under this acceptance the draft's disagreement is what a better draft fixes; above it, the draft's cost.
LOW_ACCEPTANCE = 0.5


@rule("speculation.net-effect")
def speculation_net_effect(a) -> list[Finding]:
    spec = a.speculation
    findings = []
    for row in spec.summary.itertuples():
        positions = spec.by_position[spec.by_position["config"] == row.config]
        evidence = _evidence(row, positions)
        speeds = (f"{number(row.spec_tokens_per_s)} tokens/s against {number(row.plain_tokens_per_s)} for the target "
                  f"alone ({row.plain_method.split(':')[0]})")
        if row.saving_share >= SLOWER_MARGIN:
            findings.append(_slower(row, evidence, speeds))
        elif row.plain_upper_bound:
            findings.append(Finding(
                severity="info",
                statement=f"[{row.config}] speculation runs at {speeds}: the target alone was not measured and its "
                          "verify batches only bound its one-token step from above, so whether drafting pays is "
                          "unknown",
                evidence=evidence, cause="the trace has no plain decode steps of the target", config=row.config,
                actions=["record the target decoding alone beside the rounds (speculative(..., baseline=32), "
                         "the default)"]))
        else:
            pays = row.saving_share < 0
            findings.append(Finding(
                severity="info",
                statement=f"[{row.config}] speculation {'pays' if pays else 'gains nothing measurable'}: {speeds}, "
                          f"{times(row.speedup)}; {percent(row.acceptance)} of drafted tokens accepted",
                evidence=evidence,
                cause="the draft agrees often enough and costs little enough" if pays else
                      f"the accepted drafts about pay for the draft and the verify batch (within "
                      f"{percent(SLOWER_MARGIN)})",
                actions=[], config=row.config))
    return findings


def _slower(row, evidence: dict, speeds: str) -> Finding:
    low = not row.acceptance >= LOW_ACCEPTANCE  # NaN: nothing was drafted
    remedies = [(row.saving_ns_per_token, "turn drafting off (decode with the target alone)",
                 f"{row.plain_method} against the rounds' wall time per emitted token")]
    shorter = row.spec_ns_per_token - row.best_draft_ns_per_token
    if row.best_draft_max < row.draft_max and shorter >= SLOWER_MARGIN * row.spec_ns_per_token:
        remedies.append((shorter, f"draft at most {row.best_draft_max} token(s) per round (n_draft / --draft-max "
                                  f"{row.best_draft_max})",
                         "estimated from the acceptance by position: a round less one draft step per position "
                         "dropped, its verify batch kept as measured"))
    remedies.sort(key=lambda remedy: -remedy[0])
    actions = [f"{text}: saves about {duration(saving)} per token, {percent(saving / row.spec_ns_per_token)} of the "
               f"loop's time" for saving, text, _ in remedies]
    actions.append(f"a draft that agrees more often ({percent(row.acceptance)} accepted now: a smaller model of the "
                   "target's family, or the target's own quantized copy)" if low else
                   f"a smaller, cheaper draft (the draft takes {percent(row.draft_share)} of each round)")
    if low:
        cause = (f"the draft agrees with the target on {percent(row.acceptance)} of drafted tokens: each round pays "
                 f"{duration(row.draft_ns_per_round)} of drafting and a verify batch of up to "
                 f"{row.draft_max + 1} tokens ({duration(row.verify_ns_per_round)}) for "
                 f"{number(row.tokens_per_round)} token(s)")
    else:
        cause = (f"the draft and the verify batch cost more than the tokens they bring: a round of "
                 f"{duration(row.draft_ns_per_round + row.verify_ns_per_round + row.host_ns_per_round)} "
                 f"brings {number(row.tokens_per_round)} tokens, where the target alone takes "
                 f"{duration(row.plain_ns_per_token)} per token (its verify batch costs "
                 f"{number(row.verify_ns_per_round / row.plain_ns_per_token)} plain steps)")
    saving, _, method = remedies[0]
    return Finding(
        severity="critical",
        statement=f"[{row.config}] speculation slower than none: {speeds}; {percent(row.acceptance)} of drafted "
                  f"tokens accepted, the draft takes {percent(row.draft_share)} of the loop's time",
        evidence={**evidence, "saving_ns_per_token": saving, "saving_method": method},
        cause=cause, actions=actions, share=float(saving / row.spec_ns_per_token), config=row.config,
        phase="decode", saving_ns=float(saving))  # per emitted token: the loop's unit of work


def _evidence(row, positions) -> dict:
    return {
        "speculative_tokens_per_s": row.spec_tokens_per_s, "plain_tokens_per_s": row.plain_tokens_per_s,
        "plain_method": f"{row.plain_method} ({row.plain_steps} steps)",
        "spec_ns_per_token": row.spec_ns_per_token, "plain_ns_per_token": row.plain_ns_per_token,
        "rounds": row.rounds, "draft_max": row.draft_max, "acceptance": row.acceptance,
        "acceptance_by_position": [round(float(r), 3) for r in positions["rate"]],
        "tokens_per_round": row.tokens_per_round, "draft_share": row.draft_share,
        "draft_ns_per_round": row.draft_ns_per_round, "verify_ns_per_round": row.verify_ns_per_round,
        "host_ns_per_round": row.host_ns_per_round, "draft_ns_per_accepted": row.draft_ns_per_accepted,
        "verify_ns_per_accepted": row.verify_ns_per_accepted,
        "best_draft_max": row.best_draft_max, "best_draft_ns_per_token": row.best_draft_ns_per_token,
    }
