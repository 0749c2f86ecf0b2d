"""The application layer's agent server (issue 13, under way): every registered graph over the LangGraph HTTP
API, run by workers that share one Postgres.

Built so far: the runs queue (`_runs.RunQueue`): threads, runs, leases, cancels and stream events on Postgres.
Nothing is exported until the server that uses it is.
"""

from __future__ import annotations

__all__: list[str] = []
