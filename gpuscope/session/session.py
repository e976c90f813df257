"""In-process engine sessions: a patched engine build and a model, loaded into this Python process, decoding
while the ring is read live.

    from gpuscope.session import Session, SplitConfig
    with Session(model=path, config=SplitConfig(devices=["rpc:0", "rpc:1"])) as s:
        s.fill(512)                 # context to depth 512
        s.decode([s.argmax()])      # one step, timed from decode entry to synchronized end
        s.ring.read_all()           # the events since this session opened (a live reader of the ring)
        trace = s.trace()           # steps + events of this process and its RPC servers

One process loads one libllama and writes one ring; sessions in the same process share both (one at a time is
the normal use). `open_session(..., isolate=True)` runs the same API in a worker process instead (see worker.py).
"""
from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from gpuscope.errors import DecodeError, EngineConflictError, NotPatchedError, SessionError
from gpuscope.models import default_model
from gpuscope.models.store import progress
from gpuscope.ring.reader import RingReader
from gpuscope.session.assemble import build_trace, steps_frame
from gpuscope.session.binding import EngineBuild, load_binding, resolve_engine
from gpuscope.session.config import CACHE_TYPES, FLASH_ATTN, SPLIT_MODES, SplitConfig
from gpuscope.session.ggml import Device, Ggml
from gpuscope.session.load import load_since, snapshot
from gpuscope.session.model_info import ModelInfo, read_model_info
from gpuscope.session.rpc import LocalRpcServers
from gpuscope.session.scratch import new_ring_path, remove_leftovers
from gpuscope.trace.model import Trace, save_trace
from gpuscope.trace.ringtap import RingTap
from gpuscope.trace.standalone import standalone_meta

_POLL_INTERVAL_NS = 50_000_000  # drain rings at most every 50 ms between steps
_FILL_SEED = 1234
_ANNOUNCE_BYTES = 1 << 30  # models this large take long enough to load that a line says so


class Engine:
    """This process's engine: one build's libllama (through llama-cpp-python), its ggml libraries, and the
    process's ring. Created by the first session; later sessions must use the same build."""

    _current: "Engine | None" = None

    @classmethod
    def current(cls) -> "Engine | None":
        """This process's engine, once a session loaded one."""
        return cls._current

    @classmethod
    def acquire(cls, build: EngineBuild, ring_path: Path | None = None, ring_capacity: int | None = None) -> "Engine":
        if cls._current is not None:
            if cls._current.build.library.resolve() != build.library.resolve():
                raise EngineConflictError(
                    f"this process already runs the engine build at {cls._current.build.root}; a process can load "
                    f"one libllama, so the build at {build.root} needs its own process: open_session(..., isolate=True)")
            return cls._current
        cls._current = cls(build, ring_path, ring_capacity)
        return cls._current

    def __init__(self, build: EngineBuild, ring_path: Path | None, ring_capacity: int | None):
        self.build = build
        self.llama = load_binding(build)
        self.ggml = Ggml(build)
        ring = self.ggml.ring_functions()
        if ring is None:
            raise NotPatchedError(f"the engine build at {build.root} has no gpuscope hooks (ggml-base does not "
                                  "export gpuscope_ring_open): build a patched one with `gpuscope engine build`")
        self._ring_open, self._ring_close = ring
        self.verbose = False
        self.log = deque(maxlen=400)
        self._log_callback = self.llama.llama_log_callback(self._on_log)
        self.llama.llama_log_set(self._log_callback, None)
        self.llama.llama_backend_init()
        self._owns_ring_file = ring_path is None
        self.ring_path = ring_path or new_ring_path("session")
        status = self._ring_open(str(self.ring_path).encode(), ring_capacity or 0, 0)
        if status != 0:
            raise SessionError(f"could not open the ring at {self.ring_path}: {os.strerror(-status)}")
        atexit.register(self._shutdown)

    def _on_log(self, level: int, text: bytes, _user_data) -> None:
        message = text.decode("utf-8", "replace") if text else ""
        self.log.append(message)
        if self.verbose:
            sys.stderr.write(message)

    def log_tail(self, lines: int = 12) -> str:
        return "".join(list(self.log)[-lines:]).rstrip()

    def _shutdown(self) -> None:
        try:
            self._ring_close()
            self.llama.llama_log_set(self.llama.llama_log_callback(), None)  # no Python callbacks during exit
        finally:
            if self._owns_ring_file:
                self.ring_path.unlink(missing_ok=True)

    def local_devices(self) -> list[Device]:
        return self.ggml.local_devices()


