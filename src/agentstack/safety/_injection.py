"""Prompt-injection screening: a scored heuristic over text a model will read (a user's input; later, retrieved
documents and tool results, where injection is indirect).

Each signal adds to a score in [0, 1]; text at or above `threshold` is flagged, with the reasons named:
- instruction overrides ("ignore the previous instructions", "you are now...", "reveal your system prompt") in
  English, French, German, Spanish, Italian, Portuguese, Dutch, Russian and Chinese;
- role tags that try to open a turn of their own (`<|im_start|>system`, `[INST]`, `### System:`, a line starting
  `system:`);
- hidden text (zero-width characters strung through words, HTML comments or invisible styles that carry
  instructions);
- encoded payloads (a base64 or hex run that decodes to an instruction);
- exfiltration (a link or image whose URL carries data out, "send ... to http...").

An override quoted in a question about it ("what does 'ignore previous instructions' mean?") weighs little: a
security question must pass. Text is read as for PII (NFKC, zero-width characters dropped, after counting
them).
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "InjectionBlocked",
    "InjectionMode",
    "InjectionPolicy",
    "InjectionScreen",
    "Screening",
    "mode_for",
    "strings_in",
]

InjectionMode = Literal["off", "flag", "block"]
_Mode = TypeVar("_Mode", bound=str)

_OVERRIDES = [
    r"\b(?:ignore|disregard|forget|skip|override|bypass)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|preceding|"
    r"all|your|system|original|safety)\b[^.\n]{0,30}\b(?:instructions?|rules?|prompts?|guidelines|directions|"
    r"constraints|policies|messages?)\b",
    r"\bforget (?:everything|all of) (?:above|before|you (?:were|have been) told)\b",
    r"\byou are (?:now|no longer)\b",
    r"\bfrom now on,? (?:you|act|respond|answer)\b",
    r"\b(?:act|behave|pretend|roleplay) as (?:if you (?:were|are) )?(?:an? )?(?:unrestricted|unfiltered|jailbroken|"
    r"evil|DAN|developer)\b",
    r"\b(?:enter|enable|activate|switch to|(?:you are|you're) (?:now )?in) (?:developer|god|jailbreak|DAN) mode\b",
    r"\b(?:god|jailbreak|DAN) mode\b",
    r"\bdo anything now\b",
    r"\b(?:reveal|print|show|repeat|output|leak|tell me)\b[^.\n]{0,30}\b(?:system prompt|hidden instructions|"
    r"initial instructions|your instructions|the prompt above)\b",
    r"\bnew (?:instructions|rules|task)\s*:",
    r"\b(?:ignorez?|oubliez?)\b[^.\n]{0,30}\b(?:instructions|consignes|règles)\b[^.\n]{0,20}\b(?:précédentes|"
    r"antérieures|ci-dessus)\b",
    r"\b(?:ignoriere|vergiss|missachte)\b[^.\n]{0,30}\b(?:vorherigen|bisherigen|obigen|alle)\b[^.\n]{0,20}"
    r"\b(?:anweisungen|regeln|instruktionen)\b",
    r"\b(?:ignora|olvida|omite)\b[^.\n]{0,30}\b(?:instrucciones|reglas|indicaciones)\b[^.\n]{0,20}"
    r"\b(?:anteriores|previas)\b",
    r"\b(?:ignora|dimentica)\b[^.\n]{0,30}\b(?:istruzioni|regole)\b[^.\n]{0,20}\b(?:precedenti)\b",
    r"\b(?:ignore|esqueça|desconsidere)\b[^.\n]{0,30}\b(?:instruções|regras)\b[^.\n]{0,20}\b(?:anteriores)\b",
    r"\b(?:negeer|vergeet)\b[^.\n]{0,30}\b(?:vorige|eerdere|alle)\b[^.\n]{0,20}\b(?:instructies|regels)\b",
    r"(?:игнорируй|забудь|проигнорируй)[^.\n]{0,30}(?:предыдущие|все)[^.\n]{0,20}(?:инструкции|правила)",
    r"(?:忽略|无视|忘记)[^。\n]{0,10}(?:之前|以上|先前|所有)[^。\n]{0,10}(?:指令|指示|规则|提示)",
]
_ROLE_TAGS = (
    r"<\|(?:im_start|im_end|system|assistant|user)\|>|\[/?INST\]|<<SYS>>|^#{2,}\s*(?:system|assistant)\s*:?"
    r"|^\s*(?:system|assistant)\s*:|</?system>"
)
_HIDDEN_COMMENT = r"<!--[^>]{0,400}?\b(?:instructions?|ignore|assistant|model|AI|LLM)\b[^>]{0,400}?-->"
_INVISIBLE = r"display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0\b|color\s*:\s*(?:white|#fff(?:fff)?)\b"
_ADDRESSED = re.compile(r"(?i)\b(?:assistant|AI|model|LLM|chatbot|agent)\b")
_EXFILTRATION = (
    r"!\[[^\]]*\]\(https?://[^)\s]*[?&][^)\s]*=[^)\s]*\)"  # an image whose URL carries data out
    r"|\b(?:send|post|forward|upload|exfiltrate)\b[^.\n]{0,60}\bto\s+https?://"
)
_ENCODED = r"[A-Za-z0-9+/]{40,}={0,2}|(?:[0-9a-fA-F]{2}){24,}"
_QUESTION = re.compile(r"(?i)\b(?:what|how|why|explain|is it|does|define|meaning of|examples? of)\b|\?")
_QUOTES = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"  # straight, curly and angle quotes
_QUOTED = re.compile(f"[{_QUOTES}]([^{_QUOTES}]{{4,120}})[{_QUOTES}]")

_WEIGHTS = {"override": 0.6, "role_tag": 0.5, "hidden": 0.5, "encoded": 0.6, "exfiltration": 0.5, "zero_width": 0.3}


@dataclass(frozen=True)
class Screening:
    """How much a text looks like an injection: a score in [0, 1], flagged at the screen's threshold, and why."""

    score: float
    flagged: bool
    reasons: tuple[str, ...]


