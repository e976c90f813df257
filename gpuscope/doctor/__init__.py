"""The doctor: rules over a trace's analyses that turn events into findings a person can act on."""
from gpuscope.doctor.findings import Finding
from gpuscope.doctor.rules import RULES, diagnose

__all__ = ["Finding", "RULES", "diagnose"]
