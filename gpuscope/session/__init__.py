"""In-process engine sessions, split configurations, local RPC devices and the workloads built on them."""
from gpuscope.session.capture import TensorCapture
from gpuscope.session.config import SplitConfig
from gpuscope.session.session import Session
from gpuscope.session.workloads import capture_hidden_states, speculative, sweep

__all__ = ["Session", "SplitConfig", "TensorCapture", "capture_hidden_states", "speculative", "sweep"]