class _Model:
    """A loaded llama_model."""

    def __init__(self, engine: Engine, info: ModelInfo, config: SplitConfig, devices: list[Device] | None):
        llama = engine.llama
        params = llama.llama_model_default_params()
        params.n_gpu_layers = config.n_gpu_layers
        params.split_mode = SPLIT_MODES[config.split_mode]
        params.main_gpu = config.main_gpu
        self._keep: list = []  # arrays the engine reads through raw pointers while loading
        if config.tensor_split is not None:
            proportions = (ctypes.c_float * llama.llama_max_devices())(*config.tensor_split)
            self._keep.append(proportions)
            params.tensor_split = proportions
        if devices is not None:
            handles = (ctypes.c_void_p * (len(devices) + 1))(*[d.handle for d in devices], None)
            self._keep.append(handles)
            params.devices = ctypes.cast(handles, ctypes.c_void_p).value
        self.engine = engine
        self.info = info
        self.handle = llama.llama_model_load_from_file(str(info.path).encode(), params)
        if not self.handle:
            raise SessionError(f"the engine could not load {info.path} with configuration {config.label!r}:\n"
                               f"{engine.log_tail()}")
        self.vocab = llama.llama_model_get_vocab(self.handle)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode()
        capacity = len(data) + 16
        for _ in range(2):  # a negative count is the capacity the text needs
            tokens = (self.engine.llama.llama_token * capacity)()
            count = self.engine.llama.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_special,
                                                     False)
            if count >= 0:
                return list(tokens[:count])
            capacity = -count
        raise SessionError(f"could not tokenize {text[:40]!r}")

    def free(self) -> None:
        if self.handle:
            self.engine.llama.llama_model_free(self.handle)
            self.handle = None


