"""Logs: human lines on a terminal (the default), or one JSON object a line for a log shipper
(`agentstack --log-format json ...`, or `AGENTSTACK_LOG_FORMAT=json`, which worker processes inherit).

A JSON line holds time, level, logger, message, and, inside a graph run, its run id, thread id, trace id and
the span of the model call under way: what joins a log line to its trace and its checkpoints. In both formats
secrets and personal data are redacted from the message before it is written (API keys, JWTs, e-mail
addresses, card numbers...: `PiiScanner.redact`), whatever a library put in it: a log is a copy of data kept
longer and read by more people than the data itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

from agentstack.observability._context import model_call

__all__ = ["JsonFormatter", "RedactingFilter", "configure_logging"]

LogFormat = Literal["human", "json"]


class RedactingFilter(logging.Filter):
    """Replaces personal data and secrets in a record's message (formatted with its arguments) by their kind."""

    def __init__(self) -> None:
        super().__init__()
        from agentstack.safety._pii import PiiScanner

        self._scanner = PiiScanner()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted, found = self._scanner.redact(message)
        if found:
            record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line |= _run_context()
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def _run_context() -> dict[str, str]:
    """The graph run this record was written in, if any: run, thread, trace, and the model call's span."""
    from langchain_core.runnables.config import var_child_runnable_config

    found: dict[str, str] = {}
    config = var_child_runnable_config.get() or {}
    configurable = config.get("configurable") or {}
    metadata = config.get("metadata") or {}
    for key, value in (
        ("run_id", configurable.get("run_id") or metadata.get("run_id")),
        ("thread_id", configurable.get("thread_id")),
        ("trace_id", metadata.get("trace_id")),
    ):
        if value:
            found[key] = str(value)
    span = model_call.get()
    if span is not None:
        context = span.get_span_context()
        found["trace_id"] = f"{context.trace_id:032x}"
        found["span_id"] = f"{context.span_id:016x}"
    return found


def configure_logging(log_format: LogFormat = "human") -> logging.Handler:
    """One handler on the root logger, writing to stderr, redacting; returns it. `human`: warnings and errors,
    the message alone (what Python prints with no logging set up); `json`: from INFO up, a JSON object a line.
    For the CLI and its servers; a library user's own logging setup is theirs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "agentstack", False)]:
        root.removeHandler(old)
    handler.agentstack = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO if log_format == "json" else logging.WARNING)
    return handler
