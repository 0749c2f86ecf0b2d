"""What the gateway does with personal data in OpenAI-shaped requests: `off`, `mask` (placeholders before the
model, the values put back in what it answers, for the caller only) or `block` (a 400 naming the kinds found,
never the values).

A chat request's message contents (text, or the text parts of a list) and a completion's prompt are masked
with one mapping per request, so a value the user gave twice is one placeholder. The reply is restored whole
(`restore_reply`) or, streamed, chunk by chunk (`StreamRestorer`): a placeholder the model writes may arrive
split over two chunks (`<EMA` + `IL_1>`), so what could be the start of one is held back until the next chunk
says whether it was.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import orjson

from agentstack.safety._injection import mode_for, strings_in
from agentstack.safety._pii import PiiScanner, restore

if TYPE_CHECKING:
    from agentstack.config import Settings

__all__ = ["PiiBlocked", "PiiPolicy", "StreamRestorer", "pii_scanner"]

PiiMode = Literal["off", "mask", "block"]
_PARTIAL = re.compile(r"<[A-Z_]*\d*$")  # the start of a placeholder, cut by a chunk's end
_HOLDBACK = 96  # characters a redacted stream keeps back: longer than any value but a JWT or an API key


def pii_scanner(settings: Settings) -> PiiScanner:
    """The detectors a deployment set: the built-in kinds, its own patterns, and Presidio's model when one is named
    (loaded now, once: a missing model is a `ConfigError` at start, not at the first request)."""
    finders = []
    if settings.pii_presidio_model:
        from agentstack.safety._presidio import PresidioDetector

        finders.append(PresidioDetector(settings.pii_presidio_model, entities=settings.pii_presidio_entities))
    return PiiScanner(settings.pii_patterns, finders=finders)


class PiiBlocked(Exception):
    """A request refused under `block`: the kinds found (never the values)."""

    def __init__(self, kinds: Counter[str]) -> None:
        self.kinds = kinds
        found = ", ".join(f"{kind} ({n})" for kind, n in sorted(kinds.items()))
        super().__init__(f"the request holds personal data or secrets ({found}), which this gateway does not pass on")


@dataclass
class Masked:
    """A request after the policy: its body, the placeholders it introduced, and what was found (by kind)."""

    body: bytes
    mapping: dict[str, str] = field(default_factory=dict)
    found: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class PiiPolicy:
    """`mode` for everything but what `overrides` names: a model at the gateway (a hosted model may need `block`
    where the team's own GPU serves `off`), an assistant or a graph at the agent server."""

    mode: PiiMode = "off"
    scanner: PiiScanner = field(default_factory=PiiScanner)
    restore_replies: bool = True
    overrides: Mapping[str, PiiMode] = field(default_factory=dict)
    redact_output: bool = False  # what the model writes is scanned too: its own personal data becomes [EMAIL]...

    def mode_for(self, *names: str) -> PiiMode:
        """The mode of the first of `names` (most specific first: an assistant, then its graph) overridden."""
        return mode_for(self.mode, self.overrides, names)

    def masked_value(self, value: Any, *names: str, secret: bytes | None = None) -> tuple[Any, Counter[str]]:
        """A JSON value (a run's input, a resume value, a state update) with every string in it masked as `names`
        decide (placeholders named by `secret`: `PiiScanner.mask`), and what was found, by kind; raises
        `PiiBlocked` under `block`. The values are not kept: what stores the result never puts them back."""
        mode = self.mode_for(*names)
        if mode == "off":
            return value, Counter()
        texts = strings_in(value, limit=100_000)
        found = {text: self.scanner.find(text) for text in texts}  # once for each string, however often it is said
        kinds = Counter(finding.kind for text in texts for finding in found[text])
        if not kinds:
            return value, kinds
        if mode == "block":
            raise PiiBlocked(kinds)
        mapping: dict[str, str] = {}  # one for the value: a string said twice is one placeholder

        def mask(text: str) -> str:
            return self.scanner.mask(text, mapping, secret=secret, found=found.get(text))[0]

        return _mapped_strings(value, mask), kinds

    def inbound(self, body: bytes) -> Masked:
        """The request body as the model may see it; raises `PiiBlocked` under `block`."""
        if self.mode == "off" and not self.overrides:
            return Masked(body)
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return Masked(body)  # not JSON: the model server refuses it with its own error
        if not isinstance(request, dict):
            return Masked(body)
        mode = self.mode_for(str(request.get("model")))
        if mode == "off":
            return Masked(body)
        masked = Masked(body)
        texts = [(holder, key, self.scanner.find(holder[key])) for holder, key in _texts(request)]
        masked.found.update(finding.kind for _, _, found in texts for finding in found)
        if not masked.found:
            return masked
        if mode == "block":
            raise PiiBlocked(masked.found)
        for holder, key, found in texts:
            if found:
                holder[key], masked.mapping = self.scanner.mask(holder[key], masked.mapping, found=found)
        masked.body = orjson.dumps(request)
        return masked

    def rewrites(self, mapping: dict[str, str]) -> bool:
        """Whether replies are rewritten for the caller: values to put back, or output to redact."""
        return bool(mapping and self.restore_replies) or self.redact_output

    def for_caller(self, text: str, mapping: dict[str, str]) -> str:
        """What the model wrote as the caller gets it: its own personal data redacted (it only ever saw
        placeholders, so any real value in its text came from elsewhere), then the caller's values put back."""
        if self.redact_output:
            text, _ = self.scanner.redact(text)
        return restore(text, mapping) if self.restore_replies else text

    def restore_reply(self, body: bytes, mapping: dict[str, str]) -> bytes:
        """A whole (not streamed) reply, its choices' text as the caller gets it (`for_caller`)."""
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        choices = reply.get("choices") if isinstance(reply, dict) else None
        for choice in choices or []:
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = self.for_caller(message["content"], mapping)
            if isinstance(choice.get("text"), str):
                choice["text"] = self.for_caller(choice["text"], mapping)
        return orjson.dumps(reply)


class StreamRestorer:
    """A streamed reply's server-sent events as the caller gets them (`PiiPolicy.for_caller`), holding back what
    could be cut in two: a placeholder's start, and, when output is redacted, the last `_HOLDBACK` characters
    (a value the next chunk may finish) and any value that reaches into them."""

    def __init__(self, mapping: dict[str, str], policy: PiiPolicy | None = None) -> None:
        self.mapping = mapping
        self.policy = policy or PiiPolicy()
        self._buffer = b""
        self._held: dict[int, str] = {}  # choice index -> text not yet given

    def feed(self, chunk: bytes) -> bytes:
        """The events complete in what has arrived so far, restored."""
        self._buffer += chunk
        *events, self._buffer = self._buffer.split(b"\n\n")
        return b"".join(self._event(e) + b"\n\n" for e in events)

    def close(self) -> bytes:
        """What is left (an unfinished event, as it came)."""
        rest, self._buffer = self._buffer, b""
        return rest

    def _event(self, event: bytes) -> bytes:
        if not event.startswith(b"data: ") or event == b"data: [DONE]":
            return event
        try:
            data = orjson.loads(event[6:])
        except orjson.JSONDecodeError:
            return event
        for choice in data.get("choices") or []:
            delta = choice.get("delta") or {}
            key = "content" if isinstance(delta.get("content"), str) else None
            holder = delta
            if key is None and isinstance(choice.get("text"), str):
                holder, key = choice, "text"
            index = int(choice.get("index") or 0)
            if key is None:
                if choice.get("finish_reason") is not None and index in self._held:  # what was held back, last
                    delta["content"] = self.policy.for_caller(self._held.pop(index), self.mapping)
                    choice["delta"] = delta
                continue
            text = self._held.pop(index, "") + holder[key]
            if choice.get("finish_reason") is None:
                cut = self._cut(text)
                self._held[index] = text[cut:]
                text = text[:cut]
            holder[key] = self.policy.for_caller(text, self.mapping)
        return b"data: " + orjson.dumps(data)

    def _cut(self, text: str) -> int:
        """How much of `text` may go now."""
        cut = len(text)
        if partial := _PARTIAL.search(text):
            cut = partial.start()
        if self.policy.redact_output:
            cut = max(0, min(cut, len(text) - _HOLDBACK))
            for finding in self.policy.scanner.find(text):
                if finding.start < cut < finding.end:
                    cut = finding.start
        return cut


def _texts(request: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """(holder, key) of every text the model reads: message contents and their text parts, a prompt."""
    found: list[tuple[dict[str, Any], str]] = []
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            found.append((message, "content"))
        elif isinstance(content, list):
            parts = [part for part in content if isinstance(part, dict)]
            found += [(part, "text") for part in parts if isinstance(part.get("text"), str)]
    if isinstance(request.get("prompt"), str):
        found.append((request, "prompt"))
    return found


def _mapped_strings(value: Any, change: Callable[[str], str]) -> Any:
    """`value` with `change` applied to every string in it (keys stay as they are)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {key: _mapped_strings(item, change) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_mapped_strings(item, change) for item in value]
    return value
