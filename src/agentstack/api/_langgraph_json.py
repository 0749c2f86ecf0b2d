"""A user's own graphs for the agent server, named by a `langgraph.json` as LangGraph's own server reads it.

`{"graphs": {"my_agent": "./agent.py:graph"}}`: each value is a Python file (relative to the config's folder)
or an importable module, a colon and the name of what it holds there, which may be

- a compiled graph (`StateGraph(...).compile()`), served with the server's Postgres as its checkpointer when
  it has none;
- an uncompiled `StateGraph`, compiled here with that checkpointer;
- a factory: a function of no argument or of the run config, returning one of the above, an awaitable of
  one, or a (sync or async) context manager yielding one (as `graphs/research.py` does). The server enters it
  once when it starts and leaves it when it stops, rather than once per run as LangGraph's server may: a
  factory that opens a model server or an index should not do so for every request.

A graph compiled with an in-memory checkpointer is refused: the server's threads must outlive a worker, and
the next run of a thread may land on another process. The config's folder (and each `dependencies` entry that
is a folder) goes on `sys.path`, so the modules import their neighbours as they do under `langgraph dev`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import StateGraph
from langgraph.pregel import Pregel

from agentstack.api._served import ServedGraph
from agentstack.errors import ConfigError

__all__ = ["load_langgraph_json", "serve_user_graphs"]


def load_langgraph_json(path: Path) -> dict[str, Any]:
    """Graph id -> what its module holds under the configured name (a graph or a factory, not yet entered)."""
    config = _read(path)
    graphs = config.get("graphs")
    if not isinstance(graphs, dict) or not graphs:
        raise ConfigError(
            f"{path} names no graphs", fix='give it a "graphs" object: {"graphs": {"agent": "./agent.py:graph"}}'
        )
    base = path.resolve().parent
    for dependency in config.get("dependencies") or []:
        folder = (base / str(dependency)).resolve()
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    return {str(graph_id): _resolve(path, str(graph_id), spec) for graph_id, spec in graphs.items()}


async def serve_user_graphs(
    found: Mapping[str, Any], checkpointer: BaseCheckpointSaver[Any], exits: AsyncExitStack
) -> list[ServedGraph]:
    """Each graph ready to serve: factories entered on `exits` (left when it closes), checkpointer attached."""
    served = []
    for graph_id, held in found.items():
        graph = await _enter(graph_id, held, exits)
        served.append(ServedGraph(graph_id, _with_checkpointer(graph_id, graph, checkpointer)))
    return served


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"there is no graphs config at {path}", fix="pass the path of your langgraph.json") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc}", fix="check the path and its permissions") from exc
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}",
            fix="fix the JSON there (langgraph.json is plain JSON: no comments, no trailing commas)",
        ) from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path} holds a JSON {type(config).__name__}, not an object", fix='{"graphs": {...}}')
    return config


def _resolve(config: Path, graph_id: str, spec: Any) -> Any:
    where = f"graph {graph_id!r} of {config}"
    if isinstance(spec, dict):  # the newer long form: {"path": "./agent.py:graph", "description": ...}
        spec = spec.get("path")
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{where} is {spec!r}, not 'FILE_OR_MODULE:NAME'", fix=f'"{graph_id}": "./agent.py:graph"')
    location, _, name = spec.rpartition(":")
    module = _import(config, where, location)
    if not hasattr(module, name):
        held = sorted(n for n in vars(module) if not n.startswith("_"))
        raise ConfigError(
            f"{where}: {location} has no {name!r}", fix=f"name one of what it holds: {', '.join(held) or 'nothing'}"
        )
    return getattr(module, name)


def _import(config: Path, where: str, location: str) -> Any:
    is_file = location.endswith(".py") or "/" in location
    file = (config.resolve().parent / location).resolve()
    if is_file and not file.is_file():
        raise ConfigError(f"{where}: there is no file {file}", fix="paths are relative to the langgraph.json")
    try:
        if not is_file:
            return importlib.import_module(location)
        name = f"agentstack_graph_{file.stem}_{abs(hash(file))}"
        spec = importlib.util.spec_from_file_location(name, file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # typing resolves a module's string annotations through sys.modules
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{where}: importing {location} failed: {type(exc).__name__}: {exc}",
            fix=f"run `python {file if is_file else '-c import ' + location}` to see the traceback, and fix it",
        ) from exc


async def _enter(graph_id: str, held: Any, exits: AsyncExitStack) -> Pregel[Any, Any, Any, Any] | StateGraph[Any]:
    if isinstance(held, Pregel | StateGraph):
        return held
    if not callable(held):
        raise ConfigError(
            f"graph {graph_id!r} is a {type(held).__name__}, not a graph or a graph factory",
            fix="point it at a compiled graph, a StateGraph, or a function that returns one",
        )
    made = held({"configurable": {}}) if inspect.signature(held).parameters else held()
    if inspect.isawaitable(made):
        made = await made
    if isinstance(made, contextlib.AbstractAsyncContextManager):
        made = await exits.enter_async_context(made)
    elif isinstance(made, contextlib.AbstractContextManager):
        made = exits.enter_context(made)
    if not isinstance(made, Pregel | StateGraph):
        raise ConfigError(
            f"graph {graph_id!r}: its factory gave a {type(made).__name__}, not a graph",
            fix="return (or yield) a compiled graph or a StateGraph from it",
        )
    return made


def _with_checkpointer(
    graph_id: str, graph: Pregel[Any, Any, Any, Any] | StateGraph[Any], checkpointer: BaseCheckpointSaver[Any]
) -> Pregel[Any, Any, Any, Any]:
    if isinstance(graph, StateGraph):
        return graph.compile(checkpointer=checkpointer)
    if isinstance(graph.checkpointer, InMemorySaver):
        raise ConfigError(
            f"graph {graph_id!r} keeps its checkpoints in memory ({type(graph.checkpointer).__name__}): its threads "
            "would be lost with the process, and another worker could not continue them",
            fix="compile it without a checkpointer (.compile()): the server gives it its Postgres",
        )
    if graph.checkpointer is None or graph.checkpointer is False:
        return graph.copy(update={"checkpointer": checkpointer})
    return graph
