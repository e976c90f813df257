"""The doctor's rules: each reads the analyses of one trace and returns the findings it supports.

Every rule states its threshold here, next to why: a finding on a clean run is a defect, so each threshold sits
above what clean runs of the engine show and each rule stays silent when its inputs are missing (no model file,
no known bandwidth) rather than guessing. Rule ids are stable: scripts and `gpuscope compare` key on them.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from gpuscope.analysis.columns import text
from gpuscope.analysis.noise import OUTLIER_RATIO, step_noise
from gpuscope.analysis.steps import is_decode
from gpuscope.analysis.verdict import decode_steps
from gpuscope.doctor.findings import Finding
from gpuscope.doctor.registry import RULES, rule
from gpuscope.doctor.speculation import speculation_net_effect  # noqa: F401 (importing it registers its rule)
from gpuscope.units import duration, duration_range, share as percent, size, times, times_range

# A problem must touch at least this many steps, and this share of them, to be a pattern rather than an event.
MIN_STEPS = 3
MIN_STEP_SHARE = 0.10


def _steps_total(a) -> float:
    return float(a.complete_steps["wall_ns"].sum())


def _setting(a, key: str):
    """A setting of the one configuration `a` holds, as its maker recorded it (None: not recorded, or several)."""
    configs = a.trace.meta.get("configs") or []
    return configs[0].get(key) if len(configs) == 1 else None


# -- trace health ---------------------------------------------------------------------------------------------------

@rule("trace.lost-events", scope="trace")
def lost_events(a) -> list[Finding]:
    h = a.health
    dropped = h["strings_dropped"] + h["writer_dropped"]
    if not h["lost"] and not dropped:
        return []
    severity = "critical" if h["lost_share"] > 0.01 else "warning"
    return [Finding(
        severity=severity,
        statement=f"{h['lost']} of {h['written']} events ({percent(h['lost_share'])}) were overwritten before they "
                  "were read: counts per step below undercount, steps may miss their begin or end",
        evidence={"written": h["written"], "read": h["read"], "lost": h["lost"],
                  "strings_dropped": h["strings_dropped"], "writer_dropped": h["writer_dropped"]},
        cause="the ring was too small for the event rate, or the reader drained it too slowly",
        actions=["record again with a larger ring: gpuscope record --capacity 4194304 ...",
                 "or record a shorter run"])]


_SIGNAL_CAUSES = {
    "SIGILL": "an instruction the processor or sandbox does not allow: a build for another CPU (GGML_NATIVE on a "
              "machine that advertises AMX or AVX-512 the sandbox refuses)",
    "SIGABRT": "the engine aborted on purpose: a GGML_ASSERT or GGML_ABORT (for example no FlashAttention kernel "
               "at compute time, or an allocation that failed)",
    "SIGSEGV": "an invalid memory access in the engine or in the program calling it",
    "SIGBUS": "a bad memory mapping (a model file truncated or changed while mapped)",
    "SIGFPE": "an arithmetic fault (integer division by zero)",
}


@rule("engine.crashed", scope="trace")
def crashed(a) -> list[Finding]:
    h = a.health
    if not h["crashed"]:
        return []
    signal = h["crash_signal"]
    name = signal if isinstance(signal, str) else f"signal {signal}"
    in_flight = h["steps_in_flight"]
    where = f"during decode step {in_flight[-1]}" if in_flight else "outside any decode step"
    last = a.last_events(8)
    return [Finding(
        severity="critical",
        statement=f"The engine died ({name}) {where}; the trace holds every event committed before it",
        evidence={"signal": name, "exit": h["exit"], "ring_state": h["state"], "steps_recorded": h["steps"],
                  "steps_in_flight": in_flight},
        cause=_SIGNAL_CAUSES.get(name, "see the last events before the crash"),
        actions=["read the last events below: the last step's batch and the last plan or allocation before it",
                 "rerun the same command under gdb (or with a core dump) for the native stack"],
        rows=last, rows_kind="last events")]


# -- allocator ---------------------------------------------------------------------------------------------------------

@rule("allocator.churn")
def allocator_churn(a) -> list[Finding]:
    per_step = a.allocator[a.allocator["step"].isin(a.complete_steps["step"])]
    busy = per_step[(per_step["reallocs"] > 0) | (per_step["reserves"] > 0) | (per_step["buffer_reallocs"] > 0)]
    n = len(a.complete_steps)
    if len(busy) < MIN_STEPS or len(busy) < MIN_STEP_SHARE * n:
        return []
    lost = float(busy["time_lost_ns"].sum())
    # one backend re-plans inside the allocator, untimed; several go through the scheduler's timed re-reserve
    share = lost / _steps_total(a) if _steps_total(a) and busy["reserves"].any() else None
    churn = a.allocator_churn
    alternating = churn[churn["alternating"]] if len(churn) else churn
    reasons = {c.removeprefix("realloc_"): int(per_step[c].sum()) for c in per_step.columns
               if c.startswith("realloc_")}
    if len(alternating):
        sizes = alternating.iloc[0]["sizes"]
        pattern = f"graph sizes alternating between {' / '.join(map(str, sizes))} nodes"
        cause = ("two graphs of different sizes take turns on one graph allocator (alternating batch shapes, or "
                 "two graphs sharing one scheduler): each turn frees and reallocates the compute buffers")
    else:
        pattern = "reasons " + ", ".join(f"{k} {v}" for k, v in reasons.items())
        cause = ("the graph changes between steps so that the allocator's reserved layout no longer fits "
                 "(a node count change, or a tensor outgrowing its slot)")
    # timed re-reserves under 1% of the step are worth knowing, not worth a change (a partial offload's prefill and
    # decode graphs on the H200: 10 of 100 steps re-planned, 0.2% of the time)
    severity = "warning" if share is None else "critical" if share >= 0.10 else "warning" if share >= 0.01 \
        else "info"
    rows = a.table("gallocr_realloc")
    rows = rows.assign(in_step=a.in_step("gallocr_realloc"))
    rows = rows[rows["in_step"].notna()]
    return [Finding(
        severity=severity,
        statement=f"The graph allocator re-planned in {len(busy)} of {n} steps ({pattern})"
                  + (f"; re-reserves took {duration(lost)} in all" if busy["reserves"].any() else ""),
        evidence={"steps_with_reallocation": len(busy), "steps": n, "reallocations": int(busy["reallocs"].sum()),
                  "reasons": reasons, "re_reserves": int(busy["reserves"].sum()),
                  "bytes_freed": int(busy["bytes_freed"].sum()), "bytes_allocated": int(busy["bytes_allocated"].sum()),
                  "time_lost_ns": lost, "alternating_allocators": int(len(alternating)),
                  "saving_method": "the scheduler's re-reserve time measured in these steps" if share is not None
                  else "none: one backend re-plans inside the allocator, untimed"},
        cause=cause,
        actions=["reserve once for the largest graph (ggml_backend_sched_reserve / gallocr_reserve with the "
                 "worst-case batch) so smaller graphs fit the same layout",
                 "give each graph shape its own allocator or scheduler instead of sharing one",
                 "keep batch shapes steady between steps",
                 "GGML_SCHED_DEBUG_REALLOC=1 aborts at the first unexpected reallocation, for a backtrace"],
        share=share, rows=rows.drop(columns=["in_step"]), rows_kind="gallocr_realloc")]


@rule("graph.rebuilt")
def graph_rebuilt(a) -> list[Finding]:
    steps = a.complete_steps.sort_values("t_begin_ns")
    if len(steps) < 8 or steps["graph_reused"].isna().all():
        return []
    by_ctx = steps.groupby(["run", "ctx"], sort=False)
    first = steps["cold_start"]
    kv_changed = by_ctx["n_kv"].diff().fillna(0) != 0  # the KV view grows every 256 cells: a rebuild is due
    reused = steps["graph_reused"].astype(bool)
    rebuilt = ~reused & ~first & ~kv_changed
    candidates = (~first & ~kv_changed).sum()
    if rebuilt.sum() < MIN_STEPS or rebuilt.sum() < 0.5 * candidates:
        return []
    budget = a.budget.set_index("step")
    if "host_prepare" not in budget.columns:
        return []
    host = budget["host_prepare"]
    rebuilt_ids, reused_ids = steps.loc[rebuilt, "step"], steps.loc[reused & ~first, "step"]
    host_rebuilt = host.reindex(rebuilt_ids).dropna()
    baseline = float(host.reindex(reused_ids).dropna().median()) if len(reused_ids) else 0.0
    cost = float(np.clip(host_rebuilt - (0.0 if np.isnan(baseline) else baseline), 0, None).sum())
    share = cost / _steps_total(a) if _steps_total(a) else None
    shape_changed = (by_ctx["n_tokens"].diff().fillna(0) != 0) | (by_ctx["n_outputs"].diff().fillna(0) != 0)
    changed = int((rebuilt & shape_changed).sum())
    shapes = sorted(set(zip(steps.loc[rebuilt, "n_tokens"].astype(int), steps.loc[rebuilt, "n_outputs"].astype(int))))
    if changed >= 0.5 * rebuilt.sum():
        cause = (f"the batch shape changes from step to step ({len(shapes)} distinct token/output counts): a graph "
                 "is reused only for the same shape, so each step builds, splits and allocates a new one")
    else:
        cause = ("graphs are rebuilt although the batch shape stays the same: graph reuse is off "
                 "(LLAMA_GRAPH_REUSE_DISABLE) or something between steps invalidates it")
    rows = steps.loc[rebuilt, ["step", "n_tokens", "n_outputs", "n_kv", "n_nodes", "wall_ns"]].assign(
        host_prepare_ns=host.reindex(rebuilt_ids).to_numpy())
    return [Finding(
        # rebuilding is a finding whatever it costs; a warning once it costs a measurable share of the steps
        severity="warning" if share is not None and share >= 0.02 else "info",
        statement=f"The compute graph was rebuilt in {int(rebuilt.sum())} of {int(candidates)} steps that could "
                  f"have reused it; building costs {duration(cost / max(len(host_rebuilt), 1))} of CPU per step",
        evidence={"rebuilt_steps": int(rebuilt.sum()), "reusable_steps": int(candidates),
                  "rebuilt_with_new_shape": changed, "shapes": [list(s) for s in shapes[:10]],
                  "host_prepare_rebuilt_median_ns": float(host_rebuilt.median()) if len(host_rebuilt) else None,
                  "host_prepare_reused_median_ns": baseline if len(reused_ids) else None,
                  "cpu_cost_ns": cost,
                  "saving_method": "host preparation of the rebuilt steps above the reused steps' median"},
        cause=cause,
        actions=["keep the batch shape steady: pad decode batches to a fixed token count, keep prefill and decode "
                 "in separate calls",
                 "check that LLAMA_GRAPH_REUSE_DISABLE is not set"],
        share=share, rows=rows, rows_kind="steps")]


# -- FlashAttention and placement ---------------------------------------------------------------------------------

@rule("fa.route-none")
def fa_route_none(a) -> list[Finding]:
    none = a.fa_none
    if not len(none):
        return []
    shapes = none.drop_duplicates(["device", "head_dim_k", "head_dim_v", "type_k", "type_v", "reason"])
    reasons = sorted(set(none["reason"]))
    at_compute = bool((none["caller"] == "compute").any())
    # what the fallback's splits, copies and input syncs take: an upper bound of the saving, not the saving (the
    # attention still runs somewhere once FlashAttention is off)
    budget = a.budget
    fallback_share = None
    if len(budget) and budget["wall_ns"].sum():
        devices = set(none["device"])
        columns = [c for c in budget.columns if (c.startswith("split:") and c[6:] not in devices)
                   or c in ("copy", "sync:input_copy", "sync:async_fallback")]
        fallback_share = float(budget[columns].sum().sum() / budget["wall_ns"].sum())
    f16_kv = set(none["type_k"].astype(str)) | set(none["type_v"].astype(str)) <= {"f16", "bf16"}
    turn_off = "turn FlashAttention off for this model (-fa off / flash_attn='off') rather than fall back op by op"
    other_kv = "use a KV cache type with a kernel here (f16, or q8_0 with a build that has it)"
    rebuild = "build the engine with the kernels for this head size / architecture"
    if reasons[0] == "kv_type" and not f16_kv:
        actions, remedy = [other_kv, turn_off, rebuild], {"type_k": "f16", "type_v": "f16"}
    else:  # a head size, GQA ratio, mask or architecture with no kernel: the KV type is not the problem
        actions, remedy = [turn_off, rebuild] + ([] if f16_kv else [other_kv]), {"flash_attn": "off"}
    return [Finding(
        severity="critical",
        statement=f"FlashAttention has no kernel for {len(shapes)} attention shape(s) "
                  f"on {', '.join(sorted(set(none['device'])))} (reason: {', '.join(reasons)})"
                  + ("; at compute time, where the engine aborts" if at_compute else
                     ": the scheduler runs these ops on another backend"),
        evidence={"shapes": _records(shapes[["device", "head_dim_k", "head_dim_v", "q_heads", "kv_heads", "type_k",
                                             "type_v", "reason"]]),
                  "callers": sorted(set(none["caller"])), "fallback_time_share": fallback_share,
                  "saving_method": "none: the fallback's splits and copies take fallback_time_share of the steps, "
                                   "an upper bound; what FlashAttention off saves needs a run with it off"},
        cause={"head_size": "the K/V head size has no kernel on this device (or K and V head sizes differ)",
               "gqa": "the head size needs a GQA ratio this model does not have",
               "kv_type": "the KV cache type has no FlashAttention kernel here",
               "mask_broadcast": "the mask is broadcast over heads (mask->ne[2] != 1)",
               "compiled_out": "the build has no FlashAttention kernels",
               "arch": "no kernel for this GPU architecture"}.get(reasons[0], "see the reason column"),
        actions=actions, share=None, remedy=remedy, rows=none, rows_kind="fa_plan")]


@rule("placement.off-device")
def off_device(a) -> list[Finding]:
    placed = a.op_placements
    if not len(placed):
        return []
    # ops moved onto a device from a CPU layer are the scheduler's op offload (a speed-up, typically of prefill
    # batches): never a fault, whatever the op
    offloaded = (placed["layer_backend"].str.upper() == "CPU") & (placed["backend"].str.upper() != "CPU")
    fallback = placed[~offloaded & (placed["is_attention"] | (placed["backend"].str.upper() == "CPU"))]
    if not len(fallback):
        return []
    phase = _phase_of(a, "op_placement", fallback["seq"])
    attention = fallback[fallback["is_attention"]]
    pairs = sorted(set(zip(fallback["layer_backend"], fallback["backend"])))
    copy_share = float(a.copy_pairs["share"].sum()) if len(a.copy_pairs) else None
    if len(attention):
        statement = (f"{len(attention)} FlashAttention op(s) of {attention['layer'].nunique()} layer(s) run on "
                     "another backend than their layer's device")
        severity = "critical" if phase != "prefill" else "warning"
    else:
        # other ops kept on the CPU are often asked for (--override-tensor for experts): worth knowing, not a fault
        statement = (f"{len(fallback)} op(s) of {fallback['layer'].nunique()} layer(s) run on the CPU, not on their "
                     "layer's device")
        severity = "info"
    return [Finding(
        severity=severity,
        statement=statement + f" ({', '.join(f'{layer} -> {backend}' for layer, backend in pairs)})",
        evidence={"ops": sorted(set(fallback["op"])), "layers": sorted(int(x) for x in set(fallback["layer"]))[:40],
                  "attention_ops": int(len(attention)), "device_pairs": [list(p) for p in pairs],
                  "copy_time_share": copy_share,
                  "saving_method": "none: the copies around these ops are counted in copies.cross-device when they "
                                   "cost time; what moving the ops back saves needs a run with the fix"},
        cause=("the layer's device cannot run these ops (no kernel for this shape or type, see fa.route-none) or "
               "their inputs live elsewhere (weights kept on the CPU by --override-tensor, a KV cache kept off "
               "the layer's device), so the scheduler splits the graph around them"),
        actions=["use a KV type and head size the device has kernels for",
                 "keep the layer's weights and KV cache on its device (check --override-tensor, --no-kv-offload)",
                 "GGML_SCHED_DEBUG=2 prints the split assignment"],
        share=None, rows=fallback, rows_kind="op_placement", phase=phase)]


# a decode step on the host's layers below this share is not worth moving them for: clean GPU runs keep the CPU split
# (the output head, sampling glue) under 2%
PARTIAL_OFFLOAD_SHARE = 0.10


@rule("placement.partial-offload")
def partial_offload(a) -> list[Finding]:
    layers = int((a.trace.meta.get("model") or {}).get("n_layer") or 0)
    asked = _setting(a, "n_gpu_layers")
    if not layers or asked is None or asked < 0 or asked >= layers:
        return []
    decode = decode_steps(a.steps)
    budget = a.budget.set_index("step").reindex(decode["step"]).dropna(how="all")
    gpu_splits = [c for c in budget.columns if c.startswith("split:") and c != "split:CPU"]
    if not len(budget) or "split:CPU" not in budget.columns or not gpu_splits:
        return []
    step_ms, host_ms = budget["wall_ns"].mean() / 1e6, budget["split:CPU"].mean() / 1e6
    if host_ms < PARTIAL_OFFLOAD_SHARE * step_ms:
        return []
    on_host = layers - asked
    # the host's layers would cost on the device what its own layers cost there, per layer
    device_ms = float(budget[gpu_splits].sum(axis=1).mean() / 1e6) * on_host / max(asked, 1)
    saving_ms = max(host_ms - device_ms, 0.0)
    placed = a.memory_placement
    weights = placed[placed["owner"] == "weights"].groupby("location")["bytes"].sum()
    device = weights.drop(labels=["CPU"], errors="ignore")
    per_layer = float(device.sum()) / max(asked, 1)
    free = a.devices.set_index("device")["memory_free"].dropna() if len(a.devices) else pd.Series(dtype=float)
    fits = {name: int(bytes_free // per_layer) for name, bytes_free in free.items() if per_layer}
    room = (", ".join(f"{name} has room for about {n} more" for name, n in fits.items()) if fits else
            "the trace records no free device memory: check that the rest fits")
    return [Finding(
        severity="critical" if saving_ms >= 0.5 * step_ms else "warning",
        statement=f"{on_host} of {layers} layers run on the host: the CPU's part takes "
                  f"{duration_range(host_ms * 1e6, step_ms * 1e6, between=' of ')} per decode step",
        evidence={"layers": layers, "n_gpu_layers": asked, "host_ms_per_step": host_ms, "step_ms": step_ms,
                  "device_ms_per_step_for_those_layers": device_ms, "weight_bytes_per_layer": per_layer,
                  "weight_bytes_by_location": {k: int(v) for k, v in weights.items()}, "layers_that_fit": fits,
                  "saving_method": "the CPU split's time per decode step, less what the device takes for as many "
                                   "of its own layers"},
        cause=f"n_gpu_layers={asked} keeps {on_host} layers (their weights and KV) on the host, which reads them at "
              f"its own memory bandwidth every step; {room}",
        actions=["offload every layer (n_gpu_layers=-1 / -ngl 99) if the weights fit, else as many as fit",
                 "a smaller KV cache type or context frees device memory for more layers"],
        share=saving_ms / step_ms, saving_ns=saving_ms * 1e6, phase="decode", remedy={"n_gpu_layers": -1},
        rows=_in_ns(budget).reset_index(), rows_kind="budget")]


# -- syncs ----------------------------------------------------------------------------------------------------------

@rule("sync.eval-callback")
def eval_callback_syncs(a) -> list[Finding]:
    cb = a.eval_callback
    cb = cb[cb["step"].isin(a.complete_steps["step"])] if len(cb) else cb
    if not len(cb):
        return []
    sync_share = float(cb["sync_ns"].sum() / cb["wall_ns"].sum())
    views_per_split = float(cb["views"].sum() / cb["splits"].sum())
    # a callback that needs a tensor or two per split costs a view or two; one that captures everything cuts each
    # split into one graph per node
    if sync_share < 0.02 and views_per_split < 4:
        return []
    budget = a.budget.set_index("step").reindex(cb["step"])
    split_columns = [c for c in budget.columns if c.startswith("split:") or c.startswith("sync:")]
    touched = float(budget[split_columns].sum(axis=1).sum()) if split_columns else float(cb["sync_ns"].sum())
    share = touched / float(cb["wall_ns"].sum())
    rows = a.table("sync")
    rows = rows.assign(in_step=a.in_step("sync"))
    rows = rows[(text(rows["reason"]) == "eval_callback") & rows["in_step"].notna()]
    return [Finding(
        severity="critical" if sync_share >= 0.20 else "warning",
        statement=f"An eval callback cuts each split into {views_per_split:.0f} graph pieces and synchronizes "
                  f"after each ({cb['syncs'].mean():.0f} syncs per step); the syncs take {percent(sync_share)} of "
                  f"the step, the pieces with the callback's own work {percent(share)}",
        evidence={"steps": int(len(cb)), "syncs_per_step": float(cb["syncs"].mean()),
                  "views_needed_per_step": float(cb["needed"].mean()), "views_per_split": views_per_split,
                  "sync_time_share": sync_share, "time_in_callback_splits_share": share,
                  "saving_method": "none: the pieces hold the step's own work too (removing a callback that "
                                   "captured three layers saved 14% of an H200 step where these shares said 98%); "
                                   "measure it with gpuscope ab, the program with and without the callback"},
        cause=("a graph eval callback (llama-eval-callback, imatrix, a debugging cb_eval) asks for "
               f"{percent(cb['needed'].sum() / max(cb['views'].sum(), 1))} of the nodes: the scheduler computes up to "
               "each requested node and waits for the device before calling it"),
        actions=["ask only for the tensors you need (return false from the callback's ask phase for the rest)",
                 "remove the callback from production runs",
                 "capture tensors asynchronously (copy them out in a second graph) instead of per-node syncs"],
        share=None, rows=rows.drop(columns=["in_step"]), rows_kind="sync")]


# -- splits and copies -------------------------------------------------------------------------------------------------

@rule("copies.cross-device")
def cross_device_copies(a) -> list[Finding]:
    # decode steps where the trace has them: a long fill's copies are a prefill cost, and what a remedy saves is
    # measured per decode step
    decode = decode_steps(a.steps)
    steps = decode if len(decode) else a.complete_steps
    per_step = a.copies[a.copies["step"].isin(steps["step"])]
    if not len(per_step) or not per_step["copies"].any():
        return []
    placed = a.memory_placement
    devices = sorted(set(placed.loc[placed["owner"].isin(["weights", "kv"]), "location"]))
    # a layer split copies activations at its device boundaries, a layer or two per device; what it never needs is
    # a KV cache or weights read by another device every step, or copies for most of the layers
    with_stored = per_step[per_step["stored_copies"] > 0]
    layers_per_step = float(per_step["layers_copied"].median())
    stored_pattern = len(with_stored) >= max(MIN_STEPS, 0.5 * len(per_step))
    layer_pattern = layers_per_step > 2 * max(len(devices), 1)
    if not stored_pattern and not layer_pattern:
        return []
    wall = float(steps.set_index("step")["wall_ns"].reindex(per_step["step"]).sum())
    at_stake = float(per_step["foreign_layer_time_ns"].sum() if stored_pattern
                     else (per_step["time_ns"] - per_step["collective_time_ns"]).sum())
    share = at_stake / wall if wall else None
    if share is None or share < 0.05:
        return []
    events = a.copy_events[a.copy_events["step"].isin(per_step["step"])]
    stored = events[events["stored"]]
    kv = placed[placed["owner"] == "kv"].groupby("location")["bytes"].sum()
    weights = placed[placed["owner"] == "weights"].groupby("location")["bytes"].sum().drop(labels=["CPU"],
                                                                                       errors="ignore")
    kv_elsewhere = stored_pattern and stored["tensor"].str.startswith("cache_").any() and len(kv)
    if kv_elsewhere:
        cause = (f"the KV cache is on {', '.join(kv.index)} while the layers' weights are on "
                 f"{', '.join(weights.index) or 'the CPU'}: the attention of every layer reads it across devices "
                 "every step")
    elif stored_pattern:
        cause = "weights placed on one device are used every step by layers running on another"
    else:
        cause = "the graph crosses devices inside most layers: ops of each layer run on another backend"
    pairs = a.copy_pairs
    return [Finding(
        severity="critical" if share >= 0.25 else "warning",
        statement=(f"Every step copies {with_stored['stored_copies'].median():.0f} stored tensors (KV cache or "
                   f"weights, {size(with_stored['stored_bytes'].median())}) to another device"
                   if stored_pattern else
                   f"Every step copies tensors of {layers_per_step:.0f} layers across devices")
                  + f"; the copies for those layers take {percent(share)} of the step",
        evidence={"copies_per_step": float(per_step["copies"].median()),
                  "bytes_per_step": float(per_step["bytes"].median()),
                  "stored_copies_per_step": float(per_step["stored_copies"].median()),
                  "stored_tensors": sorted(set(stored["tensor"]))[:12],
                  "layers_copied_per_step": layers_per_step, "devices_holding_weights_or_kv": devices,
                  "pairs": _records(pairs[["src_device", "dst_device", "copies_per_step", "bytes_per_step",
                                           "time_per_step_ns"]]) if len(pairs) else [],
                  "splits_per_step": float(a.splits["splits"].median()) if len(a.splits) else None,
                  "saving_method": "the measured time of the copies for those layers"},
        cause=cause,
        actions=["keep the KV cache with its layers (drop --no-kv-offload / offload_kqv=false)",
                 "keep weights on the device of the layer that reads them (check --override-tensor rules)",
                 "use fewer devices, or a split with fewer device boundaries"],
        share=share, rows=stored if len(stored) else events, rows_kind="copy",
        remedy={"offload_kqv": True} if kv_elsewhere and _setting(a, "offload_kqv") is False else None)]


# -- step time against context and the bandwidth floor ---------------------------------------------------------------

def _decode_groups(a) -> pd.DataFrame:
    """Fits of batch sizes of one token per sequence: the decode steps the floor speaks about."""
    fits = a.fits
    if not len(fits):
        return fits
    one_token = a.complete_steps.groupby(["config", "n_tokens"])["n_seqs"].median()
    keys = [(c, t) for c, t in zip(fits["config"], fits["n_tokens"]) if t == one_token.get((c, t), -1)]
    return fits[[(c, t) in keys for c, t in zip(fits["config"], fits["n_tokens"])]]


# Where the context is long, a step may grow this many times faster than reading the KV cache at the measured
# bandwidth before it is a finding: FlashAttention's decode kernel on an H100 grew 1.3x (8B, 16k-32k cells) to 1.4x
# (8 of its layers, 8k-16k) the floor's rate; without FlashAttention the same runs grew 2.6x and 3.4x.
GROWTH_RATIO = 2.5


@rule("context.growth-above-floor")
def context_growth(a) -> list[Finding]:
    if a.floor is None:
        return []
    findings = []
    for fit in _decode_groups(a).itertuples():
        floor_slope = a.floor_slope_ns_per_cell(fit.config)
        if not np.isfinite(fit.long_slope_ci_low):  # no long-context fit of its own: the whole range's line
            fit = fit._replace(long_from=float(fit.context_min), long_slope_ns_per_cell=fit.slope_ns_per_cell,
                               long_slope_ci_low=fit.slope_ci_low, long_slope_ci_high=fit.slope_ci_high)
        if not np.isfinite(floor_slope) or floor_slope <= 0 or not np.isfinite(fit.long_slope_ci_low):
            continue
        if fit.steps < 16 or fit.context_max - fit.context_min < 1024:
            continue
        excess = (fit.long_slope_ns_per_cell - floor_slope) * (fit.context_max - fit.context_min)
        at_max = fit.intercept_ns + fit.slope_ns_per_cell * fit.context_max
        if fit.long_slope_ci_low <= GROWTH_RATIO * floor_slope or excess < 0.10 * at_max:
            continue
        group = a.complete_steps[(a.complete_steps["config"] == fit.config) &
                                 (a.complete_steps["n_tokens"] == fit.n_tokens)]
        long_steps = group[group["context"] >= fit.long_from]
        share = float(np.clip((fit.long_slope_ns_per_cell - floor_slope) * (long_steps["context"] - fit.context_min)
                              / long_steps["wall_ns"], 0, 1).mean())
        findings.append(Finding(
            severity="warning",
            statement=f"[{fit.n_tokens} token(s) per step] beyond {fit.long_from:.0f} cells a step grows "
                      f"{duration(fit.long_slope_ns_per_cell)} per context cell (95% CI "
                      f"{duration_range(fit.long_slope_ci_low, fit.long_slope_ci_high, between=' to ')}), "
                      f"{times(fit.long_slope_ns_per_cell / floor_slope)} what reading the KV cache explains "
                      f"({duration(floor_slope)} per cell)",
            evidence={"long_context_slope_ns_per_cell": fit.long_slope_ns_per_cell,
                      "long_context_slope_ci_ns_per_cell": [fit.long_slope_ci_low, fit.long_slope_ci_high],
                      "whole_range_slope_ns_per_cell": fit.slope_ns_per_cell,
                      "floor_slope_ns_per_cell": floor_slope, "context_range": [fit.context_min, fit.context_max],
                      "excess_over_range_ns": excess, "steps": fit.steps,
                      "bandwidth": _records(a.bandwidth),
                      "saving_method": "the long-context steps' time above the floor's growth, measured",
                      "breakpoints": _records(
                          a.breakpoints[(a.breakpoints["config"] == fit.config) &
                                        (a.breakpoints["n_tokens"] == fit.n_tokens)])},
            cause=("attention costs more per cell than its memory traffic: FlashAttention off (the KQ matrix is "
                   "written and read at every step), a KV type without a fast kernel, or a kernel chosen for this "
                   "batch and head size that does not scale (see the FA plans and their route changes)"),
            actions=["turn FlashAttention on (-fa on) and keep an f16 KV cache",
                     "compare the FA plans at short and long context (Analysis.fa_plans, fa_route_changes)",
                     "check the breakpoints' events"],
            share=share, rows=a.fits[(a.fits["config"] == fit.config) & (a.fits["n_tokens"] == fit.n_tokens)],
            rows_kind="fit", remedy={"flash_attn": "on"} if _setting(a, "flash_attn") != "on" else None))
    return findings


@rule("context.short-above-floor")
def short_context_overhead(a) -> list[Finding]:
    floor = a.floor
    if floor is None or not floor["floor_ns"].notna().any():
        return []
    findings = []
    for fit in _decode_groups(a).itertuples():
        group = floor[(floor["config"] == fit.config) & (floor["n_tokens"] == fit.n_tokens)]
        group = group[group["floor_ns"].notna() & ~group["cold_start"]]
        if len(group) < MIN_STEPS * 2:
            continue
        short = group[group["context"] <= group["context"].min() + 256]
        efficiency = float(short["floor_ns"].sum() / short["wall_ns"].sum())
        # a quarter of the floor: far below what decode reaches when it is bound by memory (82% on an H100)
        if efficiency >= 0.25:
            continue
        budget = a.budget.set_index("step").reindex(short["step"])
        top = budget.drop(columns=["wall_ns"]).sum().sort_values(ascending=False)
        top_share = (top / budget["wall_ns"].sum()).head(4)
        findings.append(Finding(
            severity="warning",
            statement=f"[{fit.n_tokens} token(s) per step] at short context a step takes "
                      f"{duration(short['wall_ns'].median())} where reading its bytes takes "
                      f"{duration(short['floor_ns'].median())}: "
                      f"{percent(efficiency)} of the memory-bandwidth floor",
            evidence={"efficiency": efficiency, "wall_median_ns": float(short["wall_ns"].median()),
                      "floor_median_ns": float(short["floor_ns"].median()),
                      "bytes_per_step": float(short["bytes_read"].median()), "steps": int(len(short)),
                      "budget_top_shares": {k: float(v) for k, v in top_share.items()},
                      "bandwidth": _records(a.bandwidth),
                      "saving_method": "none: 1 - efficiency is the gap to the floor, a bound no fix reaches"},
            cause=("fixed costs per step dominate, not memory traffic: CPU-side graph build and scheduling, kernel "
                   "launch overhead, synchronizations (the budget's top categories are in the evidence)"),
            actions=["keep graph reuse on (steady batch shapes) and CUDA graphs enabled (GGML_CUDA_DISABLE_GRAPHS "
                     "unset)", "reduce splits: offload every layer to one device", "batch several sequences per step"],
            share=None, rows=short.drop(columns=["cold_start"]), rows_kind="steps"))
    return findings


# -- memory --------------------------------------------------------------------------------------------------------

@rule("memory.split-imbalance")
def split_imbalance(a) -> list[Finding]:
    table = a.split_imbalance
    if not len(table):
        return []
    off = table[table["deviation"].abs() > np.maximum(table["tolerance"], 0.10)]
    if not len(off):
        return []
    worst = off.loc[off["deviation"].abs().idxmax()]
    return [Finding(
        severity="warning",
        statement=f"{worst['location']} holds {percent(worst['share'])} of the offloaded weights where "
                  f"the split asks "
                  f"for {percent(worst['requested_share'])} ({worst['split_source']})",
        evidence={"devices": _records(table)},
        cause=("the layer split rounds to whole layers and puts the output layer on the last device; or the "
               "split asked for does not match the devices' memory"),
        actions=["set --tensor-split to the proportions you want, counting the output layer",
                 "check the devices' free memory when the model loads (the default split follows it)"],
        share=None, rows=table, rows_kind="weights per device")]


def _phase_of(a, kind: str, seqs: pd.Series) -> str | None:
    """'decode' or 'prefill' when every event of `kind` with these seqs fell in steps of that phase."""
    table = a.table(kind)
    in_step = a.in_step(kind)[table["seq"].isin(seqs).to_numpy(bool)]
    tokens = a.steps.set_index("step")[["n_tokens", "n_seqs"]].reindex(in_step.dropna())
    if not len(tokens):
        return None
    decode = is_decode(tokens)
    return "decode" if decode.all() else "prefill" if not decode.any() else None


# -- the measurement itself ----------------------------------------------------------------------------------------

# Steps this far from their neighbours' median make a run's times unreliable. The H200 runs of
# datasets/h200-bench-doctor, on a quiet machine, scatter at most 2.7% around it with at most 6.3% outliers (4 of a
# draft's 64 steps; 0-4% elsewhere). The default model's CPU decode on this project's 2-core machine scattered 1.2%
# with no outliers alone, and with one or two busy processes beside it 9.7-12.5% with 8.5-28% outliers (the slowest
# 16-23x): tests/test_noise.py records both. The clean CPU sweeps of datasets/cpu, recorded on this shared machine,
# scatter 6.8-7.8% with at most 4.3% outliers and stay below. An info, not a warning: it is about the measurement, not the engine, and
# the verdicts it doubts keep their own thresholds.
NOISY_SCATTER = 0.10
NOISY_OUTLIER_SHARE = 0.08
# Other processes using this share of the engine's cores while it measured is a busy machine.
BUSY_OTHERS_SHARE = 0.25


def is_noisy(noise: dict) -> bool:
    """Whether a series' noise (gpuscope.analysis.noise.noise_of) makes its times unreliable."""
    return noise["scatter_share"] >= NOISY_SCATTER or (noise["outlier_share"] >= NOISY_OUTLIER_SHARE
                                                       and noise["outliers"] >= MIN_STEPS)


