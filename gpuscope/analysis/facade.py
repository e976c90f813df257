"""`Analysis`: one object over a trace, one method per question; results are computed once and kept."""
from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd

from gpuscope.analysis import allocator, budget, context, copies, fa_routes, memory, speculation, syncs, timeline, \
    verdict
from gpuscope.analysis.bandwidth import device_table, resolve_bandwidth
from gpuscope.analysis.cpu_stacks import folded, time_per_step
from gpuscope.analysis.devices import device_names
from gpuscope.analysis.health import health, last_events
from gpuscope.analysis.kernels import family_time_per_step, gpu_busy_per_step
from gpuscope.analysis.steps import event_runs, main_process, step_table
from gpuscope.analysis.summary import TOP_FINDINGS, Summary, summarize
from gpuscope.markup import esc, notebook, table
from gpuscope.trace.ggml_names import op_names
from gpuscope.trace.model import Trace, load_trace
from gpuscope.trace.model_bytes import ModelBytes, model_bytes, run_settings
from gpuscope.trace.steps import join_to_steps


class Analysis:
    """Answers about one trace.

    model: the GGUF file the run used, read instead of the byte profile the trace recorded (traces made before
    gpuscope recorded one need it for the bandwidth floor); bandwidth: device name -> GB/s, overriding the trace's
    and the peak table's figures."""

    def __init__(self, trace: Trace | str | os.PathLike, *, model: str | os.PathLike | None = None,
                 bandwidth: dict[str, float] | None = None):
        self.trace = trace if isinstance(trace, Trace) else load_trace(trace)
        self.settings = run_settings(self.trace.meta)
        self.model_given = model is not None
        if model is not None:
            model_bytes(model)  # a file that is not a GGUF model fails here, in one line
            self.settings["model"] = str(model)
        self.given_bandwidth = dict(bandwidth or {})
        self._options = {"model": model, "bandwidth": bandwidth}
        self._parts: dict[str, Analysis] = {}

    def table(self, kind: str) -> pd.DataFrame:
        return self.trace.table(kind)

    # -- steps -----------------------------------------------------------------------------------------------

    @functools.cached_property
    def steps(self) -> pd.DataFrame:
        """One row per decode step (see gpuscope.analysis.steps)."""
        session = self.trace.tables.get("steps")
        return step_table(self.table("decode_begin"), self.table("ubatch"), self.table("decode_submitted"),
                          self.table("decode_synced"), session_steps=session, meta=self.trace.meta)

    @functools.cached_property
    def complete_steps(self) -> pd.DataFrame:
        return self.steps[self.steps["complete"] & self.steps["wall_ns"].notna()]

    def in_step(self, kind: str) -> pd.Series:
        """The step each event of `kind` happened in (<NA>: none), aligned with the kind's table."""
        return join_to_steps(self.table(kind), self.steps, by_thread=True)

    # -- configurations ------------------------------------------------------------------------------------------

    @functools.cached_property
    def configs(self) -> list[str]:
        """The configuration labels of the trace's steps, in the order they ran."""
        return [str(c) for c in pd.unique(self.steps["config"])] if len(self.steps) else []

    def of_config(self, config: str) -> "Analysis":
        """The same questions about one configuration: an Analysis of its steps and events alone."""
        if len(self.configs) <= 1:
            return self
        if config not in self._parts:  # the doctor asks once per rule run and again to compare configurations
            self._parts[config] = Analysis(config_trace(self.trace, self.steps, config), **self._options)
        return self._parts[config]

    @functools.cached_property
    def config_table(self) -> pd.DataFrame:
        """Per configuration and depth: decode ms per token, tokens/s, growth, floor share, rank (see verdict)."""
        return verdict.config_table(self.steps, self.fits, self.floor)

    @functools.cached_property
    def config_ranking(self) -> pd.DataFrame:
        """One row per configuration, fastest first: median decode ms per token, its quartiles, tokens/s, slowdown."""
        return verdict.config_ranking(self.steps)

    @functools.cached_property
    def step_time_bands(self) -> pd.DataFrame:
        """Per configuration, batch size and stretch of context: median step time and its interquartile range."""
        return verdict.step_time_bands(self.steps)

    @functools.cached_property
    def slower_configs(self) -> pd.DataFrame:
        return verdict.slower_configs(self.config_table)

    # -- step time against context -----------------------------------------------------------------------------

    @functools.cached_property
    def fits(self) -> pd.DataFrame:
        return context.fit_groups(self.steps)

    @functools.cached_property
    def step_events(self) -> pd.DataFrame:
        return context.step_events(self.steps, self.in_step("gallocr_realloc"), self.in_step("sched_reserve"),
                                   self.in_step("fa_plan"))

    @functools.cached_property
    def breakpoints(self) -> pd.DataFrame:
        return context.find_breakpoints(self.steps, self.step_events)

    def settings_of(self, config: str | None) -> dict:
        """KV cache types and tensor split of a configuration label (the run's defaults for unknown labels)."""
        return self.settings["configs"].get(config, self.settings["default"]) if config is not None else \
            self.settings["default"]

    def model_of(self, config: str | None = None) -> ModelBytes | None:
        """The model's byte counts under a configuration's cache types: from the model file given as model=, else
        as the trace recorded them when it was made (never from a file the trace names); None when neither."""
        settings = self.settings_of(config)
        if self.model_given:
            return model_bytes(self.settings["model"], settings["type_k"], settings["type_v"])
        recorded = self.trace.meta.get("model_bytes")
        if isinstance(recorded, dict):
            return ModelBytes.from_meta(recorded, settings["type_k"], settings["type_v"])
        return None

    @property
    def model(self) -> ModelBytes | None:
        return self.model_of(None)

    @functools.cached_property
    def devices(self) -> pd.DataFrame:
        return device_table(main_process(self.table("device_info")))

    @functools.cached_property
    def device_names(self) -> pd.DataFrame:
        """Per configuration, what each RPC device is called in the configuration's text (rpc:0), against every
        spelling the engine gave it (RPC2, RPC0[127.0.0.1:<port>]): see gpuscope.analysis.devices."""
        return device_names(self.trace.meta, main_process(self.table("device_info")))

    @functools.cached_property
    def bandwidth(self) -> pd.DataFrame:
        return resolve_bandwidth(self.devices, self.trace.meta, self.given_bandwidth)

    def run_of(self, config: str) -> int:
        runs = self.steps.loc[self.steps["config"] == config, "run"]
        return int(runs.iloc[0]) if len(runs) else 0

    def shares_of(self, config: str) -> dict[str, dict[str, float]]:
        """Where the weights and the KV cache of a configuration's run are, as shares per location."""
        return context.placement_shares(memory.placement(self.buffers, self.run_of(config)), self.model_of(config))

    @functools.cached_property
    def floor(self) -> pd.DataFrame | None:
        """Per complete step of the target model: bandwidth floor, bytes read and efficiency (NaN where a device's
        bandwidth is unknown); None without the model's byte counts."""
        parts = []
        # the recorded byte counts are the target model's: a draft model's steps read another model
        target_steps = self.complete_steps[self.complete_steps["role"] != "draft"]
        for config, steps in target_steps.groupby("config", sort=False):
            model = self.model_of(config)
            if model is None:
                return None
            parts.append(context.bandwidth_floor(steps, model, self.bandwidth, self.shares_of(config)))
        return pd.concat(parts, ignore_index=True) if parts else None

    def floor_slope_ns_per_cell(self, config: str) -> float:
        """How fast a configuration's floor grows per context cell, NaN when unknown."""
        model = self.model_of(config)
        if model is None:
            return np.nan
        return context.floor_slope_ns_per_cell(model, self.bandwidth, self.shares_of(config))

    # -- budget --------------------------------------------------------------------------------------------------

    @functools.cached_property
    def budget(self) -> pd.DataFrame:
        return budget.step_budget(self.steps, self.table("sync"), self.table("copy"), self.table("split_end"),
                                  self.table("sched_reserve"), self.table("ubatch"))

    @functools.cached_property
    def budget_summary(self) -> pd.DataFrame:
        return budget.budget_summary(self.budget)

    @functools.cached_property
    def collector_budget(self) -> pd.DataFrame:
        """Per complete step, what the collectors saw where they ran (empty otherwise): CPU time of the engine's
        sampled threads by category (`cpu:<category>`, from cpu_stacks) and GPU time by kernel family
        (`gpu:<family>`, from kernels; overlapping streams count twice) with `gpu_busy_ns` (their union)."""
        return budget.collector_budget(self.complete_steps, self.cpu_time, self.gpu_families, self.gpu_busy)

    # -- collectors' tables against steps (None where that collector did not run) --------------------------------

    @functools.cached_property
    def gpu_busy(self) -> pd.DataFrame | None:
        """Per complete step and GPU: busy time, idle gaps, lead and tail (gpuscope.analysis.kernels)."""
        kernels = self.trace.tables.get("kernels")
        return gpu_busy_per_step(kernels, self.complete_steps) if _has_rows(kernels) else None

    @functools.cached_property
    def gpu_families(self) -> pd.DataFrame | None:
        """Per complete step, GPU, kernel family and FA kind: activities and their time."""
        kernels = self.trace.tables.get("kernels")
        return family_time_per_step(kernels, self.complete_steps) if _has_rows(kernels) else None

    @functools.cached_property
    def cpu_time(self) -> pd.DataFrame | None:
        """Per complete step and category: sampled CPU time of the engine's threads (gpuscope.analysis.cpu_stacks)."""
        stacks = self.trace.tables.get("cpu_stacks")
        return time_per_step(stacks, self.complete_steps) if _has_rows(stacks) else None

    @functools.cached_property
    def folded_stacks(self) -> pd.DataFrame | None:
        """Folded native CPU stacks (what a flame graph draws), most time first."""
        stacks = self.trace.tables.get("cpu_stacks")
        return folded(stacks) if _has_rows(stacks) else None

    # -- allocator -----------------------------------------------------------------------------------------------

    @functools.cached_property
    def allocator(self) -> pd.DataFrame:
        return allocator.per_step(self.steps, self.table("gallocr_realloc"), self.table("gallocr_buffer"),
                                  self.table("sched_reserve"))

    @functools.cached_property
    def allocator_churn(self) -> pd.DataFrame:
        return allocator.churn(self.table("gallocr_realloc"), self.table("sched_reserve"), self.steps)

    # -- FlashAttention routes and placement --------------------------------------------------------------------

    @functools.cached_property
    def fa_plans(self) -> pd.DataFrame:
        return fa_routes.plans(self.table("fa_plan"), self.steps)

    @functools.cached_property
    def fa_none(self) -> pd.DataFrame:
        return fa_routes.none_plans(self.table("fa_plan"))

    @functools.cached_property
    def fa_route_changes(self) -> pd.DataFrame:
        return fa_routes.route_changes(self.table("fa_plan"))

    @functools.cached_property
    def op_placements(self) -> pd.DataFrame:
        return fa_routes.placements(self.table("op_placement"), op_names(self.trace.meta.get("engine")))

    # -- syncs ------------------------------------------------------------------------------------------------------

    @functools.cached_property
    def syncs(self) -> pd.DataFrame:
        return syncs.per_step(self.steps, self.table("sync"))

    @functools.cached_property
    def sync_summary(self) -> pd.DataFrame:
        return syncs.summary(self.steps, self.syncs)

    @functools.cached_property
    def eval_callback(self) -> pd.DataFrame:
        return syncs.eval_callback(self.steps, self.table("sync"))

    # -- memory ----------------------------------------------------------------------------------------------------

    @functools.cached_property
    def buffers(self) -> pd.DataFrame:
        frame = main_process(self.table("buffer"))
        return memory.buffer_lifetimes(frame, event_runs(frame))

    @functools.cached_property
    def memory_timeline(self) -> pd.DataFrame:
        return memory.timeline(self.buffers)

    @functools.cached_property
    def memory_peaks(self) -> pd.DataFrame:
        return memory.peaks(self.buffers)

    @functools.cached_property
    def memory_placement(self) -> pd.DataFrame:
        return memory.placement(self.buffers)

    @functools.cached_property
    def split_imbalance(self) -> pd.DataFrame:
        """Per configuration: weight bytes per offload device against the split asked for."""
        parts = []
        for config in pd.unique(self.steps["config"]) if len(self.steps) else [None]:
            run = self.run_of(config) if config is not None else None
            placed = memory.placement(self.buffers, run)
            weights = placed[placed["owner"] == "weights"].groupby("location")["bytes"].sum()
            model = self.model_of(config)
            table = memory.split_imbalance(weights, self.settings_of(config)["tensor_split"], self.devices,
                                           model.layer_bytes if model is not None else ())
            parts.append(table.assign(config=config))
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()

    # -- splits and copies ----------------------------------------------------------------------------------------

    @functools.cached_property
    def copy_events(self) -> pd.DataFrame:
        return copies.copy_events(self.steps, self.table("copy"))

    @functools.cached_property
    def copies(self) -> pd.DataFrame:
        return copies.per_step(self.steps, self.copy_events)

    @functools.cached_property
    def copy_pairs(self) -> pd.DataFrame:
        return copies.pair_summary(self.steps, self.copy_events)

    @functools.cached_property
    def splits(self) -> pd.DataFrame:
        return copies.splits_per_step(self.steps, self.table("split_begin"))

    @functools.cached_property
    def meta_parts(self) -> pd.DataFrame:
        """Tensor split: each device's parts of the meta backend's subgraphs per step."""
        return copies.meta_parts_per_step(self.steps, self.table("meta_part"))

    # -- speculative decoding ----------------------------------------------------------------------------------------

    @functools.cached_property
    def speculation(self) -> speculation.Speculation:
        """Acceptance, time in draft and verify, and tokens/s against the target alone, per configuration."""
        return speculation.speculation(self.trace.tables.get("steps"), self.trace.tables.get("spec_rounds"))

    # -- time --------------------------------------------------------------------------------------------------------

    @functools.cached_property
    def t0_ns(self) -> int:
        """The trace's time origin (its first event): zero on every time axis that shows it."""
        return timeline.time_origin(self.trace.tables, self.steps)

    @functools.cached_property
    def bands(self) -> pd.DataFrame:
        """The spans of each configuration's run and of each depth in it (gpuscope.analysis.timeline.bands)."""
        return timeline.bands(self.steps)

    def span_of(self, rows: pd.DataFrame | None = None, config: str | None = None) -> tuple[int, int] | None:
        """The span of the trace some rows (steps or events) or a configuration refer to (timeline.span_of)."""
        return timeline.span_of(self.steps, rows, config)

    # -- health ------------------------------------------------------------------------------------------------------

    @functools.cached_property
    def health(self) -> dict:
        return health(self.trace.meta, self.steps)

    def last_events(self, count: int = 12) -> pd.DataFrame:
        return last_events(self.trace.tables, count)

    # -- in a notebook ---------------------------------------------------------------------------------------------

    def summary(self, findings: list | None = None, top: int = TOP_FINDINGS) -> Summary:
        """Configurations, step time, tokens/s and noise in a few lines (text and HTML), with the `top` of the
        doctor's findings where they are given: a.summary(diagnose(a)). See gpuscope.analysis.summary."""
        return summarize(self, findings, top)

    def _repr_html_(self) -> str:
        """The summary, then the configurations side by side, where the step time went and the cross-device
        copies: the report's tables, as a notebook cell shows them."""
        parts = [("Configurations side by side (decode, fastest first at each depth)",
                  self.config_table if len(self.configs) > 1 else None),
                 ("Where the step time went (all complete steps)", self.budget_summary),
                 ("Cross-device copies per step, by device pair", self.copy_pairs)]
        body = self.summary().to_html() + "".join(f"<h3>{esc(title)}</h3>{table(frame)}" for title, frame in parts
                                                  if frame is not None and len(frame))
        return notebook(f"gpuscope analysis of {self.trace.path or 'a trace in memory'}", body)

    def __repr__(self) -> str:
        where = self.trace.path or "in memory"
        return f"Analysis({where}: {len(self.steps)} steps)"


def _has_rows(frame: pd.DataFrame | None) -> bool:
    return frame is not None and len(frame) > 0


def config_trace(trace: Trace, steps: pd.DataFrame, config: str) -> Trace:
    """The part of a trace that one configuration made: a session sweep's tables carry a `config` column, a
    combined trace's a `run` column (the steps say which runs the configuration had)."""
    runs = set(steps.loc[steps["config"] == config, "run"].astype(int))
    tables = {}
    for kind, frame in trace.tables.items():
        if "config" in frame.columns:
            frame = frame[(frame["config"].astype(str) == config).to_numpy(bool)]
        elif "run" in frame.columns:
            frame = frame[frame["run"].isin(runs).to_numpy(bool)]
        tables[kind] = frame.reset_index(drop=True)
    meta = {**trace.meta, "configs": [c for c in trace.meta.get("configs") or [] if str(c.get("label")) == config]}
    return Trace(meta=meta, tables=tables, path=trace.path)
