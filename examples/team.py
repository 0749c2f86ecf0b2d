"""A team of agents on one task: a coordinator routes work to a researcher, a coder and a reviewer.

    python examples/team.py "Use Python to add up the squares of 1 to 10" [--max-steps N]

The coordinator decides each step (structured output); the researcher is the research graph running as
a subgraph over the ingested docs; the coder's program runs in the sandbox (no network, time and memory
limits); the reviewer accepts or sends work back. When the step budget is spent, the synthesizer writes
the result from what the team has. Progress from the researcher subgraph is shown indented.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from agentstack import Stack
from agentstack.graphs import TeamContext, stream_run

DOCS = Path(__file__).resolve().parents[1] / "docs"


async def main(task: str, docs: Path, max_steps: int) -> None:
    async with Stack.from_settings(on_progress=lambda message: print(f"[stack] {message}")) as stack:
        await stack.retrieval.ingestor.aingest_paths([docs])
        graph = stack.team_graph()
        config = stack.thread(f"team-{uuid.uuid4().hex[:8]}")
        # research knobs (max_iterations...) are inherited by TeamContext and reach the researcher subgraph
        context = TeamContext(max_steps=max_steps, max_iterations=1)
        async for event in stream_run(graph, {"task": task}, config, context=context):
            indent = "    " * len(event.namespace)  # events from inside the researcher subgraph are nested
            if event.kind == "progress":
                print(f"{indent}{event.data}")
            elif event.kind == "update" and not event.namespace and event.node != "coordinator":
                for item in (event.data or {}).get("work", []):
                    print(f"{item['role']} ({'ok' if item['ok'] else 'not ok'}): {item['summary'][:300]}")
        state = (await graph.aget_state(config)).values

    print(f"\nresult ({state['status']}, {state['steps']} step(s), {state.get('tokens_used', 0)} tokens):")
    print(state["output"])
    print(f"\nthread: {config['configurable']['thread_id']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default="Use Python to add up the squares of 1 to 10")
    parser.add_argument("--docs", type=Path, default=DOCS, help="what the researcher searches (default: docs/)")
    parser.add_argument("--max-steps", type=int, default=4, help="coordinator decisions at most")
    args = parser.parse_args()
    asyncio.run(main(args.task, args.docs, args.max_steps))
