"""Every structured-output schema agentstack asks a model for is bounded, field by field.

A grammar-constrained server (llama.cpp, vLLM, SGLang) then stops a small model that starts repeating
itself inside a field, instead of letting it run into the reply's token limit: strings carry a maxLength
(or are one of a fixed set), lists a maxItems, integers a range (llama.cpp bounds their digits by it), and
numbers are one of a fixed set (a range does not bound a number's decimals).
A new schema without its bounds fails here, naming the field.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from agentstack.eval._metrics_judged import AnswerQuestion, Usefulness
from agentstack.graphs import Analysis, FinalAnswer, Plan, python_tool, search_tool, workspace_tools
from agentstack.graphs._approval import turn_schema
from agentstack.graphs._research_deps import _selection_schema
from agentstack.graphs._support import SupportVerdict
from agentstack.graphs._team import CodeDraft, FinalOutput, Review, Route
from agentstack.rag._graph import Extraction, QueryEntities
from agentstack.serving._canary import CanaryReply
from agentstack.testing import InMemoryRetriever


def unbounded(schema: dict[str, Any]) -> list[str]:
    """Paths of the fields a grammar cannot bound, in a JSON schema (its $defs resolved)."""
    defs = schema.get("$defs", {})
    found: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            return walk(defs[node["$ref"].rsplit("/", 1)[-1]], path)
        for key in ("anyOf", "oneOf", "allOf"):
            for i, option in enumerate(node.get(key, [])):
                walk(option, f"{path}<{i}>")
        kind = node.get("type")
        if "enum" in node or "const" in node:
            return None
        if kind == "string" and "maxLength" not in node:
            found.append(f"{path}: a string without maxLength")
        elif kind == "integer" and ("minimum" not in node or "maximum" not in node):
            found.append(f"{path}: an integer without minimum and maximum")
        elif kind == "number":
            found.append(f"{path}: a number that is not one of a fixed set (a grammar cannot bound its decimals)")
        elif kind == "array":
            if "maxItems" not in node:
                found.append(f"{path}: a list without maxItems")
            walk(node.get("items", {}), f"{path}[]")
        elif kind == "object":
            for name, field in node.get("properties", {}).items():
                walk(field, f"{path}.{name}")
        return None

    walk(schema, schema.get("title", "schema"))
    return found


def approval_turn(tmp_path: Path) -> type[BaseModel]:
    """The approval agent's turn over the default tools: their own argument schemas become part of it."""
    tools = [*workspace_tools(tmp_path), python_tool(), search_tool(InMemoryRetriever.from_texts({"a": "text"}))]
    return turn_schema(tools)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCHEMAS = [
    Plan,
    Analysis,
    FinalAnswer,
    _selection_schema(8, 3),
    SupportVerdict,
    AnswerQuestion,
    Usefulness,
    Route,
    CodeDraft,
    Review,
    FinalOutput,
    Extraction,
    QueryEntities,
    CanaryReply,
]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.__name__)
def test_every_field_of_a_structured_reply_is_bounded(schema: type[BaseModel]) -> None:
    assert unbounded(schema.model_json_schema()) == []


def test_the_approval_turn_over_the_default_tools_is_bounded(tmp_path: Path) -> None:
    assert unbounded(approval_turn(tmp_path).model_json_schema()) == []


def test_the_approval_examples_order_tools_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("approval_example", EXAMPLES / "approval.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)  # its models' annotations resolve in their module
    spec.loader.exec_module(example)
    assert unbounded(turn_schema(example.order_tools(tmp_path / "orders.db")).model_json_schema()) == []


def test_the_check_finds_an_unbounded_field() -> None:
    class Loose(BaseModel):
        name: str
        count: int
        score: float = Field(ge=0, le=1)
        tags: list[str]

    assert unbounded(Loose.model_json_schema()) == [
        "Loose.name: a string without maxLength",
        "Loose.count: an integer without minimum and maximum",
        "Loose.score: a number that is not one of a fixed set (a grammar cannot bound its decimals)",
        "Loose.tags: a list without maxItems",
        "Loose.tags[]: a string without maxLength",
    ]
