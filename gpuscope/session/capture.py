"""Capturing intermediate tensors with the engine's eval callback (hidden states, as draft-tape schemes do).

The scheduler asks the callback about every node of every split (`ask=True`); for each node it wants, it computes
the graph up to that node, synchronizes the backend and hands the tensor over (`ask=False`). That sync per captured
tensor is the cost this makes visible; a patched engine records each one as a `sync` event with reason
`eval_callback`.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

import numpy as np

_NUMPY_TYPES = {"f32": np.float32, "f16": np.float16}


class TensorCapture:
    """Captures the tensors whose names `select` accepts.

    select: a regular expression matched against the whole tensor name (e.g. r"l_out-(3|7|11)": the residual
    stream after layers 3, 7 and 11), an iterable of exact names, or a function name -> bool (picklable, i.e.
    defined at module level, for isolated sessions). keep_data=False records names and shapes only."""

    def __init__(self, select: str | Iterable[str] | Callable[[str], bool], *, keep_data: bool = True):
        if isinstance(select, str):
            self._pattern: str | None = select
            self._select = None
            re.compile(select)
        elif callable(select):
            self._pattern, self._select = None, select
        else:
            self._pattern, self._select = None, frozenset(select)
        self.keep_data = keep_data
        self.active = True
        self.records: list[dict] = []
        self._step = -1
        self._decisions: dict[str, bool] = {}
        self._ggml = None
        self._callback = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_ggml"] = state["_callback"] = None  # ctypes objects stay in their process
        state["_decisions"] = {}
        return state

    def wants(self, name: str) -> bool:
        decision = self._decisions.get(name)
        if decision is None:
            if self._pattern is not None:
                decision = re.fullmatch(self._pattern, name) is not None
            elif isinstance(self._select, frozenset):
                decision = name in self._select
            else:
                decision = bool(self._select(name))
            self._decisions[name] = decision
        return decision

    def begin_step(self, step: int) -> None:
        self._step = step

    def callback(self, ggml, callback_type):
        """The ctypes callback for llama_context_params.cb_eval (kept alive by this object)."""
        self._ggml = ggml
        self._callback = callback_type(self._on_eval)
        return self._callback

    def _on_eval(self, tensor: int, ask: bool, _user_data) -> bool:
        view = self._ggml.tensor(tensor)
        name = view.name.decode("utf-8", "replace")
        if ask:
            return self.active and self.wants(name)
        type_name = self._ggml.type_name(view.type)
        shape = tuple(int(n) for n in reversed(view.ne[:]))
        while len(shape) > 1 and shape[0] == 1:
            shape = shape[1:]
        record = {"step": self._step, "name": name, "type": type_name, "shape": shape}
        if self.keep_data:
            raw = self._ggml.tensor_bytes(tensor)
            dtype = _NUMPY_TYPES.get(type_name)
            if dtype is not None and len(raw) == int(np.prod(shape)) * np.dtype(dtype).itemsize:
                record["data"] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
            else:  # quantized or strided: the bytes as the engine holds them
                record["data"] = np.frombuffer(raw, dtype=np.uint8).copy()
        self.records.append(record)
        return True

