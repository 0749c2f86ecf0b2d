"""What keeps a research answer tied to its evidence, whatever the model's size.

- `on_topic`: a sub-query is searched only if it shares a content word with the question, or (with an
  embedder) means nearly the same; a tiny planner's letter soup ("a t t e c h n c") is dropped and reported.
- `candidate_sentences`: the evidence split into sentences and ranked by the embedder against the question:
  what a small model chooses among (an enum of ids under the grammar), so its answer is made of evidence.
- `ground`: every sentence of a written answer checked against the passages it cites by a `SupportScorer`;
  what nothing supports is removed, and the share that stood is measured support for the confidence.
- `verify_citations`: citation marks of passages no search returned are removed and reported, and each kept
  citation quotes the passage where the answer took from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from agentstack.graphs._research_state import Citation, Evidence
from agentstack.graphs._support import Embedder, SupportScorer, cited_sentences, cosine, sentences
from agentstack.rag._bm25_text import STOP_WORDS

__all__ = [
    "Candidate",
    "Grounded",
    "candidate_sentences",
    "content_terms",
    "ground",
    "on_topic",
    "verify_citations",
    "with_citations",
]

_WORD = re.compile(r"[a-z][a-z0-9_]+")
_CITE = re.compile(r"\[([Ss]\d+)\]")
_PREFIX = 4  # "crash" ~ "crashed" ~ "crashes", "recover" ~ "recovery": a shared prefix this long is one term
# A sub-query that shares no word with the question still asks the same thing at this cosine (all-MiniLM-L6-v2:
# paraphrases 0.7-0.9, the same topic 0.4-0.6, letter soup under 0.2).
_SAME_MEANING = 0.55
# Evidence sentences worth offering: a claim in prose, not a table row, a code line or a heading fragment. These
# docs write long sentences (one in twelve is over 400 characters): at 400 the one that answers "What happens if
# I start a new run on a thread that already has a run in progress?" (`multitask_strategy`, 476) could never be
# quoted. At 600, on the docs dataset's 50 questions: cites a gold passage 0.820 -> 0.860, token F1 0.333 -> 0.344.
_MIN_WORDS, _MAX_CHARS = 5, 600
_RRF_K = 10  # few candidates (tens, not the retriever's hundreds): a small k keeps the top ranks apart
# Words that say nothing of a topic beyond Lucene's stop set (which BM25 uses): how a question is asked, and
# common function words. "how" in "How does agentstack recover a thread?" made the one evidence sentence with
# "that is how many threads" the best-ranked candidate, over the one that answers.
# fmt: off
_NOT_TOPICAL = frozenset((
    "how", "what", "why", "which", "when", "where", "who", "whom", "whose", "does", "did", "can", "could", "should",
    "would", "shall", "may", "might", "must", "from", "about", "after", "before", "than", "those", "here", "its",
    "our", "your", "them", "has", "have", "had", "were", "been", "being", "also", "only", "just", "very", "more",
    "most", "some", "any", "each", "every", "all"
))
# fmt: on
# Words joined by dots or underscores: a name in code ("open_saver", "agentstack.toml"), which a planner can only
# have read in the question or made up ("agentstack_qerie", "how_does_open_saver_choose_database").
_IDENTIFIER = re.compile(r"\w+(?:[._]\w+)+")
# A sentence opening on one of these points back at the sentence before it.
_ANAPHOR = re.compile(r"(?:It|Its|This|That|These|Those|They|Their|Then|Such)\b")
_SYMBOLS = 0.12  # a share of characters that are neither letters, digits, spaces nor . , ; : ' " ` - above this is code


def with_citations(sentence: str, ids: Sequence[str]) -> str:
    """`sentence` with "[S1]" markers before its final full stop (or at its end)."""
    sentence = sentence.rstrip()
    marks = "".join(f" [{i}]" for i in ids)
    if sentence[-1:] in ".!?":
        return f"{sentence[:-1]}{marks}{sentence[-1]}"
    return f"{sentence}{marks}."


def content_terms(text: str) -> set[str]:
    """Lower-case words of three letters or more that say something of a topic (not stop or question words)."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in STOP_WORDS and w not in _NOT_TOPICAL}