class InjectionScreen:
    def __init__(self, *, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._overrides = re.compile("|".join(f"(?:{p})" for p in _OVERRIDES), re.IGNORECASE)  # one pass, not 18
        self._role_tags = re.compile(_ROLE_TAGS, re.IGNORECASE | re.MULTILINE)
        self._hidden_comment = re.compile(_HIDDEN_COMMENT, re.IGNORECASE)
        self._invisible = re.compile(_INVISIBLE, re.IGNORECASE)
        self._exfiltration = re.compile(_EXFILTRATION, re.IGNORECASE)
        self._encoded = re.compile(_ENCODED)

    def screen(self, text: str) -> Screening:
        zero_width = sum(text.count(c) for c in ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"))
        seen = unicodedata.normalize("NFKC", text)
        for char in ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"):
            seen = seen.replace(char, "")
        reasons: dict[str, float] = {}
        overrides = list(self._overrides.finditer(seen))
        if overrides:
            quoted = all(_inside_quotes(seen, m.start(), m.end()) for m in overrides)
            asked = bool(_QUESTION.search(seen))
            reasons["override"] = _WEIGHTS["override"] * (0.3 if quoted and asked else 1.0)
        tags = list(self._role_tags.finditer(seen))
        if tags:  # one tag inside a sentence (a question about it) weighs half; a tag opening a line, or several, all
            opening = any(t.start() == 0 or seen[t.start() - 1] == "\n" for t in tags)
            reasons["role_tag"] = _WEIGHTS["role_tag"] * (1.0 if opening or len(tags) > 1 else 0.5)
        if self._hidden_comment.search(seen) or (self._invisible.search(seen) and _ADDRESSED.search(seen)):
            reasons["hidden"] = _WEIGHTS["hidden"]  # text a reader does not see, speaking to the model
        if self._exfiltration.search(seen):
            reasons["exfiltration"] = _WEIGHTS["exfiltration"]
        if any(_decodes_to_instruction(m.group(), self) for m in self._encoded.finditer(seen)):
            reasons["encoded"] = _WEIGHTS["encoded"]
        if zero_width >= 3:
            reasons["zero_width"] = _WEIGHTS["zero_width"]
        score = min(1.0, sum(reasons.values()))
        return Screening(round(score, 3), score >= self.threshold, tuple(sorted(reasons)))


def _inside_quotes(text: str, start: int, end: int) -> bool:
    return any(q.start(1) <= start and end <= q.end(1) for q in _QUOTED.finditer(text))


def _decodes_to_instruction(blob: str, screen: InjectionScreen) -> bool:
    """Whether a base64 or hex run decodes to text that itself overrides instructions."""
    for decode in (lambda b: base64.b64decode(b + "=" * (-len(b) % 4), validate=True), bytes.fromhex):
        try:
            text = decode(blob).decode("utf-8")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            continue
        if screen._overrides.search(text) or screen._role_tags.search(text):
            return True
    return False


class InjectionBlocked(Exception):
    """Text refused under `block`: the reasons the screen gave."""

    def __init__(self, screening: Screening, what: str) -> None:
        self.screening = screening
        reasons = ", ".join(screening.reasons)
        super().__init__(f"{what} looks like a prompt injection ({reasons}; score {screening.score}), which is refused")


def mode_for(mode: _Mode, overrides: Mapping[str, _Mode], names: Sequence[str]) -> _Mode:
    """A policy's mode for the first of `names` it overrides (most specific first: an assistant, then its graph;
    a model at the gateway), else its own."""
    return next((overrides[n] for n in names if n in overrides), mode)


@dataclass(frozen=True)
class InjectionPolicy:
    """What a server does with text the screen flags: `off`, `flag` (marked where the request is recorded: the
    run's metadata, the audit) or `block` (refused, naming the reasons)."""

    mode: InjectionMode = "flag"
    screen: InjectionScreen = field(default_factory=InjectionScreen)
    overrides: Mapping[str, InjectionMode] = field(default_factory=dict)  # by assistant or graph (agent server)

    def check(self, texts: Iterable[str], *, what: str, names: tuple[str, ...] = ()) -> Screening | None:
        """The highest-scoring flagged screening of `texts` (None: none flagged, or `off`), under the mode of the
        first of `names` overridden (an assistant, then its graph); raises `InjectionBlocked` under `block`."""
        mode = mode_for(self.mode, self.overrides, names)
        if mode == "off":
            return None
        flagged = [s for s in (self.screen.screen(t) for t in texts) if s.flagged]
        if not flagged:
            return None
        worst = max(flagged, key=lambda s: s.score)
        if mode == "block":
            raise InjectionBlocked(worst, what)
        return worst


def strings_in(value: Any, *, limit: int = 200) -> list[str]:
    """The strings of a JSON value (a run's input, a resume value), depth first, at most `limit` of them."""
    found: list[str] = []
    stack = [value]
    while stack and len(found) < limit:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, Mapping):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            stack.extend(reversed(item))
    return found
