"""Where a research run's time goes on the CPU default, extractive answers against written ones, side by side.

One stack (embedded Postgres, Milvus Lite with agentstack's docs, the CPU Gemma fleet) in a throwaway home; then
the same questions (the docs dataset's first N) answered with `answer_style` extractive and written in turn, so
drift hits both alike. Each run's time is split by graph step (plan, search, analyze, refine, answer: the time
from the previous step's end to this one's). Prints the stage table, then one JSON line:
`written_over_extractive` (p50 latency ratio, > 1 means extractive is faster), both p50s, and how long the
stack took to open and to ingest.

    python bench/research_latency.py [--quick | --smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

from _home import throwaway_settings

from agentstack import Stack
from agentstack.config import Settings
from agentstack.eval import Dataset
from agentstack.graphs import ResearchContext

ROOT = Path(__file__).resolve().parents[1]
STYLES = ("extractive", "written")


async def timed_run(graph: Any, question: str, style: str, iterations: int) -> tuple[float, dict[str, float]]:
    """(seconds, seconds per step) of one run: a step's time runs from the previous update to its own."""
    context = ResearchContext(answer_style=style, max_iterations=iterations)  # type: ignore[arg-type]
    config = {"configurable": {"thread_id": f"bench-{uuid.uuid4().hex[:8]}"}}
    steps: dict[str, float] = defaultdict(float)
    started = last = time.perf_counter()
    async for update in graph.astream({"question": question}, config, context=context, stream_mode="updates"):
        now = time.perf_counter()
        for node in update:
            steps[node] += now - last
        last = now
    return time.perf_counter() - started, dict(steps)


async def main(questions: int, iterations: int, *, smoke: bool) -> dict[str, Any]:
    dataset = Dataset.load(ROOT / "docs" / "eval" / "agentstack-docs.jsonl").select(limit=questions)
    async with throwaway_settings() as settings:
        corpus = ROOT / "docs"
        if smoke:  # only the passages that answer its question: seconds of embedding, short prompts
            corpus = settings.home / "smoke.md"
            corpus.write_text("\n\n".join(text for example in dataset for text in example.reference_contexts))
        # the smoke run answers extractively only: a written answer from the CPU Gemma is 30-60 s of the
        # suite's time, and no CPU configuration writes answers (the written path's logic has its own tests)
        return await _measure(settings, dataset, iterations, corpus, STYLES[:1] if smoke else STYLES)


async def _measure(
    settings: Settings, dataset: Dataset, iterations: int, corpus: Path, styles: tuple[str, ...]
) -> dict[str, Any]:
    opened = time.perf_counter()
    async with Stack.from_settings(settings) as stack:
        open_s = time.perf_counter() - opened
        ingested = time.perf_counter()
        await stack.retrieval.ingestor.aingest_paths([corpus])
        ingest_s = time.perf_counter() - ingested
        graph = stack.research_graph()
        totals: dict[str, list[float]] = {style: [] for style in styles}
        steps: dict[str, dict[str, list[float]]] = {style: defaultdict(list) for style in styles}
        for n, example in enumerate(dataset):
            order = styles if n % 2 == 0 else styles[::-1]
            for style in order:
                seconds, by_step = await timed_run(graph, example.text, style, iterations)
                totals[style].append(seconds)
                for step, spent in by_step.items():
                    steps[style][step].append(spent)
    print(f"{'step':10} " + " ".join(f"{s:>12}" for s in styles) + "   (mean seconds per run)")
    for step in sorted({s for style in styles for s in steps[style]}):
        means = [sum(steps[style][step]) / len(totals[style]) for style in styles]
        print(f"{step:10} " + " ".join(f"{m:12.2f}" for m in means))
    p50 = {style: round(statistics.median(totals[style]), 2) for style in styles}
    print(f"{'total p50':10} " + " ".join(f"{p50[s]:12.2f}" for s in styles))
    written = p50.get("written")
    return {
        "written_over_extractive": round(written / p50["extractive"], 3) if written is not None else None,
        "extractive_p50_s": p50["extractive"],
        "written_p50_s": written,
        "stack_open_s": round(open_s, 2),
        "ingest_s": round(ingest_s, 2),
        "questions": len(dataset),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="6 questions")
    size.add_argument(
        "--smoke", action="store_true", help="1 question, one search round, extractive only (the test suite's run)"
    )
    args = parser.parse_args()
    questions, iterations = (1, 1) if args.smoke else (6, 3) if args.quick else (16, 3)
    print(json.dumps(asyncio.run(main(questions, iterations, smoke=args.smoke))))