def _shares_term(a: set[str], b: set[str]) -> bool:
    return any(x[:_PREFIX] == y[:_PREFIX] and (x.startswith(y) or y.startswith(x)) for x in a for y in b)


async def on_topic(queries: Sequence[str], question: str, embedder: Embedder | None) -> tuple[list[str], list[str]]:
    """(the queries worth searching, the ones dropped): more than half of a query's content words are the
    question's, or an embedder finds it means nearly the same. Half, not one: a tiny planner's
    "postgres://postgres:1044/qeries" or "SELECT * FROM sys_utils.postgres_connection" shares a word too.
    A query that names an identifier the question does not is dropped whatever it shares: the CPU Gemma's
    "ScriptedChatModel.hscenery.createtext.resumenable" passed the embedder's check on its first word."""
    asked = content_terms(question)
    named = {name.lower() for name in _IDENTIFIER.findall(question)}
    kept: list[str] = []
    doubtful: list[str] = []
    for query in queries:
        if any(name.lower() not in named for name in _IDENTIFIER.findall(query)):
            continue
        terms = content_terms(query)
        shared = sum(1 for term in terms if _shares_term({term}, asked))
        (kept if shared * 2 > len(terms) else doubtful).append(query)
    if doubtful and embedder is not None:
        vectors = await embedder.aembed_documents([question, *doubtful])
        kept += [q for q, v in zip(doubtful, vectors[1:], strict=True) if cosine(vectors[0], v) >= _SAME_MEANING]
    return [q for q in queries if q in kept], [q for q in queries if q not in kept]


@dataclass(frozen=True)
class Candidate:
    """An evidence sentence offered to the model: its id (C1...), the evidence it is from, and its rank score."""

    id: str
    text: str
    evidence_id: str
    score: float


def _prose(sentence: str) -> bool:
    """A whole sentence of prose: enough words, a full stop at its end (a chunk boundary cuts the last one of a
    passage), not starting with a lower-case stop word, and not code."""
    if len(sentence.split()) < _MIN_WORDS or len(sentence) > _MAX_CHARS or sentence[-1] not in ".!?":
        return False
    if sentence.split()[0] in STOP_WORDS:  # "and a spec says...": the rest of a sentence cut before it
        return False
    symbols = sum(1 for c in sentence if not (c.isalnum() or c.isspace() or c in ".,;:'\"`-"))
    return symbols <= _SYMBOLS * len(sentence)


async def candidate_sentences(
    question: str, evidence: Sequence[Evidence], embedder: Embedder, limit: int
) -> list[Candidate]:
    """The `limit` evidence sentences that best match the question, best first, each once.

    Two rankings fused by reciprocal rank (as the retriever fuses its legs): the embedder's cosine, and the
    question's words weighted by how few of the sentences share them (idf over these sentences: "agentstack"
    is in every one, "canary" names the one that matters). On the docs dataset the cosine alone put a gold
    sentence in the top 3 for 21 of 30 questions; fused, 25.
    """
    pool: dict[str, str] = {}  # sentence -> the first evidence id holding it
    for item in evidence:
        previous = ""
        for sentence in sentences(item["text"]):
            candidate = _with_referent(sentence, previous)
            if candidate is not None and _prose(sentence):
                pool.setdefault(candidate, item["id"])
            previous = sentence
    if not pool:
        return []
    texts = list(pool)
    vectors = await embedder.aembed_documents([question, *texts])
    cosines = [cosine(vectors[0], v) for v in vectors[1:]]
    lexical = _idf_overlap(question, texts)
    fused = [0.0] * len(texts)
    for scores in (cosines, lexical):
        for rank, n in enumerate(sorted(range(len(texts)), key=lambda n: -scores[n]), 1):
            fused[n] += 1 / (_RRF_K + rank)
    best = sorted(range(len(texts)), key=lambda n: -fused[n])[:limit]
    return [Candidate(f"C{rank}", texts[n], pool[texts[n]], cosines[n]) for rank, n in enumerate(best, 1)]