class _Context:
    """A llama_context on a model, with its reusable batch and its position in sequence 0."""

    def __init__(self, model: _Model, config: SplitConfig, eval_callback=None):
        llama = model.engine.llama
        params = llama.llama_context_default_params()
        params.n_ctx = config.context_size(model.info.n_ctx_train)
        params.n_batch = config.n_batch
        params.n_ubatch = config.n_ubatch
        params.n_threads, params.n_threads_batch = config.threads()
        params.flash_attn_type = FLASH_ATTN[config.flash_attn]
        params.type_k = CACHE_TYPES[config.type_k]
        params.type_v = CACHE_TYPES[config.type_v]
        params.offload_kqv = config.offload_kqv
        params.op_offload = config.op_offload
        params.no_perf = False
        if eval_callback is not None:
            params.cb_eval = eval_callback
        self.model = model
        self.llama = llama
        self.handle = llama.llama_init_from_model(model.handle, params)
        if not self.handle:
            raise SessionError(f"the engine could not create a context for configuration {config.label!r}:\n"
                               f"{model.engine.log_tail()}")
        self.n_ctx = llama.llama_n_ctx(self.handle)
        self.n_batch = llama.llama_n_batch(self.handle)
        self.memory = llama.llama_get_memory(self.handle)
        self.batch = llama.llama_batch_init(self.n_batch, 0, 1)
        self._tokens = np.ctypeslib.as_array(self.batch.token, (self.n_batch,))
        self._positions = np.ctypeslib.as_array(self.batch.pos, (self.n_batch,))
        self._outputs = np.ctypeslib.as_array(self.batch.logits, (self.n_batch,))
        n_seq_id = np.ctypeslib.as_array(self.batch.n_seq_id, (self.n_batch,))
        n_seq_id[:] = 1
        for i in range(self.n_batch):
            self.batch.seq_id[i][0] = 0
        self.position = 0
        self.last_outputs = 0

    def decode(self, tokens: np.ndarray, outputs: str) -> tuple[int, int, int]:
        """Decode `tokens` at the current position; returns (status, t_begin_ns, t_end_ns)."""
        n = len(tokens)
        self._tokens[:n] = tokens
        self._positions[:n] = np.arange(self.position, self.position + n, dtype=np.int32)
        self._outputs[:n] = 1 if outputs == "all" else 0
        if outputs == "last":
            self._outputs[n - 1] = 1
        self.batch.n_tokens = n
        begin = time.monotonic_ns()
        status = self.llama.llama_decode(self.handle, self.batch)
        self.llama.llama_synchronize(self.handle)
        end = time.monotonic_ns()
        if status == 0:
            self.position += n
            self.last_outputs = int(self._outputs[:n].sum())
        return status, begin, end

    def logits(self, index: int) -> np.ndarray:
        pointer = self.llama.llama_get_logits_ith(self.handle, index)
        if not pointer:
            raise SessionError(f"no logits for output {index} of the last batch (it had {self.last_outputs})")
        return np.ctypeslib.as_array(pointer, (self.model.n_vocab,))

    def rollback(self, position: int) -> None:
        if not 0 <= position <= self.position:
            raise SessionError(f"cannot roll back to position {position}: the context holds 0..{self.position - 1}")
        self.llama.llama_memory_seq_rm(self.memory, 0, position, -1)
        self.position = position

    def clear(self) -> None:
        self.llama.llama_memory_clear(self.memory, True)
        self.position = 0

    def free(self) -> None:
        if self.handle:
            self.llama.llama_batch_free(self.batch)
            self.llama.llama_free(self.handle)
            self.handle = None


