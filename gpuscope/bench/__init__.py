"""Benchmarks that print their figures (`gpuscope bench ...`): each measures side by side in one run.

  ring      emit cost and drain throughput of the shared-memory ring
  overhead  decode throughput recording, with hooks off, and unpatched
  analysis  load and doctor time against event count
  live      engine step time with the live dashboard open and without
"""
