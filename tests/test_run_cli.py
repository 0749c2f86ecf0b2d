"""`agentstack run | resume | threads show` end to end on the real CPU Gemma (grammar-constrained shapes)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli_helpers import assert_quiet, clean_env, run_agentstack
from fleet_helpers import MODEL, tiny_spec_file
from graph_helpers import DOCS

Run = Callable[..., subprocess.CompletedProcess[str]]


def _cli(tmp_path: Path, fleet_home: Path, postgres: str, **env: str) -> Run:
    """Run the agentstack CLI with this test's Postgres and its own home, and `env` on top."""
    home = tmp_path / "home"
    home.mkdir()
    if (fleet_home / "models").is_dir():  # reuse the session's assembled GGUF
        (home / "models").symlink_to(fleet_home / "models")
    base = {"AGENTSTACK_HOME": str(home), "AGENTSTACK_POSTGRES_URL": postgres}

    def run(*args: str, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        return run_agentstack(*args, env=base | env, cwd=cwd)

    return run


@pytest.fixture
def cli(tmp_path: Path, fleet_home: Path, agentstack_postgres: str) -> Run:
    """The CLI starting its own one-replica CPU fleet, as `agentstack run` does with nothing configured."""
    spec = tiny_spec_file(tmp_path / "fleet.yaml", replicas=1)
    return _cli(tmp_path, fleet_home, agentstack_postgres, AGENTSTACK_FLEET=str(spec))


@pytest.fixture
def served_cli(tmp_path: Path, fleet_home: Path, agentstack_postgres: str, model_gateway: str) -> Run:
    """The CLI on the session's model gateway (AGENTSTACK_LLM_BASE_URL): the same graphs, no fleet start per run."""
    return _cli(
        tmp_path, fleet_home, agentstack_postgres, AGENTSTACK_LLM_BASE_URL=model_gateway, AGENTSTACK_LLM_MODEL=MODEL
    )


def _thread(stdout: str) -> str:
    match = re.search(r"thread: (\S+)", stdout)
    assert match, stdout
    return match.group(1)


@pytest.mark.slow
def test_a_research_thread_killed_resumed_reviewed_and_approved_from_other_processes(
    served_cli: Run, tmp_path: Path, agentstack_postgres: str, model_gateway: str
) -> None:
    """One thread through every state the CLI shows: SIGKILL while it searches (`threads show` says where it
    stopped; a new turn and a decision are refused), `resume` with no decision (no plan step again), a review
    that waits for a person (threshold above any confidence), `--approve` from another process, finished."""
    cli = served_cli
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    env = clean_env() | {
        "AGENTSTACK_HOME": str(tmp_path / "home"),
        "AGENTSTACK_POSTGRES_URL": agentstack_postgres,
        "AGENTSTACK_LLM_BASE_URL": model_gateway,
        "AGENTSTACK_LLM_MODEL": MODEL,
        "PYTHONUNBUFFERED": "1",
        "COLUMNS": "200",
    }
    question = ["run", "research", "What restarts a crashed replica?", "--docs", str(docs), "--thread", "t1"]
    knobs = ["--set", "max_iterations=1", "--set", "review_threshold=1.01"]
    agentstack = str(Path(sys.executable).with_name("agentstack"))
    with subprocess.Popen(
        [agentstack, *question, *knobs], env=env, stdout=subprocess.PIPE, text=True, cwd=tmp_path
    ) as run:
        assert run.stdout is not None
        seen = []
        for line in run.stdout:
            seen.append(line)
            if line.startswith("search "):  # planned (and saved); searching, selecting are under way
                run.kill()
                break
        run.wait(timeout=60)
    assert run.returncode == -signal.SIGKILL, "".join(seen)
    assert any("docs: 3 new" in line for line in seen) and any(line.startswith("plan ") for line in seen)

    shown = cli("threads", "show", "t1")
    assert shown.returncode == 0 and "run: stopped mid-way before" in shown.stdout, shown.stdout
    assert "graph: research" in shown.stdout and "question" in shown.stdout
    assert "agentstack resume t1" in shown.stdout
    again = cli(*question)
    assert again.returncode == 1 and "has an unfinished run" in again.stderr
    assert "finish it first: agentstack resume t1" in again.stderr
    decided = cli("resume", "t1", "--approve")
    assert decided.returncode == 1 and "is not waiting for a decision" in decided.stderr
    assert_quiet(again.stderr + decided.stderr)

    waiting = cli("resume", "t1")
    assert waiting.returncode == 2, waiting.stderr + waiting.stdout
    assert "continuing: stopped mid-way" in waiting.stdout
    assert not re.search(r"^plan ", waiting.stdout, re.MULTILINE)  # the finished step did not run again
    assert "waiting for a decision" in waiting.stdout and '"type": "review"' in waiting.stdout
    assert_quiet(waiting.stderr)  # the streamed structured calls, too
    undecided = cli("resume", "t1")
    assert undecided.returncode == 1 and "say what to do with it" in undecided.stderr
    approved = cli("resume", "t1", "--approve")  # another process
    assert approved.returncode == 0, approved.stderr + approved.stdout
    assert "answer (approved" in approved.stdout
    done = cli("resume", "t1", "--approve")
    assert done.returncode == 1 and "thread 't1' has finished: nothing waits" in done.stderr


@pytest.mark.slow
def test_run_approval_on_the_local_model(served_cli: Run, tmp_path: Path) -> None:
    cli = served_cli
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("the meeting moved to Tuesday")
    ran = cli("run", "approval", "Read notes.txt and say when the meeting is", "--set", "max_steps=1", cwd=work)
    # Gemma 270M picks tools at random; the shapes are grammar-constrained, so either it finished, or a
    # guarded call waits for a decision, or (its failure mode) its turn ran past the token limit rambling in
    # an argument, which must then be the clear ModelOutputError, not a traceback
    if ran.returncode == 1:
        assert "error: the model's reply to approval/agent@v1" in ran.stderr, ran.stderr
    else:
        assert ran.returncode in (0, 2), ran.stderr + ran.stdout
    if ran.returncode == 2:
        thread = _thread(ran.stdout)
        rejected = cli("resume", thread, "--reject", "do not change anything", cwd=work)
        assert rejected.returncode in (0, 2), rejected.stderr + rejected.stdout
    assert_quiet(ran.stderr)
    # whichever way it went, nothing a person did not approve changed the workspace
    assert (work / "notes.txt").read_text() == "the meeting moved to Tuesday"


@pytest.mark.slow
def test_run_team_on_the_local_model(cli, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "numbers.md").write_text("Six times seven is forty-two.")
    ran = cli("run", "team", "Compute 6 times 7 with Python", "--docs", str(docs), "--set", "max_steps=1")
    assert ran.returncode == 0, ran.stderr + ran.stdout
    assert "result (" in ran.stdout and "coordinator" in ran.stdout
    assert_quiet(ran.stderr)


@pytest.mark.slow
def test_run_refuses_bad_input_before_starting_anything(cli) -> None:
    unknown = cli("run", "nonsense", "task")
    assert unknown.returncode == 1 and "no graph named 'nonsense'" in unknown.stderr
    empty = cli("run", "research", "  ")
    assert empty.returncode == 1 and "task is empty" in empty.stderr
    knob = cli("run", "research", "q", "--set", "max_iteration=2")
    assert knob.returncode == 1 and "no knob max_iteration" in knob.stderr
    flags = cli("resume", "some-thread", "--approve", "--reject", "no")
    assert flags.returncode == 1 and "--approve and --reject were both given" in flags.stderr
    missing = cli("resume", "some-thread")
    assert missing.returncode == 1 and "there is no thread 'some-thread'" in missing.stderr


@pytest.mark.slow
def test_a_traced_research_run_on_the_local_model(
    tmp_path: Path, fleet_home: Path, agentstack_postgres: str, model_gateway: str
) -> None:
    """`agentstack run` exporting to an OTLP receiver, on the CPU Gemma through the gateway: the run's span tree
    with the token counts llama.cpp reported, its trace id printed and in the thread's checkpoints, and its usage
    rows for `agentstack usage`."""
    from agentstack.testing import OtlpReceiver

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    with OtlpReceiver() as receiver:
        cli = _cli(
            tmp_path, fleet_home, agentstack_postgres,
            AGENTSTACK_LLM_BASE_URL=model_gateway, AGENTSTACK_LLM_MODEL=MODEL, AGENTSTACK_OTLP_ENDPOINT=receiver.url,
            AGENTSTACK_TRACE_URL="https://traces.example/{trace_id}",
        )  # fmt: skip
        knobs = ["--set", "max_iterations=1", "--set", "review_threshold=0"]
        ran = cli("run", "research", "What restarts a crashed replica?", "--docs", str(docs), "--thread", "tr", *knobs)
        assert ran.returncode == 0, ran.stderr + ran.stdout
        trace = re.search(r"trace: https://traces\.example/([0-9a-f]{32})", ran.stdout)
        assert trace is not None, ran.stdout
        spans = receiver.wait_for(lambda got: any(s.name == "invoke_agent research" for s in got), timeout_s=30)
    mine = [s for s in spans if s.trace_id == trace[1]]
    names = {s.name for s in mine}
    assert {"invoke_agent research", "node plan", "node search", "node answer"} <= names, names
    assert any(s.name.startswith("retrieval") and s.attributes["agentstack.retrieval.documents"] > 0 for s in mine)
    chats = [s for s in mine if s.name.startswith("chat ")]
    assert chats and all(s.attributes["gen_ai.request.model"] == MODEL for s in chats)
    assert all(s.attributes["gen_ai.usage.input_tokens"] > 0 for s in chats)  # what llama.cpp counted
    shown = cli("threads", "show", "tr")
    assert f"trace: https://traces.example/{trace[1]}" in shown.stdout, shown.stdout
    usage = cli("usage", "--by", "graph", "--format", "json")
    assert usage.returncode == 0, usage.stderr
    rows = {r["key"]: r for r in json.loads(usage.stdout)}
    assert rows["research"]["runs"] == 1 and rows["research"]["input_tokens"] > 0
