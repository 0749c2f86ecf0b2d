"""`agentstack usage`: what runs used and cost, summed by model, graph, caller or thread from the usage rows the
agent server and `agentstack run` write (`agentstack.observability._usage`), as a table, JSON or CSV."""

from __future__ import annotations

import csv
import dataclasses
import json
import sys
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentstack.cli._database import opened_store
from agentstack.config import Settings
from agentstack.observability._usage import Grouping, UsageStore

__all__ = ["show_usage"]


async def show_usage(
    settings: Settings,
    console: Console,
    *,
    by: Grouping,
    since_s: float | None,
    output: Literal["table", "json", "csv"],
) -> None:
    async with opened_store(settings, lambda pool: UsageStore(pool, settings.prices)) as store:
        rows = await store.report(by, since_s=since_s)
    if output == "json":
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    if output == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow([by, "runs", "input_tokens", "output_tokens", "cost_usd"])
        for r in rows:
            writer.writerow([r.key, r.runs, r.input_tokens, r.output_tokens, "" if r.cost_usd is None else r.cost_usd])
        return
    table = Table(title=f"usage by {by}: {len(rows)} row(s), most expensive first", title_justify="left")
    for column in (by, "runs", "input tokens", "output tokens", "cost (USD)"):
        table.add_column(column, justify="left" if column == by else "right")
    for r in rows:
        cost = "no price" if r.cost_usd is None else f"{r.cost_usd:.4f}"
        table.add_row(escape(r.key), str(r.runs), f"{r.input_tokens:,}", f"{r.output_tokens:,}", cost)
    console.print(table)
    if any(r.cost_usd is None for r in rows):
        console.print("[dim]a model without a price in AGENTSTACK_PRICES costs nothing here[/]")
