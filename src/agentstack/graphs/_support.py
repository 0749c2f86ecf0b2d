"""Is a sentence supported by the passages it rests on? One scorer for the graphs and for evaluation.

The research graph checks every sentence of its answer against the evidence it cites and drops what nothing
supports; `agentstack.eval`'s faithfulness and context recall count supported sentences with the same scorer,
so a graph and its evaluation cannot disagree about what "supported" means. The graphs own it (eval imports
it, never the other way round).

- `EmbeddingSupport`: the best cosine between the sentence and any sentence of the passages. Free, and exact
  for what was copied from a passage (1.0), but it scores topic, not entailment: a sentence that says the
  opposite of its passage can still score high. The default when no judge model is configured.
- `JudgeSupport`: a judge model's verdict through structured output (a bounded schema, so a 270M model parses).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, Field

from agentstack._structured import StructuredCall
from agentstack.prompts import PromptLibrary

__all__ = [
    "CascadeSupport",
    "EmbeddingSupport",
    "JudgeSupport",
    "Support",
    "SupportScorer",
    "SupportVerdict",
    "cited_sentences",
    "cosine",
    "focus",
    "sentences",
]

_CITATION = re.compile(r"\s*\[([Ss]\d+)\]")
# A sentence ends at . ! ? before a capital, a digit or a backtick (`docs/` and `bench/` start sentences in
# code-heavy prose), and always after a citation's full stop ("[S1]. agentstack's..." ends one).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[*_]?[A-Z0-9`])|(?<=\][.!?])\s+")
_BULLET = re.compile(r"^\s*(?:[-*+>]|\d+[.)])\s+")
# A bold lead-in that labels a paragraph ("**Context travels.** A background run..."): a heading, not part of the
# first sentence's claim (and no sentence end to the splitter: ".**" is not followed by a space).
_LEAD_IN = re.compile(r"^(\*\*|__)[^*_\n]{1,80}(\*\*|__)\s+")
_MIN_SENTENCE = 12  # characters: shorter pieces ("Yes.", "1.") carry no claim
_FOCUS_CHARS = 2500
_WORDS = re.compile(r"\w{3,}")


def cited_sentences(text: str) -> list[tuple[str, list[str]]]:
    """The sentences of `text`, each with the ids it cites ("[S2]" markers, removed from the text).

    Markdown is read as a writer wraps it: the lines of a paragraph or of a list item are one text (a sentence
    may cross a line break), headings, table rows and code fences are not prose and are skipped. A paragraph
    splits after . ! ? before a capital or a digit; a marker right after a sentence's full stop belongs to that
    sentence. A bold label that leads a paragraph is left out, as headings are. Pieces too short to claim
    anything are dropped.
    """
    found: list[tuple[str, list[str]]] = []
    for block in _blocks(text):
        block = re.sub(r"([.!?])((?:\s*\[[Ss]\d+\])+)", r"\2\1", block)
        for piece in _SENTENCE_END.split(_LEAD_IN.sub("", block)):
            cited = [i.upper() for i in _CITATION.findall(piece)]
            piece = _CITATION.sub("", piece).strip()
            if len(piece) >= _MIN_SENTENCE and any(c.isalpha() for c in piece):
                found.append((piece, list(dict.fromkeys(cited))))
    return found


def _blocks(text: str) -> list[str]:
    """Paragraphs and list items, each joined into one line; headings, tables and code left out."""
    blocks: list[list[str]] = []
    current: list[str] = []
    fenced = _starts_in_code(text)

    def close() -> None:
        nonlocal current
        if current:
            blocks.append(current)
        current = []

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("```"):
            fenced = not fenced
            close()
            continue
        if fenced or not line or line.startswith(("#", "|")):
            close()
            continue
        if _BULLET.match(line):
            close()
            line = _BULLET.sub("", line)
        current.append(line)
    close()
    return [" ".join(lines) for lines in blocks]


def _starts_in_code(text: str) -> bool:
    """Whether `text` (a chunk, cut anywhere) begins inside a code fence: its first fence is a bare one that
    is not followed by another bare one (which would close it), i.e. the first fence closes a block."""
    fences = [line.strip() for line in text.splitlines() if line.strip().startswith("```")]
    return bool(fences) and fences[0] == "```" and (len(fences) == 1 or fences[1] != "```")


def sentences(text: str) -> list[str]:
    """The sentences of `text` without citation markers (see `cited_sentences`)."""
    return [sentence for sentence, _cited in cited_sentences(text)]


def focus(sentence: str, passages: Sequence[str], budget: int = _FOCUS_CHARS) -> list[str]:
    """What a judge model is shown of long passages: their sentences sharing the most words with `sentence`,
    up to `budget` characters, in their original order. A claim from the end of a 3,000-character passage is
    then still in front of the judge, and a CPU judge reads a few hundred tokens instead of thousands."""
    if sum(len(p) for p in passages) <= budget:
        return list(passages)
    words = set(_WORDS.findall(sentence.lower()))
    found = [s for p in passages for s in sentences(p)]
    ranked = sorted(range(len(found)), key=lambda n: -len(words & set(_WORDS.findall(found[n].lower()))))
    chosen: list[int] = []
    used = 0
    for n in ranked:
        if used + len(found[n]) > budget and chosen:
            continue
        chosen.append(n)
        used += len(found[n])
    return [found[n] for n in sorted(chosen)]


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


@dataclass(frozen=True)
class Support:
    """How well a sentence is supported (0..1), whether that counts as supported, and why."""

    score: float
    supported: bool
    reason: str


class SupportScorer(Protocol):
    """Scores a sentence against passages; `name` identifies it (and its settings) in cached judgements."""

    @property
    def name(self) -> str: ...

    async def support(self, sentence: str, passages: Sequence[str]) -> Support: ...


class Embedder(Protocol):
    async def aembed_documents(self, texts: Sequence[str]) -> list[list[float]]: ...
    async def aembed_query(self, text: str) -> list[float]: ...


class EmbeddingSupport:
    """Supported when some sentence of the passages has a cosine of at least `threshold` with it.

    0.75 on all-MiniLM-L6-v2: a paraphrase of a passage's sentence scores about 0.8-0.95, a sentence on the same
    topic that says something else 0.4-0.7, copied text 1.0.
    """

    def __init__(self, embedder: Embedder, *, threshold: float = 0.75) -> None:
        self.embedder = embedder
        self.threshold = threshold

    @property
    def name(self) -> str:
        return f"embedding:{getattr(self.embedder, 'name', type(self.embedder).__name__)}>={self.threshold}"

    async def support(self, sentence: str, passages: Sequence[str]) -> Support:
        candidates = [s for p in passages for s in sentences(p)]
        if not candidates:
            return Support(0.0, False, "no passage to support it")
        vectors = await self.embedder.aembed_documents([sentence, *candidates])
        best, where = max((cosine(vectors[0], v), n) for n, v in enumerate(vectors[1:]))
        score = max(0.0, min(1.0, best))
        return Support(score, score >= self.threshold, f"closest passage sentence ({score:.2f}): {candidates[where]}")


class SupportVerdict(BaseModel):
    """A judge's verdict on one sentence."""

    reason: str = Field(max_length=300, description="one short sentence: what in the passages does or does not say it")
    verdict: Literal["supported", "not_supported"]


