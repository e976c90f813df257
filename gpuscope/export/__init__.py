"""Exporters: a trace in another tool's format (Perfetto's protobuf trace)."""
