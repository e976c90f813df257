"""Engine sessions (in this process or a worker: open_session), split configurations, local RPC devices and the workloads built on them
(sweeps over configurations are runs: gpuscope.runs.sweep)."""
from gpuscope.session.capture import TensorCapture
from gpuscope.session.config import SplitConfig
from gpuscope.session.protocol import SessionLike, open_session
from gpuscope.session.session import Session
from gpuscope.session.worker import IsolatedSession
from gpuscope.session.workloads import capture_hidden_states, speculative

__all__ = ["IsolatedSession", "Session", "SessionLike", "SplitConfig", "TensorCapture", "capture_hidden_states", "open_session",
           "speculative"]
