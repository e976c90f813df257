"""A trace in a few lines: per configuration its decode steps, step time (median, p10, p90), tokens/s, the context
it covered and how noisy it was; then the doctor's top findings where they are given. One object with a text form
(`to_text()`, `str()`) and an HTML form (a notebook shows it), its numbers in `table` (a DataFrame).

The doctor sits above the analysis in the layers, so a summary never runs it: pass its findings,
`analysis.summary(diagnose(analysis))`, to have them in it."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from gpuscope.analysis.noise import step_noise
from gpuscope.analysis.verdict import decode_steps
from gpuscope.markup import esc, notebook, pairs, table as html_table
from gpuscope.units import terminal_width, text_table, wrap

TOP_FINDINGS = 3
SEVERITIES = ("critical", "warning", "info")  # the doctor's (gpuscope.doctor.findings), most severe first
COLUMNS = ["config", "steps", "median_step_ns", "p10_ns", "p90_ns", "tokens_per_s", "context_from", "context_to",
           "scatter_share"]


@dataclass
class Summary:
    trace: str                    # the trace's path, or "in memory"
    steps: int                    # steps recorded
    complete: int                 # of them complete
    table: pd.DataFrame           # one row per configuration (COLUMNS), in the order they ran
    findings: list | None = None  # the doctor's findings, most severe first; None: not given
    top: int = TOP_FINDINGS
    counts: dict = field(init=False)

    def __post_init__(self):
        found = self.findings or []
        self.counts = {severity: sum(f.severity == severity for f in found) for severity in SEVERITIES}

    def _findings_line(self) -> str:
        if self.findings is None:
            return "findings: not given (a.summary(diagnose(a)) adds the doctor's)"
        return "findings: " + ", ".join(f"{n} {severity}" for severity, n in self.counts.items())

    def to_text(self, width: int | None = None) -> str:
        """No line wider than `width` (default: the terminal's)."""
        width = width or terminal_width()
        lines = wrap(f"trace: {self.trace} ({self.steps} steps, {self.complete} complete)", width)
        lines += text_table(self.table, width=width) + wrap(self._findings_line(), width)
        for f in (self.findings or [])[:self.top]:
            where = f" `{f.config}`" if f.config else ""
            lines += wrap(f"[{f.severity.upper()}] {f.id}{where}: {f.statement}", width, indent="  ")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def to_html(self) -> str:
        items = "".join(f"<li><span class='badge {esc(f.severity)}'>{esc(f.severity)}</span><code>{esc(f.id)}</code>"
                        + (f" <b>{esc(f.config)}</b>" if f.config else "") + f": {esc(f.statement)}</li>"
                        for f in (self.findings or [])[:self.top])
        return (pairs([("trace", self.trace), ("steps", f"{self.steps} ({self.complete} complete)")])
                + html_table(self.table) + f"<p>{esc(self._findings_line())}</p>"
                + (f"<ul>{items}</ul>" if items else ""))

    def _repr_html_(self) -> str:
        return notebook("gpuscope summary", self.to_html())


def summarize(analysis, findings: list | None = None, top: int = TOP_FINDINGS) -> Summary:
    """The summary of an Analysis; `findings`: the doctor's, where they should be in it."""
    steps = analysis.steps
    decode = decode_steps(steps)
    measured = decode if len(decode) else analysis.complete_steps
    noise = step_noise(steps).groupby("config", sort=False)["scatter_share"].max()
    rows = []
    for config, group in measured.groupby("config", sort=False):
        wall = group["wall_ns"].astype(float)
        rows.append({"config": str(config), "steps": int(len(group)), "median_step_ns": wall.median(),
                     "p10_ns": wall.quantile(0.1), "p90_ns": wall.quantile(0.9),
                     "tokens_per_s": 1e9 * float(group["n_tokens"].median()) / wall.median(),
                     "context_from": int(group["context"].min()), "context_to": int(group["context"].max()),
                     "scatter_share": noise.get(str(config))})
    return Summary(trace=str(analysis.trace.path or "in memory"), steps=int(len(steps)),
                   complete=int(len(analysis.complete_steps)), table=pd.DataFrame(rows, columns=COLUMNS),
                   findings=findings, top=top)
