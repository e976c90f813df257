"""`gpuscope metrics RING...`: a Prometheus exporter over the rings of running engines (gpuscope.metrics), with
captures of the last seconds of a ring when a condition fires."""
from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from gpuscope.log import say
from gpuscope.metrics.capture import REASONS, CapturePolicy
from gpuscope.metrics.exporter import DEFAULT_INTERVAL_S, DEFAULT_PORT, Exporter
from gpuscope.trace.ringtap import ring_dir


def _run(args) -> int:
    capture = None
    if args.capture_dir:
        reasons = tuple(args.capture_on.split(",")) if args.capture_on else REASONS
        capture = CapturePolicy(Path(args.capture_dir), seconds=args.capture_seconds, every_s=args.capture_every,
                                step_ms=args.capture_step_ms, reasons=reasons)
    exporter = Exporter(args.rings or [str(ring_dir() / "*.ring")], capture=capture)
    server = exporter.serve(args.port, args.address)
    say(f"gpuscope metrics: serving http://{args.address}:{server.server_port}/metrics, following "
        f"{', '.join(exporter.sources)}")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: stop.set())
    try:
        exporter.run(args.interval, stop=stop, duration_s=args.duration)
    finally:
        server.shutdown()
        exporter.close()
    return 0


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535; 0: any free one)")
    return port


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "metrics", help="serve the engine's hook events as Prometheus metrics",
        description="Follows the rings of running engines (a llama-server started with GPUSCOPE_RING=PATH, "
                    "sessions of a notebook) and serves their step times, re-plans, FlashAttention plans, syncs, "
                    "copies, memory and ring health at /metrics for Prometheus. A ring that vanishes, is replaced "
                    "or is unreadable is said in one line and the others are followed on. See docs/metrics.md.")
    parser.add_argument("rings", nargs="*", metavar="RING",
                        help="ring paths (followed once they exist), glob patterns or folders of *.ring files "
                             "(looked at again every 2 s); default: every *.ring in the ring folder "
                             f"({ring_dir()})")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="S",
                        help=f"seconds between polls of the rings (default {DEFAULT_INTERVAL_S})")
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until SIGINT "
                                                                    "or SIGTERM)")
    parser.add_argument("--capture-dir", metavar="DIR",
                        help="write a trace of a ring's last seconds here when a condition fires (default: no "
                             "captures)")
    parser.add_argument("--capture-on", metavar="LIST",
                        help=f"the conditions that capture, comma-separated (default all: {','.join(REASONS)}; "
                             "slow_step needs --capture-step-ms)")
    parser.add_argument("--capture-seconds", type=float, default=30.0, metavar="S",
                        help="seconds of the ring each capture holds (default 30)")
    parser.add_argument("--capture-every", type=float, default=60.0, metavar="S",
                        help="at most one capture per ring and condition every S seconds (default 60); the others "
                             "are counted in gpuscope_captures_skipped_total")
    parser.add_argument("--capture-step-ms", type=float, metavar="MS",
                        help="a step slower than MS milliseconds fires slow_step")
    parser.set_defaults(func=_run)