def recorded_load(a, config: str | None) -> dict | None:
    """What else ran while a configuration measured, as its session recorded it (gpuscope.session.load); None
    where the trace does not record it."""
    for run in a.trace.meta.get("runs") or []:
        if config is not None and any(str(c.get("label")) == config for c in run.get("configs") or []):
            return run.get("load")
    return a.trace.meta.get("load")


@rule("measurement.noisy")
def noisy_measurement(a) -> list[Finding]:
    findings = []
    for row in step_noise(a.steps).itertuples():
        if not is_noisy(row._asdict()):
            continue
        load = recorded_load(a, row.config)
        busy = load is not None and load["others_share"] >= BUSY_OTHERS_SHARE
        machine = ""
        if load is not None:
            machine = (f"; other processes used {percent(load['others_share'])} of the engine's "
                       f"{len(load['cpus'])} core(s) meanwhile"
                       + (f" (load average {load['loadavg'][0]:.1f})" if load.get("loadavg") else ""))
        findings.append(Finding(
            severity="info",
            statement=f"[{row.n_tokens} token(s) per step] step times are noisy: {row.outliers} of {row.steps} "
                      f"decode steps took over {times(OUTLIER_RATIO)} their neighbours' median (the slowest "
                      f"{times(row.worst_ratio)}) and steps scatter {percent(row.scatter_share)} around it"
                      f"{machine}: this run's times, and verdicts that compare them, are unreliable",
            evidence={"steps": row.steps, "median_step_ns": row.median_ns, "scatter_share": row.scatter_share,
                      "outlier_share": row.outlier_share, "worst_ratio": row.worst_ratio,
                      **({"load": {k: load[k] for k in ("window_s", "cpus", "loadavg", "busy_share", "own_share",
                                                        "others_share") if k in load},
                          "other_processes": load.get("others") or []} if load is not None else
                         {"load": "not recorded (sessions and gpuscope record write it)"})},
            cause=("other work on the machine competes for the engine's cores: its threads wait at each barrier "
                   "for one that was descheduled" if busy or load is None else
                   "the engine's own variation, or work the recorded load does not see (another machine's, the "
                   "GPU's clocks, throttling)"),
            actions=["measure again on a quiet machine (the busiest other processes are in the evidence)",
                     "leave the engine cores of its own: fewer threads than free cores (n_threads), or taskset",
                     "compare configurations in interleaved rounds (gpuscope.runs.rounds), which spread the "
                     "machine's drift over all of them"],
            share=None, phase="decode"))
    return findings


