"""Before and after: compare two traces, and run one workload on two engine builds (A/B)."""
from gpuscope.compare.compare import Comparison, compare

__all__ = ["Comparison", "compare"]
