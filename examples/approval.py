"""Human-in-the-loop: an agent with your own tools, where the risky ones wait for a person.

    python examples/approval.py "Order 1002 arrived broken: refund it" [--decide ask|approve|reject]

The tools work on a small SQLite order book in a temporary folder: `find_order` runs freely; `refund`
is on the approval policy, so each call stops the graph (`interrupt`) with the call it wants to make.
The run is checkpointed in Postgres, so a decision could come from another process, hours later
(`agentstack resume THREAD` does that for the CLI's graphs). Here the script asks you (`ask`, the
default on a terminal) or decides every call the same way (`approve` / `reject`). An edit changes the
arguments; a rejection's reason is what the agent sees instead of the tool's result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Annotated, Any

from langchain_core.tools import BaseTool, StructuredTool
from langgraph.types import Command
from pydantic import BaseModel, Field

from agentstack import Stack
from agentstack.graphs import ApprovalContext, ApprovalPolicy, stream_run

ORDERS = [(1001, "desk lamp", 39.0, "delivered"), (1002, "office chair", 189.0, "delivered")]


# Every field bounded as tightly as its meaning allows: a grammar-constrained server then stops a small model
# that starts repeating itself inside a field (llama.cpp bounds an integer's digits by its range).
OrderId = Annotated[int, Field(ge=1, le=99_999, description="the order number, e.g. 1002")]


class FindOrder(BaseModel):
    order_id: OrderId


class Refund(BaseModel):
    order_id: OrderId
    # Whole units, not a float: a grammar bounds a number's range but not its decimals (Gemma 270M once wrote
    # 1,500 tokens of one amount); the tool checks it against the price too.
    amount: int = Field(ge=1, le=10_000, description="how much to refund, in whole units of the order's currency")
    reason: Annotated[str, Field(max_length=100)] = Field(description="one line for the customer")


def order_tools(db: Path) -> list[BaseTool]:
    """Tools over the order book. Bounded argument schemas keep a small model's calls short."""

    def find_order(order_id: int) -> str:
        """Look up an order: item, price and status."""
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT item, price, status FROM orders WHERE id = ?", (order_id,)).fetchone()
        return f"order {order_id}: {row[0]}, {row[1]:.2f}, {row[2]}" if row else f"there is no order {order_id}"

    def refund(order_id: int, amount: int, reason: str) -> str:
        """Refund (part of) an order's price to the customer."""
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT price, status FROM orders WHERE id = ?", (order_id,)).fetchone()
            if row is None:
                return f"there is no order {order_id}"
            if row[1] == "refunded" or not 0 < amount <= row[0]:
                return f"refused: {amount:.2f} on order {order_id}, which is {row[1]} and cost {row[0]:.2f}"
            conn.execute("UPDATE orders SET status = 'refunded' WHERE id = ?", (order_id,))
        return f"refunded {amount:.2f} on order {order_id} ({reason})"

    return [
        StructuredTool.from_function(find_order, args_schema=FindOrder),
        StructuredTool.from_function(refund, args_schema=Refund),
    ]


def decide(request: dict[str, Any], mode: str) -> dict[str, Any]:
    """A decision for one waiting call: {"action": approve | edit | reject, "value": ..., "reason": ...}."""
    if mode == "approve":
        return {"action": "approve"}
    if mode == "reject":
        return {"action": "reject", "reason": "refunds need a photo of the damage first"}
    answer = input("approve [a], reject [r REASON], or edit [e JSON arguments]? ").strip()
    if answer.startswith("e"):
        return {"action": "edit", "value": json.loads(answer[1:])}
    if answer.startswith("r"):
        return {"action": "reject", "reason": answer[1:].strip() or "rejected"}
    return {"action": "approve"}


async def main(task: str, mode: str, workdir: Path) -> None:
    db = workdir / "orders.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT, price REAL, status TEXT)")
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?)", ORDERS)

    async with Stack.from_settings(retrieval=False) as stack:
        graph = stack.approval_graph(tools=order_tools(db), policy=ApprovalPolicy.of(["refund"]))
        config = stack.thread(f"approval-{uuid.uuid4().hex[:8]}")
        context = ApprovalContext(max_steps=4)
        run_input: Any = {"messages": [{"role": "user", "content": task}]}
        while True:
            waiting = []
            async for event in stream_run(graph, run_input, config, context=context):
                if event.kind == "progress":
                    print(event.data)
                elif event.kind == "interrupt":
                    waiting.extend(event.data)
            if not waiting:
                break
            decisions = {}
            for item in waiting:  # several guarded calls from one turn wait together
                print(f"waiting: {item['value']['tool']}({json.dumps(item['value']['args'])})")
                decisions[item["id"]] = decide(item["value"], mode)
                print(f"  -> {decisions[item['id']]}")
            run_input = Command(resume=decisions)
        state = (await graph.aget_state(config)).values

    print("\naudit trail:")
    for d in state.get("decisions", []):
        print(f"  {d['tool']}({json.dumps(d['args'])}): {d['action']}" + (f" ({d['reason']})" if d["reason"] else ""))
    print(f"agent: {state['messages'][-1].content or '(no final answer within the step budget)'}")
    with sqlite3.connect(db) as conn:
        print("orders:", conn.execute("SELECT id, status FROM orders ORDER BY id").fetchall())
    print(f"thread: {config['configurable']['thread_id']}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", nargs="?", default="Order 1002 arrived broken: look it up and refund it")
    parser.add_argument("--decide", choices=["ask", "approve", "reject"], default=None)
    args = parser.parse_args()
    mode = args.decide or ("ask" if sys.stdin.isatty() else "approve")
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.task, mode, Path(tmp)))
