"""Before and after: two traces side by side. Step time per context bucket with the difference and a bootstrap
confidence interval (a verdict only where the interval excludes zero), event counts per kind and reason, FA plans
added and removed, allocation deltas per device and owner, syncs per step, and findings that appeared or
disappeared."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.analysis.fa_routes import PLAN_KEY
from gpuscope.analysis.facade import Analysis
from gpuscope.analysis.stats import bootstrap_median_difference
from gpuscope.doctor.findings import json_ready
from gpuscope.doctor.rules import diagnose

# The column that tells events of a kind apart, where one does.
REASON_COLUMNS = {"gallocr_realloc": "reason", "sync": "reason", "sched_reserve": "trigger", "fa_plan": "kernel",
                  "copy": "mode", "buffer": "action", "mark": "name"}
MIN_BUCKET_STEPS = 5


def context_bucket(context: np.ndarray) -> np.ndarray:
    """Lower edge of each context's bucket: 0-255, 256-511, then powers of two (512-1023, 1024-2047, ...)."""
    context = np.asarray(context, np.int64)
    power = np.where(context < 512, 256, 2 ** np.floor(np.log2(np.maximum(context, 1))).astype(np.int64))
    return np.where(context < 512, context // 256 * 256, power)


def step_time(a: Analysis, b: Analysis, confidence: float = 0.95) -> pd.DataFrame:
    """Per (configuration, batch size, context bucket) present in both: median step time of each, B - A with its
    bootstrap interval, and a verdict where the interval excludes zero."""
    def buckets(analysis):
        steps = analysis.complete_steps
        return steps.assign(bucket=context_bucket(steps["context"].to_numpy()))

    steps_a, steps_b = buckets(a), buckets(b)
    keys = ["config", "n_tokens", "bucket"]
    groups_b = {key: g["wall_ns"].to_numpy() for key, g in steps_b.groupby(keys)}
    rows = []
    for key, group in steps_a.groupby(keys):
        other = groups_b.get(key)
        if other is None or len(group) < MIN_BUCKET_STEPS or len(other) < MIN_BUCKET_STEPS:
            continue
        values = group["wall_ns"].to_numpy()
        diff, low, high = bootstrap_median_difference(values, other, confidence=confidence)
        median_a = float(np.median(values))
        if low > 0:
            verdict = "B slower"
        elif high < 0:
            verdict = "B faster"
        else:
            verdict = "no clear difference"
        rows.append({"config": key[0], "n_tokens": int(key[1]), "context_from": int(key[2]),
                     "steps_a": len(values), "steps_b": len(other), "median_a_ns": median_a,
                     "median_b_ns": float(np.median(other)), "diff_ns": diff, "ci_low_ns": low, "ci_high_ns": high,
                     "diff_pct": diff / median_a * 100 if median_a else np.nan, "verdict": verdict})
    return pd.DataFrame(rows, columns=["config", "n_tokens", "context_from", "steps_a", "steps_b", "median_a_ns",
                                       "median_b_ns", "diff_ns", "ci_low_ns", "ci_high_ns", "diff_pct", "verdict"])


def _event_counts(analysis: Analysis) -> pd.Series:
    counts = {}
    for kind, frame in analysis.trace.tables.items():
        if kind == "steps" or not len(frame):
            continue
        column = REASON_COLUMNS.get(kind)
        if column and column in frame:
            for reason, count in text(frame[column]).value_counts().items():
                counts[(kind, reason)] = int(count)
        else:
            counts[(kind, "")] = int(len(frame))
    return pd.Series(list(counts.values()), dtype=np.int64,
                     index=pd.MultiIndex.from_tuples(list(counts), names=["kind", "reason"]))


def event_counts(a: Analysis, b: Analysis) -> pd.DataFrame:
    """Events per kind and reason: totals and per complete step in each trace."""
    count_a, count_b = _event_counts(a), _event_counts(b)
    index = count_a.index.union(count_b.index)
    table = pd.DataFrame({"count_a": count_a.reindex(index, fill_value=0),
                          "count_b": count_b.reindex(index, fill_value=0)})
    table["per_step_a"] = table["count_a"] / max(len(a.complete_steps), 1)
    table["per_step_b"] = table["count_b"] / max(len(b.complete_steps), 1)
    table["per_step_delta"] = table["per_step_b"] - table["per_step_a"]
    return table.reset_index()


def fa_plan_changes(a: Analysis, b: Analysis) -> pd.DataFrame:
    """FA plans only A chose ('removed') or only B chose ('added')."""
    plans_a, plans_b = a.fa_plans, b.fa_plans
    if not len(plans_a) and not len(plans_b):
        return pd.DataFrame(columns=["change"] + PLAN_KEY)
    keys_a = set(map(tuple, plans_a[PLAN_KEY].astype(str).to_numpy())) if len(plans_a) else set()
    keys_b = set(map(tuple, plans_b[PLAN_KEY].astype(str).to_numpy())) if len(plans_b) else set()
    rows = [("removed", *key) for key in sorted(keys_a - keys_b)] + [("added", *key) for key in sorted(keys_b - keys_a)]
    return pd.DataFrame(rows, columns=["change"] + PLAN_KEY)


def allocations(a: Analysis, b: Analysis) -> pd.DataFrame:
    """Bytes per (location, owner) held by each run's buffers, and peak bytes per location."""
    def held(analysis):
        return analysis.memory_placement.set_index(["location", "owner"])["bytes"]

    held_a, held_b = held(a), held(b)
    index = held_a.index.union(held_b.index)
    table = pd.DataFrame({"bytes_a": held_a.reindex(index, fill_value=0),
                          "bytes_b": held_b.reindex(index, fill_value=0)})
    table["delta"] = table["bytes_b"] - table["bytes_a"]
    peaks = []
    for label, analysis in (("a", a), ("b", b)):
        peaks.append(analysis.memory_peaks.set_index("location")["peak_bytes"].rename(f"peak_{label}"))
    table = table.reset_index()
    peak_table = pd.concat(peaks, axis=1).reset_index().rename(columns={"index": "location"})
    return table.merge(peak_table, on="location", how="left") if len(table) else table


def syncs_per_step(a: Analysis, b: Analysis) -> pd.DataFrame:
    """Per (reason, backend): syncs and their time per step in each trace."""
    def per_step(analysis):
        return analysis.sync_summary.set_index(["reason", "backend"])[["syncs_per_step", "time_per_step_ns"]]

    s_a, s_b = per_step(a), per_step(b)
    table = s_a.add_suffix("_a").join(s_b.add_suffix("_b"), how="outer").fillna(0)
    if not len(table):
        return pd.DataFrame(columns=["reason", "backend", "syncs_per_step_a", "syncs_per_step_b"])
    table["syncs_per_step_delta"] = table["syncs_per_step_b"] - table["syncs_per_step_a"]
    return table.reset_index()


def finding_changes(a: Analysis, b: Analysis) -> pd.DataFrame:
    ids_a = {f.id: f for f in diagnose(a)}
    ids_b = {f.id: f for f in diagnose(b)}
    rows = [("disappeared", i, ids_a[i].severity, ids_a[i].statement) for i in sorted(ids_a.keys() - ids_b.keys())]
    rows += [("appeared", i, ids_b[i].severity, ids_b[i].statement) for i in sorted(ids_b.keys() - ids_a.keys())]
    rows += [("persists", i, ids_b[i].severity, ids_b[i].statement) for i in sorted(ids_a.keys() & ids_b.keys())]
    return pd.DataFrame(rows, columns=["change", "id", "severity", "statement"])


@dataclass
class Comparison:
    a: Analysis
    b: Analysis
    step_time: pd.DataFrame
    event_counts: pd.DataFrame
    fa_plans: pd.DataFrame
    allocations: pd.DataFrame
    syncs: pd.DataFrame
    findings: pd.DataFrame
    labels: tuple[str, str] = field(default=("A", "B"))

    @property
    def verdicts(self) -> pd.DataFrame:
        return self.step_time[self.step_time["verdict"] != "no clear difference"]

    def to_dict(self) -> dict:
        return json_ready({
            "a": str(self.a.trace.path), "b": str(self.b.trace.path), "labels": list(self.labels),
            "step_time": self.step_time.to_dict(orient="records"),
            "event_counts": self.event_counts.to_dict(orient="records"),
            "fa_plans": self.fa_plans.to_dict(orient="records"),
            "allocations": self.allocations.to_dict(orient="records"),
            "syncs": self.syncs.to_dict(orient="records"),
            "findings": self.findings.to_dict(orient="records"),
        })

    def sections(self) -> list[tuple[str, pd.DataFrame]]:
        changed_counts = self.event_counts[self.event_counts["per_step_delta"].abs() > 1e-9]
        return [
            ("Step time per context bucket (B - A, median; 95% bootstrap interval)", self._step_time_view()),
            ("Findings", self.findings),
            ("Event counts that changed (per step)", changed_counts),
            ("FlashAttention plans added / removed", self.fa_plans),
            ("Allocations per location and owner (bytes)", self.allocations),
            ("Syncs per step", self.syncs),
        ]

    def _step_time_view(self) -> pd.DataFrame:
        view = self.step_time.copy()
        for column in ("median_a_ns", "median_b_ns", "diff_ns", "ci_low_ns", "ci_high_ns"):
            view[column.replace("_ns", "_ms")] = view.pop(column) / 1e6
        return view

    def to_text(self) -> str:
        lines = [f"A: {self.a.trace.path}", f"B: {self.b.trace.path}", ""]
        verdicts = self.verdicts
        if len(verdicts):
            for row in verdicts.itertuples():
                lines.append(f"verdict [{row.config}, {row.n_tokens} token(s), context {row.context_from}+]: "
                             f"{row.verdict} by {abs(row.diff_pct):.1f}% "
                             f"(95% CI {row.ci_low_ns / 1e6:+.3g} to {row.ci_high_ns / 1e6:+.3g} ms)")
        else:
            lines.append("verdict: no step-time difference whose interval excludes zero")
        with pd.option_context("display.width", 180, "display.max_columns", 20, "display.max_colwidth", 60):
            for title, table in self.sections():
                lines += ["", f"== {title}", table.to_string(index=False) if len(table) else "(none)"]
        return "\n".join(lines)

    def to_html(self) -> str:
        parts = ["<!doctype html><meta charset='utf-8'><title>gpuscope compare</title>",
                 "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
                 "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style>",
                 f"<h1>gpuscope compare</h1><p>A: {html.escape(str(self.a.trace.path))}<br>"
                 f"B: {html.escape(str(self.b.trace.path))}</p>"]
        verdicts = self.verdicts
        parts.append("<ul>" + "".join(
            f"<li>{html.escape(str(r.config))}, {r.n_tokens} token(s), context {r.context_from}+: "
            f"<b>{r.verdict}</b> by {abs(r.diff_pct):.1f}%</li>" for r in verdicts.itertuples())
            + "</ul>" if len(verdicts) else "<p>No step-time difference whose interval excludes zero.</p>")
        for title, table in self.sections():
            parts.append(f"<h2>{html.escape(title)}</h2>")
            parts.append(table.to_html(index=False, float_format=lambda v: f"{v:.4g}") if len(table)
                         else "<p>(none)</p>")
        return "\n".join(parts)


def compare(a: Analysis, b: Analysis, labels: tuple[str, str] = ("A", "B")) -> Comparison:
    return Comparison(a=a, b=b, step_time=step_time(a, b), event_counts=event_counts(a, b),
                      fa_plans=fa_plan_changes(a, b), allocations=allocations(a, b), syncs=syncs_per_step(a, b),
                      findings=finding_changes(a, b), labels=labels)
