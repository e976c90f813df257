"""Collectors beside the hooks: what the hooks cannot see, on the same trace clock.

  kernels       GPU kernels, copies and sets from torch's profiler (Kineto) in the engine's process
  kernel_table  the `kernels` table: columns, kernel families, per-step GPU busy time, FA kernels per route
  stacks        native CPU stacks of the engine's process sampled by py-spy, attributed to ggml/llama.cpp work
  rocprof       rocprofv3 CSV / rocpd databases imported as a `kernels` table
  perfetto      a trace as a Perfetto protobuf trace
"""
