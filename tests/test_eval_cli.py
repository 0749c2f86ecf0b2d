"""`agentstack eval` end to end: the docs dataset on the CPU Gemma, judged by it, stored, shown, compared, gated."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from cli_helpers import assert_quiet, run_agentstack
from fleet_helpers import MODEL

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "docs" / "eval" / "agentstack-docs.jsonl"
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path, model_gateway: str, agentstack_postgres: str) -> Run:
    """The CLI on this test's home and Postgres, its models from the session's gateway (`agentstack serve`)."""
    home = tmp_path / "home"
    home.mkdir()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "checkpoints.md").write_text((ROOT / "docs" / "checkpoints.md").read_text())
    env = {
        "AGENTSTACK_HOME": str(home),
        "AGENTSTACK_POSTGRES_URL": agentstack_postgres,
        "AGENTSTACK_LLM_BASE_URL": model_gateway,
        "AGENTSTACK_LLM_MODEL": MODEL,
    }

    def run(*args: str, models: bool = True, judge: bool = False) -> subprocess.CompletedProcess[str]:
        """`models=False`: no model server configured, so a command that needs one starts the CPU fleet;
        `judge`: the gateway's model is a judge of its own (AGENTSTACK_JUDGE_*), as a larger one would be."""
        chosen = env if models else {k: v for k, v in env.items() if not k.startswith("AGENTSTACK_LLM_")}
        if judge:
            chosen = chosen | {"AGENTSTACK_JUDGE_BASE_URL": model_gateway, "AGENTSTACK_JUDGE_MODEL": MODEL}
        return run_agentstack(*args, env=chosen, cwd=tmp_path)

    return run


@pytest.mark.slow  # the CPU Gemma: a research run judged by the embedder, by the model as a judge of its own, gated
def test_a_judged_smoke_run_is_stored_reported_and_gated(cli: Run, tmp_path: Path) -> None:
    common = [str(DATASET), "--docs", str(tmp_path / "docs"), "--limit", "1"]
    first = cli("eval", "run", *common, "--name", "smoke", "--junit", "smoke.xml")
    assert first.returncode == 0, first.stdout + first.stderr
    assert_quiet(first.stderr)
    for metric in ("recall@5", "cites_gold", "faithfulness", "context_recall"):
        assert metric in first.stdout
    suite = ET.parse(tmp_path / "smoke.xml").getroot()
    assert suite.get("failures") == "0" and suite.find("testcase[@name='metric faithfulness']") is not None

    # the answers judged by a model on a server of its own, exactly (one call at a time): no fleet starts here,
    # and every judgement parses
    judging = [str(DATASET), "--limit", "1", "--answers-from", "smoke", "--judge", "model", "--exact"]
    judged = cli("eval", "run", *judging, "--name", "judged", models=False, judge=True)
    assert judged.returncode == 0, judged.stdout + judged.stderr
    assert "models:" not in judged.stdout
    for metric in ("answer_relevancy", "context_precision", "faithfulness"):
        [row] = [line for line in judged.stdout.splitlines() if f" {metric} " in line]
        assert [cell.strip() for cell in row.split("│")][4:6] == ["1", "0"], row  # scored once, no error

    # a gate that cannot be met is refused before anything starts
    again = [str(DATASET), "--limit", "1", "--answers-from", "smoke", "--judge", "embedder", "--name", "gated"]
    second = cli("eval", "run", *again, "--min", "faithfulness=1.01", models=False)
    assert second.returncode == 1 and "not metric=value with a value from 0 to 1" in second.stderr
    assert "models:" not in second.stdout
    # the same answers judged again by the embedder, gated against the model-judged run
    third = cli(
        "eval", "run", *again, "--baseline", "judged", "--max-drop", "faithfulness=0.5", "--min", "cites_gold=1.0",
        "--report", "r.md", models=False,
    )  # fmt: skip
    report = (tmp_path / "r.md").read_text()
    assert "models:" not in third.stdout  # stored answers judged by the embedder: no fleet started
    if "- FAIL: cites_gold" in report:
        assert third.returncode == 1 and "FAIL cites_gold" in third.stdout
    else:
        assert third.returncode == 0 and "- PASS: cites_gold" in report
    assert "faithfulness changed" in third.stdout
    # answers it never gave, or another graph's, are refused: judged, each missing one would score 0
    replayed = [str(DATASET), "--answers-from", "smoke", "--judge", "embedder", "--name", "refused"]
    fourth = cli("eval", "run", *replayed, "--limit", "2", models=False)
    assert fourth.returncode == 1 and "answered 1 of the 2 examples" in fourth.stderr
    assert "add --limit 1" in fourth.stderr
    fifth = cli("eval", "run", *replayed, "--limit", "1", "--graph", "team", models=False)
    assert fifth.returncode == 1 and "holds answers of the 'research' graph, not 'team'" in fifth.stderr
    sixth = cli("eval", "run", *replayed, "--limit", "1", "--exact", models=False)  # no model call to make exact
    assert sixth.returncode == 1 and "this run makes none" in sixth.stderr and "drop --exact" in sixth.stderr

    listed = cli("eval", "list")
    assert "smoke" in listed.stdout and "gated" in listed.stdout
    shown = cli("eval", "show", "judged")
    assert shown.returncode == 0 and "answer_relevancy" in shown.stdout and "extractive" in shown.stdout
    compared = cli("eval", "compare", "smoke", "gated")
    assert compared.returncode == 0 and "faithfulness" in compared.stdout
    missing = cli("eval", "show", "nope")
    assert missing.returncode == 1 and "there is no experiment named 'nope'" in missing.stderr
    assert_quiet(missing.stderr)