class JudgeSupport:
    """Supported when a judge model says the passages state it (prompts/grounding/support)."""

    def __init__(self, model: BaseChatModel, *, prompts: PromptLibrary | None = None) -> None:
        self._call = StructuredCall(model, SupportVerdict)
        self._prompt = (prompts or PromptLibrary()).get("grounding", "support")
        self.tokens_used = 0

    @property
    def name(self) -> str:
        return f"judge:{self._call.model_name}:{self._prompt.ref}"

    async def support(self, sentence: str, passages: Sequence[str]) -> Support:
        """Raises `ModelOutputError` when the judge's replies never parse (the caller records it)."""
        reply, tokens = await self._call(self._prompt, sentence=sentence, passages=focus(sentence, passages))
        self.tokens_used += tokens
        supported = reply.verdict == "supported"
        return Support(float(supported), supported, reply.reason)


class CascadeSupport:
    """The embedder first, a judge only where it is unsure: a sentence whose best cosine with the passages is
    at least `accept` (copied or nearly so) is supported, one at most `reject` (about something else) is not,
    and the judge decides the rest.

    Checking a copied sentence with a model only adds that model's errors: on the docs dataset the CPU Gemma
    judged 68% of the (verbatim) sentences of extractive answers unsupported. A large judge gains little from the
    cascade but calls; a small one gains its accuracy on the easy cases.
    """

    def __init__(
        self, embedding: EmbeddingSupport, judge: SupportScorer, *, accept: float = 0.9, reject: float = 0.3
    ) -> None:
        self.embedding = embedding
        self.judge = judge
        self.accept = accept
        self.reject = reject

    @property
    def name(self) -> str:
        return f"cascade({self.embedding.name},{self.judge.name},{self.accept},{self.reject})"

    @property
    def tokens_used(self) -> int:
        return int(getattr(self.judge, "tokens_used", 0))

    async def support(self, sentence: str, passages: Sequence[str]) -> Support:
        first = await self.embedding.support(sentence, passages)
        if first.score >= self.accept:
            return Support(first.score, True, f"nearly copied: {first.reason}")
        if first.score <= self.reject:
            return Support(first.score, False, f"about something else: {first.reason}")
        return await self.judge.support(sentence, passages)
