"""The live dashboard (ipywidgets + plotly FigureWidget): `gpuscope.live(session)`,
`gpuscope.live(ring_path)` for another process's ring, `gpuscope.live()` then `.sweep(...)` for several
configurations. See gpuscope.live.dashboard.

This package is callable, `gpuscope.live(...)` being the way in, while `gpuscope.live.dashboard` and
`gpuscope.live.events` stay importable as modules."""
from __future__ import annotations

from gpuscope.extras import callable_package


def live(source=None, **options):
    """A live dashboard over a Session (in this process or isolated), a ring file of another process, or (None)
    this process's engine, displayed in the notebook; returns the Dashboard (run(), sweep(), pause(), stop(),
    wait()). Options: interval_s (seconds between refreshes, default 0.25), findings_every_s (default 5),
    title, show."""
    # Imported here, not above: `import gpuscope` makes this package callable, and the dashboard brings the whole
    # stack (runs, sessions, plotly, ipywidgets) that a trace reader or the CLI must not pay for.
    from gpuscope.live.dashboard import Dashboard

    return Dashboard(source, **options)


callable_package(__name__, live)
__all__ = ["live"]
