"""Runs: everything that opens sessions or starts programs and writes traces, in one place.

  sweep      the one sweep over split configurations and context depths (`Around` wraps collectors around it)
  collect    the kernel profiler and the stack sampler as `Around`s of a sweep
  ab         one workload on two engine builds, interleaved in rounds
  record     any program on a hooked engine, its events as a trace
  demo       the main job: engine, model, sweep, doctor, report
  notebooks  the shipped notebooks, run in a real kernel
"""
from gpuscope.runs.sweep import sweep

__all__ = ["sweep"]
