"""The one resume protocol of the built-in graphs' human steps (research review, tool approval).

    Command(resume={"action": "approve"})
    Command(resume={"action": "edit", "value": <the corrected answer, or the tool call's new arguments>})
    Command(resume={"action": "reject", "reason": "why (the agent reads it)"})

A bare string "approve" is accepted too. Anything else is answered with a new interrupt that carries
the problem (`error`, `fix`) and waits again: a typo in a resume never approves, and never breaks the
thread either (LangGraph keeps a resume value once given, so raising would make every later resume
replay the same bad value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from langgraph.types import interrupt
from pydantic import BaseModel, Field, ValidationError

from agentstack.errors import GraphInputError

__all__ = ["Decision", "ask_decision", "parse_decision"]

_SHAPES = '{"action": "approve"}, {"action": "edit", "value": ...} or {"action": "reject", "reason": "..."}'


class Decision(BaseModel):
    """A human's answer to a waiting review or tool call."""

    action: Literal["approve", "edit", "reject"]
    value: Any = Field(default=None, description="edit: the corrected answer or the new tool arguments")
    reason: str | None = Field(default=None, description="reject: why; the agent sees it")


def parse_decision(raw: Any, *, what: str) -> Decision:
    """`raw` (a resume value) as a `Decision` about `what`, or a `GraphInputError` showing the shapes."""
    if raw == "approve":
        raw = {"action": "approve"}
    try:
        decision = Decision.model_validate(raw)
    except ValidationError as exc:
        raise GraphInputError(
            f"{what} was resumed with {raw!r}, which is not a decision ({exc.errors()[0]['msg']})",
            fix=f"resume with {_SHAPES}",
        ) from exc
    if decision.action == "edit" and decision.value in (None, "", {}):
        raise GraphInputError(f"an edit of {what} needs the edited `value`", fix='add "value": ...')
    if decision.action == "reject" and not (decision.reason or "").strip():
        raise GraphInputError(f"rejecting {what} needs a `reason`", fix='add "reason": "..." (the agent reads it)')
    return decision


def ask_decision(request: dict[str, Any], *, what: str, check: Callable[[Decision], None] | None = None) -> Decision:
    """`interrupt(request)` until the resume value is a valid decision (`check` may refuse more)."""
    pending = request
    while True:
        raw = interrupt(pending)
        try:
            decision = parse_decision(raw, what=what)
            if check is not None:
                check(decision)
            return decision
        except GraphInputError as exc:
            pending = {**request, "error": exc.problem, "fix": exc.fix}