# -- configurations side by side ----------------------------------------------------------------------------------

# A configuration slower than the best by less than this at some depth is within what reruns of one configuration
# vary by on a shared machine (the CPU sweep datasets: 1.1-1.3x between neighbouring depths of one configuration).
SLOWER_RATIO = 1.25


def _settings_diff(a, config: str, fastest: str) -> dict:
    """The settings in which a configuration differs from the fastest one: {key: [here, fastest]}."""
    by_label = {str(c.get("label")): c for c in a.trace.meta.get("configs") or []}
    here, best = by_label.get(config, {}), by_label.get(fastest, {})
    return {key: [here.get(key), best.get(key)] for key in sorted(set(here) | set(best))
            if key not in ("label", "name") and here.get(key) != best.get(key)}


@rule("config.slower", scope="trace")
def slower_configs(a) -> list[Finding]:
    findings = []
    table = a.config_table
    labels = {str(c.get("label")) for c in a.trace.meta.get("configs") or []}
    for row in a.slower_configs.itertuples():
        mine = table[table["config"] == row.config]
        clearly = mine[mine["separated"] & (mine["slowdown"] >= SLOWER_RATIO)]
        # the fastest at some depth, or slower by more than reruns vary at fewer than half of its depths (at short
        # context, a KV cache in the wrong place costs little: the verdict rests on the depths where it shows)
        if not row.never_fastest or 2 * len(clearly) < row.depths_measured:
            continue
        diff = _settings_diff(a, row.config, row.fastest)
        if not diff and {row.config, row.fastest} <= labels:
            continue  # the same settings measured apart: the machine's drift between the runs, not a verdict
        budgets = {c: a.of_config(c).budget_summary.head(3) for c in (row.config, row.fastest)}
        top = budgets[row.config]
        why = "; ".join(f"{k}={here!r} where `{row.fastest}` has {best!r}" for k, (here, best) in diff.items()) \
            or "the trace does not record how the two configurations differ"
        share = row.ms_behind_mean / row.ms_per_token_mean
        slowdown = [float(clearly["slowdown"].min()), float(clearly["slowdown"].max())]
        findings.append(Finding(
            severity="critical" if share >= 0.5 else "warning",
            statement=f"{times_range(*slowdown)} slower than the fastest configuration at {len(clearly)} of its "
                      f"{row.depths_measured} depth(s) and never the fastest (`{row.fastest}` at most; "
                      f"{duration(row.ms_per_token_mean * 1e6)} per token, {duration(row.ms_behind_mean * 1e6)} "
                      f"more, over its depths); "
                      f"it differs from `{row.fastest}` in: {why}",
            evidence={"fastest": row.fastest, "depths": clearly["depth"].tolist(), "slowdown": slowdown,
                      "ms_per_token": row.ms_per_token_mean, "ms_behind_per_token": row.ms_behind_mean,
                      "settings": diff,
                      "budget_top_shares": {c: {r.category: float(r.share) for r in b.itertuples()}
                                     for c, b in budgets.items()},
                      "saving_method": f"measured in this trace: over its depths, the mean of its median time "
                                       f"per token above the fastest configuration's (`{row.fastest}` at most)"},
            cause=(f"its top costs are {', '.join(f'{r.category} {percent(r.share)}' for r in top.itertuples())}"
                   if len(top) else "see its own findings"),
            actions=[f"use `{row.fastest}`'s settings" + (": " + ", ".join(f"{k}={best!r}" for k, (_, best)
                                                                            in diff.items()) if diff else ""),
                     "read this configuration's own findings for the mechanism"],
            share=share, saving_ns=row.ms_behind_mean * 1e6, config=row.config, phase="decode",
            remedy={key: best for key, (_, best) in diff.items()} or None,
            rows=table[table["config"] == row.config], rows_kind="configurations"))
    return findings


