"""Informational messages (progress, "engine is up to date", "compiling ..."), through `logging`.

Every stage says what it is doing with `say(...)` on the `gpuscope` logger. Its one handler writes each message as a
plain line: to stderr in a terminal, so that stdout carries only results (the CLI prints a path last), and to stdout
in a Jupyter kernel, where stderr is drawn as an error box. Silence it with
`logging.getLogger("gpuscope").setLevel(logging.WARNING)`, or replace its handler to send the messages elsewhere.
"""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("gpuscope")


class _PlainLines(logging.Handler):
    """One line per message on the stream of the moment (looked up per message: pytest and notebooks swap them)."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = sys.stdout if _in_jupyter_kernel() else sys.stderr
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed stream must not turn progress into a failure
            pass


def _in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel (an IPython shell with a kernel), not merely where ipykernel was imported."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


if not any(isinstance(handler, _PlainLines) for handler in logger.handlers):
    logger.addHandler(_PlainLines())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the one handler prints it; a root handler would print it twice


def say(message: str) -> None:
    """Tell the user what is happening (an informational message, never an error)."""
    logger.info(message)
