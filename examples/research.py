"""Ask the research agent a question over a folder of documents: live progress, then a cited answer.

    python examples/research.py "How does agentstack recover a thread after a crash?" [--docs PATH]

With nothing configured it starts the embedded stack (Postgres under ~/.agentstack, Milvus Lite, the
CPU llama.cpp fleet); `AGENTSTACK_LLM_BASE_URL` and friends point it at your own servers instead. The
folder is ingested first (unchanged files are skipped), and the run is checkpointed in Postgres, so
`agentstack threads show THREAD` prints its history afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from agentstack import Stack
from agentstack.graphs import ResearchContext, stream_run

DOCS = Path(__file__).resolve().parents[1] / "docs"  # agentstack's own documentation


async def main(question: str, docs: Path, iterations: int) -> None:
    async with Stack.from_settings(on_progress=lambda message: print(f"[stack] {message}")) as stack:
        report = await stack.retrieval.ingestor.aingest_paths([docs])
        print(f"[docs] {len(report.added)} new, {len(report.unchanged)} unchanged document(s) in {docs}")

        graph = stack.research_graph()
        config = stack.thread(f"research-{uuid.uuid4().hex[:8]}")
        context = ResearchContext(max_iterations=iterations)
        async for event in stream_run(graph, {"question": question}, config, context=context):
            if event.kind == "progress":  # what each node reports as it works
                print(f"  {event.data}")
            elif event.kind == "update":
                print(f"done {event.node}")
        state = (await graph.aget_state(config)).values

    print(f"\nanswer ({state['status']}, confidence {state['confidence']:.2f}):\n{state['answer']}")
    print("\nsources:")
    for citation in state["citations"]:
        print(f"  [{citation['id']}] {citation['source']}: {citation['quote'][:100]!r}")
    if not state["citations"]:
        print("  (the answer cites none of the evidence: treat it with care)")
    print(f"\nthread: {config['configurable']['thread_id']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="How does agentstack recover a thread after a crash?")
    parser.add_argument("--docs", type=Path, default=DOCS, help="a file or folder to search (default: docs/)")
    parser.add_argument("--iterations", type=int, default=2, help="search rounds at most")
    args = parser.parse_args()
    asyncio.run(main(args.question, args.docs, args.iterations))
