"""`graphs/`: langgraph.json names modules that exist and export graph factories."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from pathlib import Path

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def test_langgraph_json_points_at_graph_factories(monkeypatch) -> None:
    config = json.loads((GRAPHS / "langgraph.json").read_text())
    monkeypatch.syspath_prepend(str(GRAPHS))
    assert set(config["graphs"]) == {"research", "team", "approval"}
    for name, target in config["graphs"].items():
        path, attr = target.split(":")
        spec = importlib.util.spec_from_file_location(f"deployable_{name}", GRAPHS / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        factory = getattr(module, attr)
        assert callable(factory) and len(inspect.signature(factory).parameters) == 1  # LangGraph passes the config
        cm = factory({})
        assert hasattr(cm, "__aenter__")  # opened by the server; not here: it would start the whole stack
        sys.modules.pop(f"deployable_{name}", None)