class Session:
    """A model (and optionally a draft model) decoding in this process, under one split configuration.

    model: a GGUF path (None: the default model, `gpuscope model default`); engine: a build folder or name (None:
    the default build); draft_model: a second model loaded with the same configuration, reached with
    role='draft' (gpuscope.session.open_session(..., isolate=True) opens the same API with the engine in a worker
    process: crash isolation, another build).
    ring_path, ring_capacity: this process's ring (the first session of a process opens it; default: a fresh file
    in /dev/shm, removed at exit); rpc_threads: threads per local ggml-rpc-server; verbose: print the engine's log.
    collect_events=False leaves the rings to a reader in another process (the worker's parent)."""

    in_process = True  # the engine runs in this process: its steps can be held between two (dashboards)

    def __init__(self, model: str | os.PathLike | None = None, config: SplitConfig | None = None, *,
                 engine: str | os.PathLike | EngineBuild | None = None, draft_model: str | os.PathLike | None = None,
                 ring_path: str | os.PathLike | None = None, ring_capacity: int | None = None,
                 rpc_threads: int | None = None, verbose: bool = False, collect_events: bool = True):
        remove_leftovers()
        self._load_from = snapshot()  # what else runs on the machine while this session measures
        self._load: dict | None = None  # frozen when the session closes
        self.config = config or SplitConfig()
        self.build = resolve_engine(engine)
        self.model_info = read_model_info(model if model is not None else default_model())
        self.draft_info = read_model_info(draft_model) if draft_model is not None else None
        self._collect = collect_events
        self._closed = False
        self._contexts: dict[str, _Context] = {}
        self._models: dict[str, _Model] = {}
        self._rows: list[dict] = []
        self._tags: dict = {}
        self._listeners: list[Callable[[dict], None]] = []
        self._capture = None
        self._last_poll_ns = 0
        self._rpc: LocalRpcServers | None = None
        self._final: dict[str, dict] | None = None
        self.devices: list[Device] | None = None
        self.engine = Engine.acquire(self.build, Path(ring_path) if ring_path else None, ring_capacity)
        self.engine.verbose = verbose
        self._main = RingTap(self.engine.ring_path)
        if collect_events:
            self._main.skip_existing()
        # the engine (and its ring) outlives sessions in one process: this session's live view starts here
        self._ring_reader = RingReader(self.engine.ring_path)
        self._ring_reader.skip_to(self._ring_reader.written_position())
        atexit.register(self.close)
        try:
            self._open(rpc_threads, ring_capacity)
        except BaseException:
            self.close()
            raise

    def _open(self, rpc_threads: int | None, ring_capacity: int | None) -> None:
        local = self.engine.local_devices()
        self._check(local)
        if self.config.local_rpc_servers:
            # their rings belong to the process that reads them: this one, or the worker's parent
            self._rpc = LocalRpcServers(self.build.program("ggml-rpc-server"), self.config.local_rpc_servers,
                                        threads=rpc_threads, ring_capacity=ring_capacity,
                                        rings_owner=None if self._collect else os.getppid()).start()
        self.devices = self._devices(local)
        for role, info in (("target", self.model_info), ("draft", self.draft_info)):
            if info is None:
                continue
            if info.size_bytes >= _ANNOUNCE_BYTES:
                progress(f"loading {info.name} ({info.size_bytes / 1e9:.1f} GB) as {self.label!r}")
            self._models[role] = _Model(self.engine, info, self.config, self.devices)
            self._contexts[role] = _Context(self._models[role], self.config)

    def _devices(self, local: list[Device]) -> list[Device] | None:
        if self.config.devices is None:
            return None
        by_name = {d.name.lower(): d for d in local}
        devices: list[Device] = []
        rpc_specs: dict[str, list] = {}
        for name in self.config.devices:
            if name.startswith("rpc:"):
                target = name[4:]
                endpoint = self._rpc.endpoints[int(target)] if target.isdigit() else target
                found = self.engine.ggml.rpc_devices(endpoint)
                rpc_specs[name] = [d.spec() for d in found]
                devices += found
            else:
                devices.append(by_name[name.lower()])
        self._check(local, rpc_specs)
        return devices

    def _check(self, local: list[Device], rpc_specs: dict | None = None) -> None:
        for info in filter(None, (self.model_info, self.draft_info)):
            self.config.check_against([d.spec() for d in local], info.n_ctx_train, rpc_specs)

    # -- state ---------------------------------------------------------------------------------------------------

    @property
    def label(self) -> str:
        return self.config.label

    def context(self, role: str = "target") -> _Context:
        if self._closed:
            raise SessionError("the session is closed")
        try:
            return self._contexts[role]
        except KeyError:
            raise SessionError(f"no {role!r} model in this session (roles: {', '.join(self._contexts)}); "
                               "pass draft_model=... for a draft") from None

    def position(self, role: str = "target") -> int:
        """The next position of sequence 0 (tokens in the context)."""
        return self.context(role).position

    def n_ctx(self, role: str = "target") -> int:
        return self.context(role).n_ctx

    def n_batch(self, role: str = "target") -> int:
        return self.context(role).n_batch

    def n_vocab(self, role: str = "target") -> int:
        return self.context(role).model.n_vocab

    @property
    def ring(self) -> RingReader:
        """A live reader of this process's ring from this session's opening on (its own cursor: reading it does not
        take events from traces)."""
        return self._ring_reader

    def processes(self) -> dict[str, dict]:
        """Every process writing events for this session: name -> pid and ring path."""
        described = {"main": {"pid": os.getpid(), "ring": str(self.engine.ring_path)}}
        for server in self._rpc.describe() if self._rpc else []:
            described[server.pop("name")] = server
        return described

    # -- decoding ------------------------------------------------------------------------------------------------

    def decode(self, tokens: Sequence[int], *, outputs: str = "last", role: str = "target",
               phase: str = "decode") -> int:
        """Decode one batch at the current position as one recorded step; returns the new position.

        outputs: 'last' (logits of the last token), 'all' (every token: verification), 'none'."""
        context = self.context(role)
        tokens = np.asarray(tokens, dtype=np.int32)
        if outputs not in ("last", "all", "none"):
            raise SessionError(f"outputs={outputs!r} is not 'last', 'all' or 'none'")
        if not 1 <= len(tokens) <= context.n_batch:
            raise DecodeError(f"a batch holds 1 to {context.n_batch} tokens (n_batch), got {len(tokens)}: split it")
        if context.position + len(tokens) > context.n_ctx:
            raise DecodeError(f"{len(tokens)} tokens at position {context.position} overflow the context "
                              f"(n_ctx={context.n_ctx}): roll back, clear, or use a larger n_ctx")
        if tokens.min() < 0 or tokens.max() >= context.model.n_vocab:
            raise DecodeError(f"token ids must be in 0..{context.model.n_vocab - 1}")
        if self._capture is not None and role == "target":
            self._capture.begin_step(len(self._rows))
        before = context.position
        status, begin, end = context.decode(tokens, outputs)
        row = {"step": len(self._rows), "config": self.label, "role": role, "phase": phase,
               "pos_before": before, "pos_after": context.position, "n_tokens": len(tokens),
               "n_outputs": context.last_outputs if status == 0 else 0, "t_begin_ns": begin, "t_end_ns": end,
               "wall_ns": end - begin, "status": status, **self._tags}
        self._rows.append(row)
        for listener in self._listeners:
            listener(row)
        self._poll(end)
        if status != 0:
            raise DecodeError(f"llama_decode returned {status} ({_DECODE_STATUS.get(status, 'error')}):\n"
                              f"{self.engine.log_tail(4)}")
        return context.position

    def fill(self, depth: int, *, role: str = "target", phase: str = "fill") -> int:
        """Fill the context with pseudo-random tokens from the current position up to `depth`, in batches of
        n_batch (each one step); returns the position."""
        context = self.context(role)
        if depth > context.n_ctx:
            raise DecodeError(f"depth {depth} exceeds the context (n_ctx={context.n_ctx})")
        rng = np.random.default_rng(_FILL_SEED + context.position)
        while context.position < depth:
            count = min(context.n_batch, depth - context.position)
            self.decode(rng.integers(0, context.model.n_vocab, count), outputs="last", role=role, phase=phase)
        return context.position

    def random_tokens(self, count: int, role: str = "target", seed: int = 0) -> list[int]:
        return np.random.default_rng(seed).integers(0, self.n_vocab(role), count).tolist()

    def tokenize(self, text: str, role: str = "target") -> list[int]:
        return self.context(role).model.tokenize(text)

    def logits(self, index: int = -1, role: str = "target") -> np.ndarray:
        """A copy of the logits of output `index` of the last batch (-1: the last output)."""
        return self.context(role).logits(index).copy()

    def argmax(self, index: int = -1, role: str = "target") -> int:
        return int(np.argmax(self.context(role).logits(index)))

    def top(self, index: int = -1, role: str = "target") -> tuple[int, float]:
        """Greedy token and its softmax probability."""
        logits = self.context(role).logits(index)
        best = int(np.argmax(logits))
        weights = np.exp(logits - logits[best])
        return best, float(1.0 / weights.sum())

    def rollback(self, position: int, role: str = "target") -> None:
        """Remove every cached token at `position` and after (llama_memory_seq_rm)."""
        self.context(role).rollback(position)

    def clear(self, role: str = "target") -> None:
        self.context(role).clear()

    @contextlib.contextmanager
    def tagged(self, **tags):
        """Add columns to the steps recorded inside the block (e.g. depth=1024)."""
        previous = self._tags
        self._tags = {**previous, **tags}
        try:
            yield self
        finally:
            self._tags = previous

    def set_tags(self, **tags) -> None:
        """Replace the extra columns of the steps recorded from now on (tagged() is the scoped form)."""
        self._tags = dict(tags)

    def add_step_listener(self, listener: Callable[[dict], None]) -> None:
        """Call `listener(row)` after every step (progress bars, live plots)."""
        self._listeners.append(listener)

    def set_capture(self, capture) -> None:
        """Install a TensorCapture as the target context's eval callback (None removes it). The engine reads the
        callback when a context is created, so this recreates the context: the cache is emptied."""
        old = self._contexts["target"]
        model = old.model
        old.free()
        self._capture = capture
        callback = (capture.callback(self.engine.ggml, self.engine.llama.ggml_backend_sched_eval_callback)
                    if capture is not None else None)
        self._contexts["target"] = _Context(model, self.config, eval_callback=callback)

    def captured(self) -> list[dict]:
        """The tensors the installed TensorCapture took so far (see set_capture)."""
        return self._capture.records if self._capture is not None else []

    def run(self, function: Callable, *args, **kwargs):
        """`function(self, *args, **kwargs)`: the same call runs inside the worker for an isolated session."""
        return function(self, *args, **kwargs)

    # -- events and traces ---------------------------------------------------------------------------------------

    def _poll(self, now_ns: int) -> None:
        if not self._collect or now_ns - self._last_poll_ns < _POLL_INTERVAL_NS:
            return
        self._last_poll_ns = now_ns
        self._main.poll()
        if self._rpc is not None:
            self._rpc.poll()

    @property
    def steps(self) -> pd.DataFrame:
        return steps_frame(self._rows)

    def meta(self) -> dict:
        models = {"target": self.model_info.to_meta()}
        if self.draft_info is not None:
            models["draft"] = self.draft_info.to_meta()
        return {"source": "session", "configs": [{**self.config.to_dict(), "label": self.label}],
                "model": models["target"], "models": models,
                "devices": [{"name": d.name, "kind": d.kind, "description": d.description} for d in self.devices or []],
                "load": self._load if self._closed else self._load_so_far(),
                **standalone_meta(self.model_info.path, self.build.meta)}

    def _load_so_far(self) -> dict | None:
        helpers = [server.process.pid for server in self._rpc.servers] if self._rpc is not None else []
        return load_since(self._load_from, helpers)

    def trace(self, *, tables: dict[str, pd.DataFrame] | None = None, **meta) -> Trace:
        """Steps, events of every process, and metadata (extra `meta` keys, e.g. workload=...)."""
        if not self._collect:
            raise SessionError("this session leaves its events to another process (collect_events=False)")
        processes = self._final or self._process_events(finish=False)
        return build_trace(self._rows, processes, label=self.label, meta={**self.meta(), **meta},
                           extra_tables=tables)

    def save(self, path: str | os.PathLike, **meta) -> Path:
        return save_trace(self.trace(**meta), path)

    def _process_events(self, finish: bool) -> dict[str, dict]:
        tables, ring_meta = self._main.finish() if finish else self._main.snapshot()
        processes = {"main": {"pid": os.getpid(), "tables": tables, "ring": ring_meta}}
        if self._rpc is not None:
            if finish:
                processes.update(self._rpc.finish())
            else:
                for server in self._rpc.servers:
                    server_tables, server_ring = self._rpc.taps[server.name].snapshot()
                    processes[server.name] = {"pid": server.process.pid, "tables": server_tables,
                                              "ring": server_ring, "endpoint": server.endpoint}
        return processes

    def close(self) -> None:
        """Free the contexts and models, stop the RPC servers, and freeze the trace (still readable)."""
        if self._closed:
            return
        self._load = self._load_so_far()
        self._closed = True
        atexit.unregister(self.close)
        for context in self._contexts.values():
            context.free()
        for model in self._models.values():
            model.free()
        if self._collect:
            self._final = self._process_events(finish=True)
        elif self._rpc is not None:
            self._rpc.stop()  # the rings stay for the reader in the other process
        self._ring_reader.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"position {self.position()}"
        return f"Session({self.model_info.name!r}, {self.label!r}, {state}, {len(self._rows)} steps)"


_DECODE_STATUS = {1: "no KV cache slot for the batch", 2: "aborted", -1: "invalid batch",
                  -2: "memory allocation failed"}