def _in_ns(budget: pd.DataFrame) -> pd.DataFrame:
    """The step budget's categories (`copy`, `split:CPU`) named with their unit, as every table of times is."""
    return budget.rename(columns=lambda c: c if str(c).endswith("_ns") else f"{c}_ns")


def _records(frame: pd.DataFrame) -> list[dict]:
    return frame.to_dict(orient="records") if len(frame) else []


def diagnose(analysis) -> list[Finding]:
    """Every rule's findings, each rule run on each configuration's part of the trace (and the findings named
    after it), the trace rules (the recording, the configurations compared) once, most severe first, then by the
    saving of the first remedy. Each finding gets the span of the trace it refers to, where a rule did not say."""
    findings = [f for registered in RULES if registered.scope == "trace" for f in registered(analysis)]
    for finding in findings:
        finding.time_range_ns = finding.time_range_ns or analysis.span_of(finding.rows, finding.config)
    for config in analysis.configs or [None]:
        part = analysis.of_config(config) if config is not None else analysis
        decode = decode_steps(part.steps)
        wall = (decode if len(decode) else part.complete_steps)["wall_ns"]
        found = []
        for registered in RULES:
            if registered.scope != "config":
                continue
            for finding in registered(part):
                finding.config = finding.config or config
                finding.time_range_ns = finding.time_range_ns or part.span_of(finding.rows, finding.config)
                if finding.share is not None and finding.saving_ns is None and len(wall):
                    # a share of the steps' total time, as a time per decode step where the trace has them
                    finding.saving_ns = finding.share * float(wall.mean())
                found.append(finding)
        findings += _folded(found)
    return sorted(findings, key=lambda f: f.sort_key)


