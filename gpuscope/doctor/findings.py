"""A finding: one problem the doctor found, with what it rests on and what to do about it."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SEVERITIES = ("critical", "warning", "info")
MAX_ROWS = 20


@dataclass
class Finding:
    id: str                       # the rule's stable id, e.g. "allocator.churn"
    severity: str                 # critical | warning | info
    statement: str                # one line: what is wrong, with its size
    evidence: dict                # the numbers behind the statement
    cause: str                    # the likely cause
    actions: list[str]            # what to try, best first
    share: float | None = None    # share of step time at stake (None: not a time problem, or not measurable)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # the event rows behind the numbers
    rows_kind: str = ""           # which table the rows come from

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    @property
    def sort_key(self) -> tuple:
        return SEVERITIES.index(self.severity), -(self.share if self.share is not None else -1.0), self.id

    def to_dict(self) -> dict:
        rows = self.rows.head(MAX_ROWS)
        return {
            "id": self.id, "severity": self.severity, "statement": self.statement,
            "share_of_step_time": json_ready(self.share), "evidence": json_ready(self.evidence),
            "cause": self.cause, "try": list(self.actions),
            "rows": {"kind": self.rows_kind, "total": int(len(self.rows)),
                     "shown": json_ready(rows.to_dict(orient="records"))},
        }

    def to_text(self) -> str:
        share = f"  ({self.share:.1%} of step time at stake)" if self.share is not None else ""
        lines = [f"[{self.severity.upper()}] {self.id}{share}", f"  {self.statement}"]
        for key, value in self.evidence.items():
            lines.append(f"    {key}: {_format(value)}")
        lines.append(f"  likely cause: {self.cause}")
        for action in self.actions:
            lines.append(f"  try: {action}")
        if len(self.rows):
            shown = self.rows.head(8)
            label = f"{self.rows_kind} rows" if self.rows_kind else "rows"
            lines.append(f"  {label} ({len(shown)} of {len(self.rows)}):")
            with pd.option_context("display.width", 160, "display.max_columns", 14, "display.max_colwidth", 40):
                lines += ["    " + line for line in shown.to_string(index=False).splitlines()]
        return "\n".join(lines)


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 10:
        return f"{list(value[:10])} ... ({len(value)} in all)"
    return str(value)


def json_ready(value):
    """JSON-ready: numpy scalars to Python, NaN to None, containers recursively."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Index)):
        return [json_ready(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    return str(value)


def findings_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_dict() for f in findings], indent=2)
