"""A finding: one problem the doctor found, with what it rests on and what to do about it."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gpuscope.markup import esc, notebook, pairs, table as html_table
from gpuscope.units import as_table, duration, duration_range, label, number, share as percent, terminal_width, \
    text_table, value, wrap

SEVERITIES = ("critical", "warning", "info")
MAX_ROWS = 20
TEXT_ROWS = 8  # rows of a table in the terminal, unless --rows says otherwise


@dataclass
class Finding:
    severity: str                 # critical | warning | info
    statement: str                # one line: what is wrong, with its size
    evidence: dict                # the numbers behind the statement
    cause: str                    # the likely cause
    actions: list[str]            # what to try, best first
    share: float | None = None    # share of the step the first remedy saves, estimated as `evidence["saving_method"]`
                                  # says (None: not a time problem, or no estimate is possible, and the text says why)
    rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # the event rows behind the numbers
    rows_kind: str = ""           # which table the rows come from
    config: str | None = None     # the configuration it belongs to (a trace of one run is one configuration)
    phase: str | None = None      # decode | prefill, where the rule looked at one phase
    saving_ns: float | None = None  # what the first remedy saves per step, in ns, where estimated
    id: str = ""                  # the stable id of the rule that found it ("allocator.churn"), set by its registration
    remedy: dict | None = None    # the first action as a change of configuration settings (SplitConfig's keys),
                                  # where it is one: what `gpuscope doctor --verify` runs
    verified: dict | None = None  # the first remedy's measured saving (gpuscope.runs.verify), or why it is not
    time_range_ns: tuple[int, int] | None = None  # the span of the trace it refers to (trace clock, ns): its rows'
                                  # steps or events, else its configuration's steps; None for the recording as a whole

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {SEVERITIES}")

    @property
    def sort_key(self) -> tuple:
        return SEVERITIES.index(self.severity), -(self.share if self.share is not None else -1.0), self.id

    def to_dict(self) -> dict:
        rows = self.rows.head(MAX_ROWS)
        return {
            "id": self.id, "severity": self.severity, "config": self.config, "phase": self.phase,
            "statement": self.statement, "saving_share": json_ready(self.share),
            "saving_ms_per_step": json_ready(self.saving_ns / 1e6 if self.saving_ns is not None else None),
            "evidence": json_ready(self.evidence),
            "remedy": json_ready(self.remedy), "verified": json_ready(self.verified),
            "time_range_ns": json_ready(self.time_range_ns),
            "cause": self.cause, "try": list(self.actions),
            "rows": {"kind": self.rows_kind, "total": int(len(self.rows)),
                     "shown": json_ready(rows.to_dict(orient="records"))},
        }

    def to_text(self, width: int | None = None, rows: int = TEXT_ROWS) -> str:
        """The finding for the terminal: no line wider than `width` (default: the terminal's), tables cut to
        `rows` rows."""
        width = width or terminal_width()
        where = " ".join(part for part in (f"`{self.config}`" if self.config else "", self.phase or "") if part)
        lines = wrap(f"[{self.severity.upper()}] {self.id}" + (f"  {where}" if where else "")
                     + (f"  ({self.saving_text()})" if self.share is not None else ""), width)
        lines += wrap(self.statement, width, indent="  ")
        for key, item in self.evidence.items():
            table = as_table(item)
            if table is None:
                lines += wrap(f"{label(key)}: {value(item, key)}", width, indent="    ", hanging="      ")
            else:
                lines.append(f"    {label(key)}:")
                lines += text_table(table, width=width, rows=rows, indent="      ", unit_name=key)
        lines += wrap(f"likely cause: {self.cause}", width, indent="  ")
        if self.verified is not None:
            lines += wrap(f"verified: {self.verified_text()}", width, indent="  ")
        for action in self.actions:
            lines += wrap(f"try: {action}", width, indent="  ")
        if len(self.rows):
            lines.append(f"  {self.rows_kind + ' rows' if self.rows_kind else 'rows'} ({len(self.rows)}):")
            lines += text_table(self.rows, width=width, rows=rows, indent="    ")
        return "\n".join(lines)

    def to_html(self, anchor: str = "", t0_ns: int | None = None) -> str:
        """The finding's card, as the report shows it (and a notebook, through _repr_html_): severity, rule id,
        statement, the check of its remedy, cause, actions, evidence as small tables and the rows behind it;
        `t0_ns`: the report's timeline origin, which links the card to the finding's span on it."""
        where = "".join(f" &middot; {esc(part)}" for part in (self.config and f"configuration {self.config}",
                                                              self.phase, self.saving_text()) if part)
        actions = "".join(f"<li>{esc(action)}</li>" for action in self.actions)
        rows = ""
        if len(self.rows):
            kind = f"{self.rows_kind} rows" if self.rows_kind else "rows"
            rows = (f"<details><summary>{esc(kind)} behind it ({len(self.rows)})</summary>"
                    f"{html_table(self.rows, max_rows=50)}</details>")
        checked = ""
        if self.verified is not None:
            checked = (f"<p><b>Predicted:</b> {esc(self.saving_text() or 'no estimate')} &middot; "
                       f"<b>Verified:</b> {esc(self.verified_text())}</p>")
        where_id = f" id='{esc(anchor)}'" if anchor else ""
        span, on_timeline = self._timeline_link(t0_ns)
        return (f"<div class='finding {esc(self.severity)}'{where_id}{span}><h3>"
                f"<span class='badge {esc(self.severity)}'>{esc(self.severity)}</span><code>{esc(self.id)}</code>"
                f"<span class='muted'>{where}</span></h3><p>{esc(self.statement)}</p>{checked}{on_timeline}"
                f"<p><b>Likely cause:</b> {esc(self.cause)}</p><p><b>What to try:</b></p><ul>{actions}</ul>"
                f"<details><summary>evidence</summary>{pairs(self.evidence.items())}</details>{rows}</div>")

    def _timeline_link(self, t0_ns: int | None) -> tuple[str, str]:
        """The card's attributes and line that link it to its span on a timeline (empty where it has none)."""
        if t0_ns is None or not self.time_range_ns:
            return "", ""
        start, end = ((t - t0_ns) / 1e9 for t in self.time_range_ns)
        return (f" data-from='{esc(repr(start))}' data-to='{esc(repr(end))}'",
                f"<p class='muted on-timeline'>On the timeline: {esc(number(start))} to {esc(number(end))} s "
                "(click the card to show it)</p>")

    def _repr_html_(self) -> str:
        return notebook("", self.to_html())  # the card names its rule

    def saving_text(self) -> str:
        """'the first remedy saves about 1.2 ms per step (14%)'; empty where nothing is estimated."""
        if self.share is None:
            return ""
        ms = f"about {duration(self.saving_ns)} per step, " if self.saving_ns is not None else "about "
        return f"the first remedy saves {ms}{percent(self.share)}"

    def verified_text(self) -> str:
        """'saves 0.75 ms per step (95% CI 0.62 to 0.88), predicted 0.71, over 3 rounds of flash_attn=off'; why
        not, where it was not measured."""
        v = self.verified
        if not v:
            return ""
        if v.get("saving_ms") is None:
            return f"not measured: {v.get('reason', 'unknown')}"
        predicted = f", predicted {duration(self.saving_ns)}" if self.saving_ns is not None else ", no prediction"
        ci_low, ci_high = (ms * 1e6 for ms in v["ci_ms"])
        return (f"{v['remedy_label']} saves {duration(v['saving_ms'] * 1e6)} per step (95% CI "
                f"{duration_range(ci_low, ci_high, between=' to ')}; "
                f"{duration_range(v['before_ms'] * 1e6, v['after_ms'] * 1e6)}){predicted}, over "
                f"{v['rounds']} interleaved rounds")


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