def _folded(findings: list[Finding]) -> list[Finding]:
    """One configuration's findings with symptoms folded into their cause: the copies of a FlashAttention fallback
    (attention sent to another backend, its K/V copied there every step) belong to the fallback's finding."""
    fallback = next((f for f in findings if f.id == "fa.route-none"), None)
    copies = next((f for f in findings if f.id == "copies.cross-device"), None)
    if fallback is None or copies is None:
        return findings
    fallback.evidence["copies_of_the_fallback"] = {"statement": copies.statement, "share": copies.share,
                                                   **{k: copies.evidence[k] for k in ("copies_per_step",
                                                                                      "bytes_per_step")}}
    return [f for f in findings if f is not copies]


def headline(analysis, findings: list[Finding]) -> str:
    """One sentence to open with: the biggest saving found and what to do, or what was measured when nothing is
    wrong."""
    timed = [f for f in findings if f.severity != "info" and f.saving_ns is not None]
    if timed:
        best = max(timed, key=lambda f: f.saving_ns)
        where = f"`{best.config}`: " if best.config else ""
        measured = best.verified and best.verified.get("saving_ms") is not None
        checked = f"; verified: {best.verified_text()}" if measured else ""
        return f"{where}{best.statement}. First try: {best.actions[0]} ({best.saving_text()}, " \
               f"{best.evidence.get('saving_method', 'estimated')}{checked})."
    serious = [f for f in findings if f.severity != "info"]
    if serious:
        f = serious[0]
        return f"{'`' + f.config + '`: ' if f.config else ''}{f.statement}. First try: {f.actions[0]}."
    table = analysis.config_table
    if not len(table):
        return "No problem found; the trace has no complete decode steps to measure."
    fastest = table[table["rank"] == 1].sort_values("depth")
    parts = ", ".join(f"{duration(r.ms_per_token * 1e6)} per token at depth {r.depth}"
                      for r in fastest.head(3).itertuples())
    lead = f"`{fastest['config'].iloc[0]}` is the fastest of {len(analysis.configs)} configurations: " \
        if len(analysis.configs) > 1 else f"`{fastest['config'].iloc[0]}`: "
    return f"No problem found. {lead}{parts}."
