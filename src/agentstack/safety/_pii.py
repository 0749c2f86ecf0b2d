"""Personal data and secrets in text: found, masked with stable placeholders, and restored.

Kinds: e-mail addresses, phone numbers (international with `+`, and North American), US social security numbers,
payment card numbers (Luhn-checked), IBANs (mod-97 checked), IPv4 and IPv6 addresses, API keys and tokens
(agentstack's, OpenAI's, AWS access key ids, GitHub's, `api_key=...` assignments) and JWTs, plus any named regex
a deployment adds. Checksums and shapes keep the hard negatives out: order numbers, dates, version strings and
timestamps are digits too.

Text is read as a person would see it: NFKC-normalised (full-width digits are digits) with zero-width characters
dropped, so a card number in full-width digits or an e-mail split by a zero-width joiner is still found; every
finding maps back to its span in the original text, which is what masking replaces.

`mask(text)` replaces each finding with a placeholder naming its kind and number (`<EMAIL_1>`, the same value the
same placeholder), so a model can still refer to it; `restore(reply, mapping)` puts the values back in what the
model wrote, for the caller only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["EntityFinder", "Finding", "PiiScanner", "restore"]

_ZERO_WIDTH = {"\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"}

_PATTERNS: dict[str, str] = {
    "jwt": r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    "api_key": (
        r"\bask_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"  # agentstack's own
        r"|\bsk-(?:proj-)?[A-Za-z0-9_-]{20,}"  # OpenAI's
        r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
        r"|\bgh[pousr]_[A-Za-z0-9]{36,}"  # GitHub's
        r"|(?i:\b(?:api[_-]?key|secret|token|password)\b\s*[:=]\s*)[\"']?[A-Za-z0-9_\-./+=]{12,}"
    ),
    "email": r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b",
    "iban": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
    "credit_card": r"(?<![\d-])\d{4}(?:[ -]?\d{4}){2}[ -]?\d{1,7}(?![\d-])",
    "us_ssn": r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])",
    "phone": (
        r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}(?![\d-])"  # +44 20 7946 0958, +1 (415) 555-0132
        r"|(?<![\w.-])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}(?![\w-]|\.\d)"  # (415) 555-0132, 415.555.0132
    ),
    "ip_address": (
        r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\w-]|\.\d)"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{1,4}(?![\w:])"
    ),
}
_VERSION_BEFORE = re.compile(r"(?i)(?:\bv|version\s*|release\s*)$")


@dataclass(frozen=True)
class Finding:
    """One piece of personal data or secret: its kind, and where it is in the text it was found in."""

    kind: str
    start: int
    end: int
    value: str


class EntityFinder(Protocol):
    """A detector with a model behind it (`_presidio.PresidioDetector`): (kind, start, end) of what it finds."""

    def find(self, text: str) -> list[tuple[str, int, int]]: ...


class PiiScanner:
    """The detectors, with a deployment's own named patterns (`custom`: name -> regex) after the built-in ones,
    and `finders` (names and places, by a model) after both."""

    def __init__(
        self,
        custom: Mapping[str, str] | None = None,
        *,
        kinds: frozenset[str] | None = None,
        finders: Sequence[EntityFinder] = (),
    ) -> None:
        patterns = {k: v for k, v in _PATTERNS.items() if kinds is None or k in kinds}
        patterns |= {name: regex for name, regex in (custom or {}).items()}
        self._patterns = [(kind, re.compile(regex)) for kind, regex in patterns.items()]
        self._finders = list(finders)

    def find(self, text: str) -> list[Finding]:
        """Every finding, in order, none overlapping (the first kind listed wins a tie: a JWT is not an API key
        twice over)."""
        seen, where = _readable(text)
        candidates = [
            (kind, *match.span())
            for kind, pattern in self._patterns
            for match in pattern.finditer(seen)
            if _valid(kind, match.group(), seen, match.start())
        ]
        candidates += [found for finder in self._finders for found in finder.find(seen)]  # after ours: measured
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []
        for kind, start, end in candidates:
            if end <= start or any(start < b and a < end for a, b in taken):
                continue
            taken.append((start, end))
            first, last = where[start], where[end - 1] + 1
            found.append(Finding(kind, first, last, text[first:last]))
        return sorted(found, key=lambda f: f.start)

    def mask(
        self,
        text: str,
        mapping: dict[str, str] | None = None,
        *,
        secret: bytes | None = None,
        found: list[Finding] | None = None,
    ) -> tuple[str, dict[str, str]]:
        """`text` with each finding replaced by its placeholder, and placeholder -> value (extended in place when
        given: a conversation's turns share placeholders). With a `secret`, a placeholder is named by a keyed hash
        of its value (`<EMAIL_3f9a1c0b>`) instead of a number: the same value gets the same one in every request,
        so a thread that keeps only placeholders still tells two people apart, and a guess cannot be checked
        without the secret. `found`: what `find(text)` said, when the caller already asked."""
        mapping = {} if mapping is None else mapping
        found = self.find(text) if found is None else found
        by_value = {(p[1:-1].rpartition("_")[0], v): p for p, v in mapping.items()}
        counts: dict[str, int] = {}  # numbered placeholders: the highest number given so far, by kind
        if secret is None:
            for placeholder in mapping:
                label, number = _label(placeholder)
                counts[label] = max(counts.get(label, 0), number)
        pieces, last = [], 0
        for finding in found:
            label = finding.kind.upper()
            placeholder = by_value.get((label, finding.value))
            if placeholder is None:
                if secret is not None:
                    tag = hmac.new(secret, f"{label}:{finding.value}".encode(), hashlib.sha256).hexdigest()[:8]
                    placeholder = f"<{label}_{tag}>"
                else:
                    counts[label] = counts.get(label, 0) + 1
                    placeholder = f"<{label}_{counts[label]}>"
                mapping[placeholder] = finding.value
                by_value[(label, finding.value)] = placeholder
            pieces += [text[last : finding.start], placeholder]
            last = finding.end
        pieces.append(text[last:])
        return "".join(pieces), mapping

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """`text` with each finding replaced by its kind in brackets (`[EMAIL]`: not a placeholder, nothing puts
        it back), and how many of each kind."""
        found = self.find(text)
        counts: dict[str, int] = {}
        for finding in reversed(found):
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
            text = f"{text[: finding.start]}[{finding.kind.upper()}]{text[finding.end :]}"
        return text, counts


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """The values back in place of the placeholders the text holds."""
    if not mapping:
        return text
    pattern = re.compile("|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda m: mapping[m.group()], text)


def _label(placeholder: str) -> tuple[str, int]:
    """`<CREDIT_CARD_2>` -> ("CREDIT_CARD", 2)."""
    label, _, number = placeholder[1:-1].rpartition("_")
    return label, int(number)


def _readable(text: str) -> tuple[str, Sequence[int]]:
    """The text as read (NFKC, no zero-width characters), and for each of its characters the index of the
    original character it came from."""
    if text.isascii():  # most text: read as written, each character where it is (no copy, no list)
        return text, range(len(text))
    chars: list[str] = []
    where: list[int] = []
    for index, char in enumerate(text):
        if char in _ZERO_WIDTH:
            continue
        for normal in unicodedata.normalize("NFKC", char):
            chars.append(normal)
            where.append(index)
    return "".join(chars), where


def _valid(kind: str, value: str, seen: str, start: int) -> bool:
    if kind == "credit_card":
        digits = [int(c) for c in value if c.isdigit()]
        return 13 <= len(digits) <= 19 and _luhn(digits)
    if kind == "iban":
        return _iban_ok(value.replace(" ", ""))
    if kind == "phone":
        return 8 <= sum(c.isdigit() for c in value) <= 15
    if kind == "ip_address":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False  # 12:30:45 is a time, not an IPv6 address
        return ":" in value or not _VERSION_BEFORE.search(seen[max(0, start - 10) : start])
    return True


def _luhn(digits: list[int]) -> bool:
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit *= 2
            digit -= 9 if digit > 9 else 0
        total += digit
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    if not 15 <= len(iban) <= 34:
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1
