"""Exporters: a trace in another tool's format (Perfetto's protobuf trace).

    from gpuscope.export import perfetto_link
    perfetto_link(analysis)        # writes run.pftrace beside run.trace; in a notebook, a link to download it
"""
from gpuscope.export.perfetto import export_perfetto, perfetto_link

__all__ = ["export_perfetto", "perfetto_link"]
