"""Before and after: two traces side by side. Step time per context bucket with the difference and a bootstrap
confidence interval (a verdict only where the interval excludes zero), event counts per kind and reason, FA plans
added and removed, allocation deltas per device and owner, syncs per step, and findings that appeared or
disappeared."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.analysis.fa_routes import PLAN_KEY
from gpuscope.analysis.facade import Analysis
from gpuscope.analysis.stats import bootstrap_median_difference
from gpuscope.doctor.findings import Finding, json_ready
from gpuscope.doctor.rules import diagnose
from gpuscope.markup import esc, notebook, pairs, table as html_table
from gpuscope.units import ARROW, duration_range, speed_change, terminal_width, text_table, wrap

# The column that tells events of a kind apart, where one does.
REASON_COLUMNS = {"gallocr_realloc": "reason", "sync": "reason", "sched_reserve": "trigger", "fa_plan": "kernel",
                  "copy": "mode", "buffer": "action", "mark": "name"}
MIN_BUCKET_STEPS = 5


def context_bucket(context: np.ndarray) -> np.ndarray:
    """Lower edge of each context's bucket: 0-255, 256-511, then powers of two (512-1023, 1024-2047, ...)."""
    context = np.asarray(context, np.int64)
    power = np.where(context < 512, 256, 2 ** np.floor(np.log2(np.maximum(context, 1))).astype(np.int64))
    return np.where(context < 512, context // 256 * 256, power)


def paired_steps(a: Analysis, b: Analysis) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both traces' complete steps, with the configurations they compare named alike: configurations of the same
    label pair up; two traces of one configuration each (a problem run and its fix, 'kv on host' against 'kv on the
    GPU') pair whatever their labels, named 'A's label / B's label' in both."""
    steps_a, steps_b = a.complete_steps, b.complete_steps
    labels_a, labels_b = set(steps_a["config"].astype(str)), set(steps_b["config"].astype(str))
    if len(labels_a) == 1 and len(labels_b) == 1 and labels_a != labels_b:
        both = f"{labels_a.pop()} / {labels_b.pop()}"
        steps_a, steps_b = steps_a.assign(config=both), steps_b.assign(config=both)
    return steps_a, steps_b


def step_time(steps_a: pd.DataFrame, steps_b: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (configuration, batch size, context bucket) present in both: median step time of each, B - A with its
    bootstrap interval, and a verdict where the interval excludes zero. steps_a, steps_b: paired_steps(a, b)."""
    def buckets(steps):
        return steps.assign(bucket=context_bucket(steps["context"].to_numpy()))

    steps_a, steps_b = buckets(steps_a), buckets(steps_b)
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
    table["delta_bytes"] = table["bytes_b"] - table["bytes_a"]
    peaks = []
    for label, analysis in (("a", a), ("b", b)):
        peaks.append(analysis.memory_peaks.set_index("location")["peak_bytes"].rename(f"peak_bytes_{label}"))
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


def finding_changes(findings_a: list[Finding], findings_b: list[Finding]) -> pd.DataFrame:
    """Findings by rule id: those only A has ('disappeared'), only B ('appeared'), and both ('persists', B's);
    `index` is the finding's place in its trace's list."""
    ids_a = {f.id: i for i, f in reversed(list(enumerate(findings_a)))}
    ids_b = {f.id: i for i, f in reversed(list(enumerate(findings_b)))}

    def rows(change, ids, findings, trace):
        return [(change, rule, findings[ids[rule]].severity, findings[ids[rule]].config, trace, ids[rule],
                 findings[ids[rule]].statement) for rule in sorted(ids)]

    return pd.DataFrame(rows("disappeared", {i: ids_a[i] for i in ids_a.keys() - ids_b.keys()}, findings_a, "a")
                        + rows("appeared", {i: ids_b[i] for i in ids_b.keys() - ids_a.keys()}, findings_b, "b")
                        + rows("persists", {i: ids_b[i] for i in ids_a.keys() & ids_b.keys()}, findings_b, "b"),
                        columns=["change", "id", "severity", "config", "trace", "index", "statement"])


# what tells two traces apart, from their meta.json, in the order people ask
_ENGINE_KEYS = ("name", "key", "backend", "hooks", "hook_series_sha256")
_CONFIG_NAMES = ("name", "label")


def trace_name(analysis: Analysis) -> str:
    """A trace's name: its folder without '.trace', else its scenario."""
    path = analysis.trace.path
    return Path(str(path)).name.removesuffix(".trace") if path else analysis.trace.meta.get("scenario") or "in memory"


def _engine_facts(engine: dict) -> dict:
    source = engine.get("source") or {}
    root = str(engine.get("root") or "\0")
    facts = {key: engine.get(key) for key in _ENGINE_KEYS}
    facts["source"], facts["upstream"] = source.get("id"), source.get("upstream")
    facts["patches"] = [p.get("name") for p in engine.get("patches") or []]
    # options that name the build's own folder differ with every build and say nothing
    facts["options"] = [option for option in engine.get("options") or [] if root not in option]
    return facts


def _config_facts(meta: dict) -> dict:
    configs = meta.get("configs") or []
    if len(configs) == 1:
        return {key: v for key, v in configs[0].items() if key not in _CONFIG_NAMES}
    return {"configurations": [c.get("label") or c.get("name") for c in configs]} if configs else {}


def _command_changes(a: list, b: list) -> list[tuple[str, str]]:
    """The spans of two command lines that differ, as (in A, in B); a changed value keeps its option ('-d 0,2048'
    against '-d 0,8192,32768')."""
    matcher = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    changes = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        if tag == "replace" and i1 and a[i1 - 1].startswith("-") and not a[i1].startswith("-"):
            i1, j1 = i1 - 1, j1 - 1
        changes.append((" ".join(a[i1:i2]) or "(none)", " ".join(b[j1:j2]) or "(none)"))
    return changes


def differences(meta_a: dict, meta_b: dict) -> pd.DataFrame:
    """What differs between two traces' recordings: the engine build (and its patches), the configuration's
    settings, the command line, the model, the workload, the scenario; one row per difference (what, a, b)."""
    rows = []
    groups = (("build", _engine_facts(meta_a.get("engine") or {}), _engine_facts(meta_b.get("engine") or {})),
              ("configuration", _config_facts(meta_a), _config_facts(meta_b)),
              ("model", {k: (meta_a.get("model") or {}).get(k) for k in ("name", "path")},
               {k: (meta_b.get("model") or {}).get(k) for k in ("name", "path")}),
              ("workload", meta_a.get("workload") or {}, meta_b.get("workload") or {}),
              ("recording", {k: meta_a.get(k) for k in ("source", "scenario")},
               {k: meta_b.get(k) for k in ("source", "scenario")}))
    for group, facts_a, facts_b in groups:
        for key in dict.fromkeys([*facts_a, *facts_b]):
            here, there = facts_a.get(key), facts_b.get(key)
            if key == "options" and here != there:
                here, there = sorted(set(here or []) - set(there or [])), sorted(set(there or []) - set(here or []))
            if here != there:
                rows.append((f"{group}: {key}", _shown(here), _shown(there)))
    command_a, command_b = meta_a.get("command") or [], meta_b.get("command") or []
    rows += [("command", here, there) for here, there in _command_changes(list(map(str, command_a)),
                                                                          list(map(str, command_b)))]
    return pd.DataFrame(rows, columns=["what", "a", "b"])


def _shown(value) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "(none)"
    return "(not recorded)" if value is None else str(value)


@dataclass
class Comparison:
    a: Analysis
    b: Analysis
    steps_a: pd.DataFrame         # each trace's complete steps, their configurations paired (paired_steps)
    steps_b: pd.DataFrame
    step_time: pd.DataFrame
    event_counts: pd.DataFrame
    fa_plans: pd.DataFrame
    allocations: pd.DataFrame
    syncs: pd.DataFrame
    findings: pd.DataFrame        # finding_changes: which findings appeared, disappeared, persist
    findings_a: list[Finding]
    findings_b: list[Finding]
    differences: pd.DataFrame     # what differs between the recordings (build, configuration, command, ...)
    labels: tuple[str, str] = field(default=("A", "B"))

    @property
    def names(self) -> tuple[str, str]:
        return trace_name(self.a), trace_name(self.b)

    @property
    def verdicts(self) -> pd.DataFrame:
        return self.step_time[self.step_time["verdict"] != "no clear difference"]

    def verdict_lines(self) -> list[str]:
        """One sentence per context bucket where B differs from A: '[kv on host / kv on the GPU, 1 token(s),
        context 0+] B is 11.0x faster: 15.6 -> 1.41 ms/token, 64.2 -> 709 tokens/s (B - A: -14.2 ms, 95% CI
        -14.3 to -14.1 ms)'."""
        label_b = self.labels[1]
        return [f"[{row.config}, {row.n_tokens} token(s), context {row.context_from}+] {label_b} is "
                f"{speed_change(row.median_a_ns, row.median_b_ns, row.n_tokens)} ({label_b} - {self.labels[0]}: "
                f"95% CI {duration_range(row.ci_low_ns, row.ci_high_ns, between=' to ', signed=True)})"
                for row in self.verdicts.itertuples()]

    def to_dict(self) -> dict:
        return json_ready({
            "a": str(self.a.trace.path), "b": str(self.b.trace.path), "labels": list(self.labels),
            "names": list(self.names), "differences": self.differences.to_dict(orient="records"),
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
            ("Step time per context bucket (B - A, median; 95% bootstrap interval)", self.step_time_table()),
            ("Findings", self.findings.drop(columns=["trace", "index"])),
            ("Event counts that changed (per step)", changed_counts),
            ("FlashAttention plans added / removed", self.fa_plans),
            ("Allocations per location and owner", self.allocations),
            ("Syncs per step", self.syncs),
        ]

    def step_time_table(self) -> pd.DataFrame:
        """Key columns first; the difference and its interval in one column; the verdict as a speed-up."""
        view = self.step_time.rename(columns={"ci_low_ns": "diff_ns_ci_low", "ci_high_ns": "diff_ns_ci_high"})
        view["change"] = [speed_change(a, b, n).split(":")[0] if verdict != "no clear difference" else verdict
                          for a, b, n, verdict in zip(view["median_a_ns"], view["median_b_ns"], view["n_tokens"],
                                                      view["verdict"])]
        return view[["config", "n_tokens", "context_from", "change", "median_a_ns", "median_b_ns", "diff_ns",
                     "diff_ns_ci_low", "diff_ns_ci_high", "diff_pct", "steps_a", "steps_b"]]

    # -- HTML: the report's pieces (gpuscope.report.compare_html) and a notebook's view ------------------------------

    def traces_html(self) -> str:
        """Which traces, and what differs between their recordings."""
        (label_a, label_b), (name_a, name_b) = self.labels, self.names
        traces = pairs([(label_a, f"{name_a} ({self.a.trace.path})"), (label_b, f"{name_b} ({self.b.trace.path})")])
        differs = html_table(self.differences) if len(self.differences) else \
            "<p class='muted'>Nothing their meta.json records differs (build, configuration, command, model).</p>"
        return traces + "<h3>What differs</h3>" + differs

    def verdict_html(self) -> str:
        lines = self.verdict_lines()
        return ("<ul>" + "".join(f"<li class='verdict'>{esc(line)}</li>" for line in lines) + "</ul>" if lines
                else "<p>No step-time difference whose 95% interval excludes zero.</p>")

    def findings_html(self) -> str:
        """What appeared and what disappeared, each linked to its card; then the cards of both traces."""
        if not len(self.findings):
            return "<p>No findings in either trace.</p>"
        labels = dict(zip("ab", self.labels))
        items = "".join(
            f"<li><b>{esc(r.change)}</b> ({esc(r.severity)}{', ' + esc(r.config) if r.config else ''}): "
            f"<a href='#finding-{r.trace}-{r.index}'><code>{esc(r.id)}</code></a> in {esc(labels[r.trace])}</li>"
            for r in self.findings.itertuples())
        cards = "".join(f"<h3>Findings of {esc(labels[key])}</h3>" + "".join(
            f.to_html(anchor=f"finding-{key}-{i}") for i, f in enumerate(findings)) if findings else ""
            for key, findings in (("a", self.findings_a), ("b", self.findings_b)))
        return f"<ul>{items}</ul>{cards}"

    def _repr_html_(self) -> str:
        """The comparison in a notebook: the report's sections without its plots (gpuscope.plots draws them)."""
        tables = "".join(f"<h3>{esc(heading)}</h3>{html_table(frame)}" for heading, frame in self.sections()
                         if heading != "Findings")
        body = (self.traces_html() + "<h3>Verdict</h3>" + self.verdict_html() + "<h3>Findings</h3>"
                + self.findings_html() + tables)
        return notebook(f"gpuscope compare: {self.names[0]} against {self.names[1]}", body)

    def to_text(self, width: int | None = None, rows: int | None = None) -> str:
        """The comparison for the terminal: no line wider than `width` (default: the terminal's), each table cut
        to `rows` rows where given."""
        width = width or terminal_width()
        lines = []
        for label, name, analysis in zip(self.labels, self.names, (self.a, self.b)):
            lines += wrap(f"{label}: {name} ({analysis.trace.path})", width)
        lines += ["", "what differs:"]
        for row in self.differences.itertuples() if len(self.differences) else []:
            lines += wrap(f"{row.what}: {row.a} {ARROW} {row.b}", width, indent="  ")
        if not len(self.differences):
            lines.append("  nothing their meta.json records")
        lines += ["", "verdict:"]
        for line in self.verdict_lines() or ["no step-time difference whose interval excludes zero"]:
            lines += wrap(line, width, indent="  ")
        for title, table in self.sections():
            lines += ["", f"== {title}"] + text_table(table, width=width, rows=rows)
        return "\n".join(lines)


def compare(a: Analysis, b: Analysis, labels: tuple[str, str] = ("A", "B")) -> Comparison:
    steps_a, steps_b = paired_steps(a, b)
    findings_a, findings_b = diagnose(a), diagnose(b)
    return Comparison(a=a, b=b, steps_a=steps_a, steps_b=steps_b, step_time=step_time(steps_a, steps_b),
                      event_counts=event_counts(a, b), fa_plans=fa_plan_changes(a, b), allocations=allocations(a, b),
                      syncs=syncs_per_step(a, b), findings=finding_changes(findings_a, findings_b),
                      findings_a=findings_a, findings_b=findings_b, differences=differences(a.trace.meta, b.trace.meta),
                      labels=labels)
