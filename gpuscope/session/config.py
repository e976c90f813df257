"""Split configurations: how a model is spread over devices, and the context it decodes in.

A `SplitConfig` is checked twice. On construction, everything that can be judged from the values alone (names of
modes and cache types, sizes, combinations the engine refuses). Then `check_against(devices, model)` before a model
is loaded, everything that depends on the machine and the model: device names, the length of `tensor_split`,
devices that cannot do a row split, a context longer than the model's. Every failure is a `SplitConfigError` that
says what to change, so a sweep fails before its first configuration loads rather than in the middle.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Sequence

from gpuscope.errors import SplitConfigError

SPLIT_MODES = {"none": 0, "layer": 1, "row": 2, "tensor": 3}  # enum llama_split_mode
FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}  # enum llama_flash_attn_type
# KV cache types the engine accepts (enum ggml_type values); quantized V needs flash attention.
CACHE_TYPES = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "iq4_nl": 20}
_UNQUANTIZED = {"f32", "f16", "bf16"}
DEFAULT_N_CTX = 4096

# "rpc:N": the Nth ggml-rpc-server the session starts on loopback; "rpc:HOST:PORT": one already running.
_LOCAL_RPC = re.compile(r"rpc:(\d+)")
_REMOTE_RPC = re.compile(r"rpc:([^:\s]+):(\d+)")


@dataclass(frozen=True)
class DeviceSpec:
    """What `check_against` needs to know about one device the engine can offload to."""
    name: str
    kind: str             # 'cpu', 'gpu', 'igpu', 'accel', 'rpc'
    row_split: bool       # its backend has a split buffer type (LLAMA_SPLIT_MODE_ROW)


@dataclass(frozen=True)
class SplitConfig:
    """One way to run a model. Defaults match the engine's own (all layers offloaded, layer split, FA auto).

    devices: None lets the engine choose (every GPU, no RPC); () keeps everything on the local CPU; otherwise
    device names as ggml reports them ('CUDA0', 'Vulkan1', ...) and RPC devices as 'rpc:N' (the Nth local
    ggml-rpc-server the session starts) or 'rpc:HOST:PORT'.
    """

    devices: tuple[str, ...] | None = None
    n_gpu_layers: int = -1                    # -1: all
    split_mode: str = "layer"
    tensor_split: tuple[float, ...] | None = None
    main_gpu: int = 0
    offload_kqv: bool = True
    op_offload: bool = True
    flash_attn: str = "auto"
    type_k: str = "f16"
    type_v: str = "f16"
    n_ctx: int | None = None                  # None: DEFAULT_N_CTX, or the model's training context if smaller
    n_batch: int = 2048
    n_ubatch: int = 512
    n_threads: int | None = None              # None: every core
    n_threads_batch: int | None = None        # None: n_threads
    name: str | None = field(default=None, compare=False)  # label override

    def __post_init__(self) -> None:
        for key in ("devices", "tensor_split"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, tuple):
                if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                    raise SplitConfigError(f"{key} must be a list, got {value!r}")
                object.__setattr__(self, key, tuple(value))
        self._check_values()

    # -- validation on values alone ----------------------------------------------------------------------------

    def _check_values(self) -> None:
        _one_of("split_mode", self.split_mode, SPLIT_MODES)
        _one_of("flash_attn", self.flash_attn, FLASH_ATTN)
        _one_of("type_k", self.type_k, CACHE_TYPES)
        _one_of("type_v", self.type_v, CACHE_TYPES)
        _integer("n_gpu_layers", self.n_gpu_layers, minimum=-1)
        _integer("main_gpu", self.main_gpu, minimum=0)
        _integer("n_batch", self.n_batch, minimum=1)
        _integer("n_ubatch", self.n_ubatch, minimum=1)
        for key in ("n_ctx", "n_threads", "n_threads_batch"):
            if getattr(self, key) is not None:
                _integer(key, getattr(self, key), minimum=1)
        if self.n_ubatch > self.n_batch:
            raise SplitConfigError(f"n_ubatch={self.n_ubatch} is larger than n_batch={self.n_batch}: a physical "
                                   "batch cannot exceed the logical one; lower n_ubatch or raise n_batch")
        if self.split_mode == "tensor" and self.flash_attn == "off":
            raise SplitConfigError("split_mode='tensor' requires flash attention (the engine refuses it without): "
                                   "set flash_attn='on' or 'auto'")
        if self.type_v not in _UNQUANTIZED and self.flash_attn == "off":
            raise SplitConfigError(f"a quantized V cache (type_v={self.type_v!r}) requires flash attention: set "
                                   "flash_attn='on' or 'auto', or type_v='f16'")
        if self.tensor_split is not None:
            if self.split_mode == "none":
                raise SplitConfigError("tensor_split has no effect with split_mode='none' (one device holds "
                                       "everything): drop it or choose 'layer', 'row' or 'tensor'")
            if not self.tensor_split or any(not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                                            for v in self.tensor_split) or sum(self.tensor_split) <= 0:
                raise SplitConfigError(f"tensor_split={list(self.tensor_split)} must be non-negative proportions "
                                       "with a positive sum, one per device (e.g. [3, 1])")
        if self.devices is not None:
            for device in self.devices:
                if not isinstance(device, str) or not device.strip():
                    raise SplitConfigError(f"devices must be names, got {device!r}")
                if device.startswith("rpc:") and not (_LOCAL_RPC.fullmatch(device) or _REMOTE_RPC.fullmatch(device)):
                    raise SplitConfigError(f"RPC device {device!r} is neither 'rpc:N' (the Nth local server) nor "
                                           "'rpc:HOST:PORT'")
            duplicates = sorted({d for d in self.devices if self.devices.count(d) > 1})
            if duplicates:
                raise SplitConfigError(f"devices lists {', '.join(duplicates)} more than once")

    # -- validation against a machine and a model ------------------------------------------------------------

    def check_against(self, local_devices: Sequence[DeviceSpec], n_ctx_train: int | None,
                      rpc_devices: dict[str, Sequence[DeviceSpec]] | None = None) -> None:
        """Raise SplitConfigError if this configuration cannot run with these devices and this model.

        local_devices: what the engine's registry lists; rpc_devices: the devices behind each 'rpc:...' entry
        (filled in once the servers answer; entries absent here are checked for syntax only)."""
        offload = self._offload_devices(local_devices, rpc_devices or {})
        if self.tensor_split is not None and len(self.tensor_split) != len(offload):
            names = ", ".join(d.name for d in offload) or "none"
            raise SplitConfigError(
                f"tensor_split has {len(self.tensor_split)} entries but the model is split over {len(offload)} "
                f"device(s) ({names}): give one proportion per device")
        if self.split_mode == "row":
            if not offload:
                raise SplitConfigError("split_mode='row' needs devices to split rows over; none are selected")
            unable = [d.name for d in offload if not d.row_split]
            if unable:
                raise SplitConfigError(
                    f"split_mode='row' needs devices whose backend has a split buffer type; {', '.join(unable)} "
                    "cannot (RPC and CPU devices never can): use split_mode='layer' or 'tensor'")
        if self.split_mode == "tensor" and not offload:
            raise SplitConfigError("split_mode='tensor' needs at least one device other than the local CPU")
        if self.split_mode == "none" and offload and self.main_gpu >= len(offload):
            raise SplitConfigError(f"main_gpu={self.main_gpu} but only {len(offload)} device(s) are selected")
        if n_ctx_train and self.n_ctx is not None and self.n_ctx > n_ctx_train:
            raise SplitConfigError(f"n_ctx={self.n_ctx} is larger than the model's training context "
                                   f"({n_ctx_train}): lower n_ctx to at most {n_ctx_train}")

    def _offload_devices(self, local_devices: Sequence[DeviceSpec],
                         rpc_devices: dict[str, Sequence[DeviceSpec]]) -> list[DeviceSpec]:
        by_name = {d.name.lower(): d for d in local_devices}
        if self.devices is None:  # the engine's default: every GPU-like device, never the CPU, never RPC
            return [d for d in local_devices if d.kind in ("gpu", "igpu")]
        offload: list[DeviceSpec] = []
        for name in self.devices:
            if name.startswith("rpc:"):
                offload += rpc_devices.get(name, [DeviceSpec(name, "rpc", row_split=False)])
            elif name.lower() in by_name:
                offload.append(by_name[name.lower()])
            else:
                known = ", ".join(d.name for d in local_devices) or "none"
                raise SplitConfigError(f"unknown device {name!r}: this engine build sees {known} "
                                       "(RPC devices are written 'rpc:N' or 'rpc:HOST:PORT')")
        return offload

    # -- naming and serialization ------------------------------------------------------------------------------

    @property
    def local_rpc_servers(self) -> int:
        """How many local ggml-rpc-server processes this configuration needs ('rpc:N' entries number them)."""
        indices = [int(m.group(1)) for d in self.devices or () if (m := _LOCAL_RPC.fullmatch(d))]
        return max(indices) + 1 if indices else 0

    @property
    def label(self) -> str:
        """A short readable name for plots and reports: devices, then only what differs from the defaults."""
        if self.name:
            return self.name
        if self.devices is None:
            parts = ["auto"]
        elif not self.devices:
            parts = ["cpu"]
        else:
            parts = ["+".join(_short_device(d) for d in self.devices)]
        if (self.devices and len(self.devices) > 1) or self.split_mode != "layer":
            parts.append(self.split_mode)
        defaults = SplitConfig()
        short = {"n_gpu_layers": "ngl", "main_gpu": "mg", "n_ctx": "ctx", "n_batch": "b", "n_ubatch": "ub",
                 "n_threads": "t", "n_threads_batch": "tb"}
        for key, prefix in short.items():
            if getattr(self, key) != getattr(defaults, key):
                parts.append(f"{prefix}{getattr(self, key)}")
        if self.tensor_split is not None:
            parts.append("ts" + ":".join(f"{v:g}" for v in self.tensor_split))
        if self.flash_attn != "auto":
            parts.append(f"fa-{self.flash_attn}")
        if (self.type_k, self.type_v) != ("f16", "f16"):
            parts.append(f"kv-{self.type_k}" if self.type_k == self.type_v else f"k-{self.type_k}/v-{self.type_v}")
        if not self.offload_kqv:
            parts.append("no-kqv-offload")
        if not self.op_offload:
            parts.append("no-op-offload")
        return " ".join(parts)

    def context_size(self, n_ctx_train: int | None) -> int:
        """The context the engine gets: n_ctx, else DEFAULT_N_CTX capped at the model's training context."""
        return self.n_ctx or min(DEFAULT_N_CTX, n_ctx_train or DEFAULT_N_CTX)

    def threads(self) -> tuple[int, int]:
        n_threads = self.n_threads or os.cpu_count() or 1
        return n_threads, self.n_threads_batch or n_threads

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key in ("devices", "tensor_split"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "SplitConfig":
        """The inverse of to_dict; also takes a trace's meta['configs'] entries (their `label` is derived)."""
        data = {key: value for key, value in data.items() if key != "label"}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SplitConfigError(f"unknown configuration key(s) {', '.join(unknown)}; "
                                   f"known: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def parse(cls, text: str) -> "SplitConfig":
        """From the command line's form: `key=value` pairs separated by spaces, lists separated by commas, e.g.
        "devices=rpc:0,rpc:1 split_mode=layer n_gpu_layers=99". devices=auto lets the engine choose, devices=cpu
        keeps everything local; an empty text is the default configuration."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values: dict[str, object] = {}
        for item in text.split():
            key, sep, value = item.partition("=")
            if not sep:
                raise SplitConfigError(f"{item!r} in configuration {text!r} is not key=value")
            if key not in types:
                raise SplitConfigError(f"unknown configuration key {key!r}; known: {', '.join(types)}")
            values[key] = _parse_value(key, value, str(types[key]))
        return cls(**values)

    def replace(self, **changes) -> "SplitConfig":
        return dataclasses.replace(self, **changes)


def _parse_value(key: str, text: str, declared: str) -> object:
    if key == "devices":
        return None if text == "auto" else tuple() if text in ("cpu", "none", "") else tuple(text.split(","))
    if key == "tensor_split":
        return tuple(_number(key, part, float) for part in text.split(","))
    if declared.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0", "on", "off"):
            raise SplitConfigError(f"{key}={text!r} is not true or false")
        return text.lower() in ("true", "1", "on")
    if declared.startswith("int"):
        return None if text in ("auto", "none") and "None" in declared else _number(key, text, int)
    return text


def _number(key: str, text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise SplitConfigError(f"{key}={text!r} is not a valid {kind.__name__}") from None


def _short_device(name: str) -> str:
    local = _LOCAL_RPC.fullmatch(name)
    return f"rpc{local.group(1)}" if local else name.lower().replace("rpc:", "rpc@")


def _one_of(key: str, value: object, allowed: dict) -> None:
    if value not in allowed:
        raise SplitConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, allowed))}")


def _integer(key: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SplitConfigError(f"{key} must be an integer >= {minimum}, got {value!r}")
