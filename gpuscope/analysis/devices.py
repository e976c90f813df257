"""What to call each device: the name its configuration gave it, not one of the engine's counters.

ggml names an RPC device two ways, neither of them what the configuration said. Its registry counts RPC devices over
the process's life, so the device of a sweep's third server is `RPC2` whatever the configuration called it; its
backend and buffer types count the devices within their server and add the address, so every single-device server
is `RPC0[127.0.0.1:<port>]`. A configuration says `rpc:N` (the session's Nth local ggml-rpc-server) or
`rpc:HOST:PORT`. A device_info event gives each device's registry name and, as its description, its server's
address; a run's meta names each local server's address under processes (`rpc0`: the configuration's `rpc:0`) and
lists the devices it added: enough to map every spelling back to the configuration's word."""
from __future__ import annotations

import pandas as pd

COLUMNS = ["name", "shown", "detail"]


def _configured(meta: dict) -> dict[tuple[str, str], str]:
    """(engine device name, server address) -> the configuration's word for its server, from every run's meta."""
    known = {}
    for run in meta.get("runs") or [meta]:
        local = {process.get("endpoint"): f"rpc:{name[3:]}" for name, process in (run.get("processes") or {}).items()
                 if name.startswith("rpc") and name[3:].isdigit()}
        for device in run.get("devices") or []:
            if device.get("kind") == "rpc" and device.get("description") in local:
                known[(str(device["name"]), device["description"])] = local[device["description"]]
    return known


def device_names(meta: dict, device_info: pd.DataFrame) -> pd.DataFrame:
    """One row per engine spelling of each RPC device the trace's device_info names: `name` as events write it (the
    registry name `RPC2`, or the backend / buffer-type name `RPC0[127.0.0.1:36643]`), `shown` (the configuration's
    word: `rpc:0` for a local server, `rpc:HOST:PORT` for one it was given; `rpc:0/1` for the second device of a
    server that offers several; the registry name where no configuration names the server, as for llama-bench's
    --rpc) and `detail` (the engine's name and the address, for hover text). Other devices keep the engine's name
    and have no row.

    device_info: the main process's device_info events (of one configuration, for names that stay unambiguous)."""
    if not len(device_info) or "backend" not in device_info.columns:
        return pd.DataFrame(columns=COLUMNS)
    rpc = device_info[device_info["backend"].astype(str) == "RPC"].drop_duplicates(["name", "description"])
    known = _configured(meta)
    given = {str(d) for config in meta.get("configs") or [] for d in config.get("devices") or []}
    rows = []
    for address, devices in rpc.groupby(rpc["description"].astype(str), sort=False):
        # the registry counts in the order the server's devices were added: that is their index within the server
        names = sorted(devices["name"].astype(str), key=lambda n: int(n[3:]) if n[3:].isdigit() else 0)
        for index, name in enumerate(names):
            server = known.get((name, address)) or (f"rpc:{address}" if f"rpc:{address}" in given else None)
            # a program's own --rpc list (no configuration to quote) keeps the registry's names, in its order
            shown = name if server is None else server if len(names) == 1 else f"{server}/{index}"
            detail = f"{shown} (engine device {name} at {address})" if shown != name else f"{name} at {address}"
            rows += [{"name": spelling, "shown": shown, "detail": detail}
                     for spelling in (name, f"RPC{index}[{address}]")]
    return pd.DataFrame(rows, columns=COLUMNS).drop_duplicates("name", ignore_index=True)


def as_configured(frame: pd.DataFrame, names: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every cell that is an engine spelling of an RPC device (alone, or as a budget's `split:<backend>`)
    replaced by the configuration's name for it. names: device_names(...)."""
    if not len(names) or frame is None or not len(frame):
        return frame
    shown = dict(zip(names["name"], names["shown"]))
    shown.update({f"split:{name}": f"split:{called}" for name, called in list(shown.items())})
    texts = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])
             and not pd.api.types.is_bool_dtype(frame[c])]
    return frame.assign(**{str(c): frame[c].map(lambda v: shown.get(v, v) if isinstance(v, str) else v)
                           for c in texts})