def _with_referent(sentence: str, previous: str) -> str | None:
    """`sentence`, after the one before it when it opens on a word pointing back ("It is an async context
    manager; start is all-or-nothing...": taken alone into an answer, it loses its subject, a `Fleet`); None when
    that one points back too (its referent is further still) or is not prose."""
    if not _ANAPHOR.match(sentence):
        return sentence
    if previous and _prose(previous) and not _ANAPHOR.match(previous):
        return f"{previous} {sentence}"
    return None


def _idf_overlap(question: str, texts: Sequence[str]) -> list[float]:
    """Per text, the summed idf (over `texts`) of the question's content words it contains."""
    asked = content_terms(question)
    terms = [content_terms(t) for t in texts]
    weights = {}
    for word in asked:
        having = sum(1 for found in terms if _shares_term({word}, found))
        weights[word] = math.log((len(texts) + 1) / (having + 0.5))
    return [sum(w for word, w in weights.items() if _shares_term({word}, found)) for found in terms]


@dataclass(frozen=True)
class Grounded:
    """A written answer after the check: the sentences that stood, those removed, the share supported."""

    text: str
    removed: list[str]
    supported_share: float


async def ground(answer: str, evidence: Sequence[Evidence], support: SupportScorer) -> Grounded:
    """Keep the sentences that the passages they cite (or, citing none, all the evidence) support."""
    by_id = {e["id"]: e for e in evidence}
    kept: list[str] = []
    removed: list[str] = []
    claims = cited_sentences(answer)
    for sentence, cited in claims:
        passages = [by_id[i]["text"] for i in cited if i in by_id] or [e["text"] for e in evidence]
        if passages and (await support.support(sentence, passages)).supported:
            kept.append(with_citations(sentence, [i for i in cited if i in by_id]))
        else:
            removed.append(sentence)
    share = len(kept) / len(claims) if claims else 0.0
    return Grounded(" ".join(kept), removed, share)


def verify_citations(
    text: str, listed: Sequence[str], evidence: Sequence[Evidence]
) -> tuple[str, list[Citation], list[str]]:
    """(text without invented markers, the citations that exist, the ids that were removed)."""
    by_id = {e["id"]: e for e in evidence}
    text = _CITE.sub(lambda m: f"[{m.group(1).upper()}]", text)  # small models write [s1] for [S1]
    listed = [i.strip().upper() for i in listed]
    marked = _CITE.findall(text)
    removed = list(dict.fromkeys(i for i in [*marked, *listed] if i not in by_id))
    for bad in removed:
        text = text.replace(f"[{bad}]", "")
    text = re.sub(r"[ \t]+([.,;:])", r"\1", re.sub(r"[ \t]{2,}", " ", text)).strip()
    kept = [i for i in dict.fromkeys([*marked, *listed]) if i in by_id]
    citations: list[Citation] = [
        {
            "id": i,
            "source": by_id[i]["source"],
            "chunk_id": by_id[i]["chunk_id"],
            "kind": by_id[i]["kind"],
            "quote": _quote(by_id[i]["text"], text, i),
        }
        for i in kept
    ]
    return text, citations, removed


def _quote(passage: str, answer: str, evidence_id: str) -> str:
    """240 characters of the passage: from the first answer sentence citing it when that sentence is the
    passage's own (an extractive answer's always is), so a reader sees what the answer took; else its start.
    The start alone showed "When agentstack runs as root..." beside "The embedded Postgres recovers from a
    kill -9" [S1], a sentence further into the same passage."""
    flat = " ".join(passage.split())
    for claim, cited in cited_sentences(answer):
        start = flat.find(" ".join(claim.split())[:-1]) if evidence_id in cited else -1
        if start >= 0:
            return flat[start : start + 240]
    return passage[:240]
