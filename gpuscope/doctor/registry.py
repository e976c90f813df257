"""The doctor's rules, each registered once with its stable id: `@rule("allocator.churn")` over a function that
takes an Analysis and returns findings; the registration names every finding the rule makes after it.

A rule runs on each configuration's part of a trace (scope "config") or once on the whole trace (scope "trace":
the recording itself, or configurations compared)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from gpuscope.doctor.findings import Finding


@dataclass(frozen=True)
class Rule:
    id: str
    check: Callable[[object], list[Finding]]
    scope: str  # config | trace

    def __call__(self, analysis) -> list[Finding]:
        findings = self.check(analysis)
        for finding in findings:
            finding.id = self.id
        return findings


RULES: list[Rule] = []  # in registration order


def rule(rule_id: str, *, scope: str = "config") -> Callable:
    """Register the decorated function as the rule `rule_id`."""
    if scope not in ("config", "trace"):
        raise ValueError(f"rule {rule_id}: scope must be 'config' or 'trace', not {scope!r}")
    if any(known.id == rule_id for known in RULES):
        raise ValueError(f"rule {rule_id} is registered twice")

    def register(check: Callable) -> Callable:
        RULES.append(Rule(rule_id, check, scope))
        return check
    return register
