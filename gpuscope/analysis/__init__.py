"""Analyses: pure functions from a trace's tables (DataFrames) to answers (DataFrames), one module per question,
and `Analysis`, one object over a trace with one method per question.

  steps        the step table (from the decode hooks) and the assignment of events to steps
  context      step time against context: robust fit, breakpoints, memory-bandwidth floor and efficiency
  budget       each step's wall time split into syncs, copies, splits, re-reserves and host time
  allocator    reallocations per step, churn, bytes, time lost
  fa_routes    FlashAttention plans, NONE plans, route changes, ops off their layer's device
  syncs        syncs per step by reason and backend, the eval callback's share
  memory       buffers per device and owner over time, peaks, imbalance against the split
  copies       splits and cross-device copies per step and device pair
  health       lost events, crash state
  speculation  acceptance by draft position, draft vs verify time, tokens/s against the target alone
"""
from gpuscope.analysis.facade import Analysis

__all__ = ["Analysis"]
