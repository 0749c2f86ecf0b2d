"""`agentstack metrics`: one Prometheus `/metrics` for processes of your own that use agentstack as a library.

Each of them runs with `PROMETHEUS_MULTIPROC_DIR` set to one directory (before it imports agentstack), so its
`Metrics` write there; this command serves the sum of all of them, as `agentstack api --workers` does for its
workers. In a single process, `observability.metrics.serve(port)` does it without a second process.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from rich.console import Console

from agentstack.errors import ConfigError
from agentstack.observability._metrics import MULTIPROCESS_ENV, directory_registry, serve_registry

__all__ = ["serve_metrics"]


def serve_metrics(directory: Path | None, *, host: str, port: int, console: Console) -> None:
    """Serve the directory's metrics until SIGINT or SIGTERM."""
    found = directory or (Path(os.environ[MULTIPROCESS_ENV]) if os.environ.get(MULTIPROCESS_ENV) else None)
    if found is None:
        raise ConfigError(
            "no metrics directory: your processes need one to write into, and this command to read",
            fix=f"set {MULTIPROCESS_ENV}=/some/dir for your processes and pass --dir /some/dir here",
        )
    if not found.is_dir():
        raise ConfigError(
            f"{found} is not a directory", fix=f"mkdir -p {found}, the {MULTIPROCESS_ENV} of your processes"
        )
    try:
        server = serve_registry(directory_registry(found), port, host)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}", fix="pick another --port") from None
    console.print(f"metrics of {found} at http://{host}:{port}/metrics (Ctrl-C stops)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    console.print("metrics: stopped")
