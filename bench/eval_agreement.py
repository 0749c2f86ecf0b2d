"""agentstack's four judged RAG metrics against RAGAS 0.4's, on the same items and the same local judge model.

One stack (embedded Postgres, Milvus Lite with agentstack's docs, the CPU Gemma fleet) in a throwaway home. The
research graph answers the docs dataset's first N questions; each answer is one good item, and the answer to
another question, put under this one, is one deliberately broken item (its sentences neither answer the question
nor follow from its passages). Both tools see the same question, answer (citation marks stripped for RAGAS), top
five passages and reference answer, and judge with the same model: agentstack through its `Judge` (grammar-held
structured output, embedder cascade), RAGAS through its documented path for an OpenAI-compatible server
(`llm_factory` on the fleet's gateway, `OpenAIEmbeddings` on a local `/v1/embeddings` serving the same embedder).
Each tool scores every item `repeats` times, as a CI would rerun it (agentstack's judgement cache is not used).

RAGAS runs in its own venv (not a dependency of ours): `--ragas-python PATH`, else one made on first use under
~/.cache/agentstack-bench (pip, a few minutes). It runs twice: as `llm_factory` builds it (instructor's JSON
mode; one repeat, since its failing calls retry at length), and with the schema sent to the server (JSON_SCHEMA
mode: llama.cpp holds the model to it, as it holds agentstack's calls). Prints a table per mode, then one JSON
line: `nan_ragas` (scores that were NaN or raised, JSON mode, out of `items` * 4), `nan_ragas_json_schema` and
`nan_agentstack` (out of `scores_per_tool`); against RAGAS in JSON_SCHEMA mode, `spearman_<metric>` and
`pearson_<metric>` of the per-item means (null when one side is constant or too few items were scored by both)
and `std_agentstack_over_ragas` (the mean run-to-run standard deviation over the items both scored every time,
ours over theirs: <= 1 is at least as stable); `<metric>_good_minus_broken_<tool>` (a metric that cannot tell
the broken answers from the good ones is a defect); each tool's seconds. agentstack scores twice: as a user's
run does (its calls batched by llama.cpp, on cached prompt prefixes), and exact (`agentstack eval run --exact`:
one call at a time, each prompt computed alone): `std_agentstack_exact`, `std_agentstack_exact_over_ragas`.

    python bench/eval_agreement.py [--quick | --smoke] [--repeats N] [--ragas-python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import uvicorn
from _home import throwaway_settings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agentstack import Stack
from agentstack._net import free_port
from agentstack.config import Settings
from agentstack.eval import (
    AnswerRelevancy,
    ContextPrecision,
    ContextRecall,
    Dataset,
    Example,
    Faithfulness,
    GraphTarget,
    Judge,
    Outcome,
    Sample,
    run_experiment,
)
from agentstack.serving import gateway_server

ROOT = Path(__file__).resolve().parents[1]
# RAGAS 0.4.3 imports langchain_community.chat_models.vertexai, which langchain-community 0.4 removed; left
# unpinned, pip also backtracks through langchain-openai for minutes. These import and resolve (2026-11-30).
RAGAS = (
    "ragas==0.4.3",
    "instructor==1.3.2",
    "openai==1.109.1",
    "langchain==0.3.30",
    "langchain-core==0.3.86",
    "langchain-community==0.3.31",
    "langchain-openai==0.3.35",
)
RAGAS_VENV = Path.home() / ".cache" / "agentstack-bench" / "ragas-0.4.3"
METRICS = ("faithfulness", "answer_relevancy", "context_precision", "context_recall")
PASSAGES = 5
# How RAGAS asks for JSON: "json" is what its `llm_factory` does (instructor's JSON mode: the schema in the
# prompt, any JSON allowed), "json_schema" hands the schema to the server (llama.cpp then holds the model to it)
MODES = ("json", "json_schema")
_MARK = re.compile(r"\s*\[S\d+\]")


# -- RAGAS's side: its own venv, fed through a JSON file ----------------------------------------------------
def ragas_python(given: str | None) -> str:
    """The Python of a venv with RAGAS 0.4 in it: `given`, or one made (once) under ~/.cache."""
    if given:
        return given
    python = RAGAS_VENV / "bin" / "python"
    probe = [str(python), "-c", "import ragas.metrics.collections"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python)
    print(f"making a venv for {RAGAS[0]} in {RAGAS_VENV} (once; pip takes minutes)", file=sys.stderr)
    venv.create(RAGAS_VENV, with_pip=True, clear=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *RAGAS], check=True)
    return str(python)


async def ragas_scores(python: str, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    try:
        worker = await asyncio.create_subprocess_exec(
            python, str(Path(__file__).with_name("_ragas_scores.py")), handle.name, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await worker.communicate()
    finally:
        await asyncio.to_thread(Path(handle.name).unlink)
    if worker.returncode != 0:
        raise SystemExit(f"the RAGAS worker failed (exit {worker.returncode}); its stderr is above")
    return json.loads(out.decode().strip().splitlines()[-1])


def embeddings_app(embedder: Any) -> Starlette:
    """`POST /v1/embeddings` on `embedder`, as the OpenAI client calls it (it asks for base64 floats)."""

    async def embed(request: Request) -> JSONResponse:
        body = await request.json()
        texts = [body["input"]] if isinstance(body["input"], str) else list(body["input"])
        vectors = await embedder.aembed_documents(texts)
        as_base64 = body.get("encoding_format") == "base64"
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if as_base64 else v,
            }
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        return JSONResponse({"object": "list", "data": data, "model": body.get("model", ""), "usage": usage})

    return Starlette(routes=[Route("/v1/embeddings", embed, methods=["POST"])])


@contextlib.asynccontextmanager
async def serving(*servers: uvicorn.Server) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        while not all(server.started for server in servers):  # noqa: ASYNC110 (uvicorn sets a flag, no event)
            await asyncio.sleep(0.05)
        yield
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


# -- agentstack's side --------------------------------------------------------------------------------------
async def our_scores(samples: Sequence[Sample], judge: Judge, repeats: int, concurrency: int) -> list[list[Any]]:
    """Per repeat, `run_experiment` over the samples' fixed outcomes, with no store: nothing comes from the
    judgement cache, and a judgement that fails is recorded as the suite's runs record it."""
    metrics = [Faithfulness(), AnswerRelevancy(), ContextPrecision(k=PASSAGES), ContextRecall()]
    dataset = Dataset("agreement", tuple(s.example for s in samples))
    outcomes = {s.example.id: s.outcome for s in samples}

    async def given(example: Example) -> Outcome:
        return outcomes[example.id]

    runs = []
    for n in range(repeats):
        result = await run_experiment(
            given, dataset, metrics, name=f"agreement-{n}", graph="research", judge=judge, concurrency=concurrency
        )
        runs.append([{name: score.value for name, score in item.scores.items()} for item in result.items])
    return runs


# -- statistics -----------------------------------------------------------------------------------------------
def ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return out


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None  # undefined: one side is constant
    return round(statistics.correlation(xs, ys), 3)


def _per_item(runs: list[list[dict[str, Any]]], metric: str) -> list[list[float | None]]:
    return [[run[i][metric] for run in runs] for i in range(len(runs[0]))]


def _mean(values: Sequence[float | None]) -> float | None:
    return None if None in values or not values else statistics.fmean(v for v in values if v is not None)


def summary(ours: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]], good: int) -> dict[str, Any]:
    """Agreement of the per-item means, each tool's good-minus-broken gap, and the run-to-run spread of both
    over the items both scored in every repeat."""
    result: dict[str, Any] = {}
    for metric in METRICS:
        items = {"agentstack": _per_item(ours, metric), "ragas": _per_item(theirs, metric)}
        means = {tool: [_mean(v) for v in values] for tool, values in items.items()}
        for tool, found in means.items():
            good_means = [m for m in found[:good] if m is not None]
            broken_means = [m for m in found[good:] if m is not None]
            if good_means and broken_means:
                gap = statistics.fmean(good_means) - statistics.fmean(broken_means)
                result[f"{metric}_good_minus_broken_{tool}"] = round(gap, 3)
        both = [
            (a, b) for a, b in zip(means["agentstack"], means["ragas"], strict=True) if a is not None and b is not None
        ]
        result[f"spearman_{metric}"] = correlation(ranks([a for a, _ in both]), ranks([b for _, b in both]))
        result[f"pearson_{metric}"] = correlation([a for a, _ in both], [b for _, b in both])
    result["std_agentstack"], result["std_ragas"], result["std_agentstack_over_ragas"] = spread(ours, theirs)
    result["nan_agentstack"] = nan_count(ours)
    return result


def spread(
    ours: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]]
) -> tuple[float | None, float | None, float | None]:
    """Each tool's mean run-to-run standard deviation over the scores both gave in every repeat, and ours over
    theirs (None when nothing was scored by both, or RAGAS never varied)."""
    found: dict[str, list[float]] = {"agentstack": [], "ragas": []}
    for metric in METRICS:
        for ours_item, theirs_item in zip(_per_item(ours, metric), _per_item(theirs, metric), strict=True):
            if None not in ours_item and None not in theirs_item:
                found["agentstack"].append(statistics.pstdev(ours_item))  # type: ignore[arg-type]
                found["ragas"].append(statistics.pstdev(theirs_item))  # type: ignore[arg-type]
    mine, other = (round(statistics.fmean(v), 4) if v else None for v in found.values())
    return mine, other, (round(mine / other, 3) if mine is not None and other else None)


def nan_count(runs: list[list[dict[str, Any]]]) -> int:
    return sum(v is None for run in runs for item in run for v in item.values())


# -- the run --------------------------------------------------------------------------------------------------
async def main(questions: int, repeats: int, python: str, concurrency: int) -> dict[str, Any]:
    dataset = Dataset.load(ROOT / "docs" / "eval" / "agentstack-docs.jsonl").select(limit=questions)
    async with throwaway_settings() as settings:
        return await _measure(settings, dataset, repeats, python, concurrency)


async def _measure(settings: Settings, dataset: Dataset, repeats: int, python: str, concurrency: int) -> Any:
    async with Stack.from_settings(settings) as stack:
        assert stack.retrieval is not None and stack.fleet is not None
        await stack.retrieval.ingestor.aingest_paths([ROOT / "docs"])
        entry = stack.graphs.get("research")
        target = GraphTarget(stack.graph("research"), entry, context=entry.context_from({}))
        _say(f"answering {len(dataset)} questions with the research graph")
        answered = await run_experiment(target, dataset, [], name="answers", graph="research", concurrency=concurrency)
        examples = [item.example for item in answered.items]
        outcomes = [item.outcome for item in answered.items]
        failed = {e.id: o.error for e, o in zip(examples, outcomes, strict=True) if o.error}
        if failed:
            raise SystemExit(f"the research graph failed: {failed}")
        half = len(examples) // 2 or 1
        samples = [Sample(e, _top(o)) for e, o in zip(examples, outcomes, strict=True)]
        samples += [  # the same question and passages under another question's answer
            Sample(
                e.model_copy(update={"id": f"{e.id}/broken"}),
                _top(o, answer=outcomes[(n + half) % len(outcomes)].answer),
            )
            for n, (e, o) in enumerate(zip(examples, outcomes, strict=True))
        ]
        embedder = stack.retrieval.embedder
        started = time.perf_counter()
        _say(f"agentstack scoring {len(samples)} items x {repeats}")
        ours = await our_scores(samples, Judge(stack.model, embedder=embedder), repeats, concurrency)
        seconds = {"agentstack": time.perf_counter() - started}
        started = time.perf_counter()
        _say(f"agentstack scoring {len(samples)} items x {repeats}, exact (one call at a time, each prompt alone)")
        exact = stack.fleet.chat_model(max_tokens=stack.model.max_tokens, temperature=0, exact=True)
        ours_exact = await our_scores(samples, Judge(exact, embedder=embedder), repeats, concurrency)
        seconds["agentstack_exact"] = time.perf_counter() - started
        gateway, embeddings = free_port(), free_port()
        servers = (
            gateway_server(stack.fleet, "127.0.0.1", gateway),
            uvicorn.Server(uvicorn.Config(embeddings_app(embedder), port=embeddings, log_level="warning")),
        )
        spec = {
            "llm_url": f"http://127.0.0.1:{gateway}/v1",
            "llm_model": stack.fleet.chat_model_name(),
            "embeddings_url": f"http://127.0.0.1:{embeddings}/v1",
            "embeddings_model": getattr(embedder, "name", "embedder"),
            "repeats": repeats,
            "concurrency": concurrency,
            "items": [
                {
                    "id": s.example.id,
                    "question": s.example.text,
                    "answer": _MARK.sub("", s.outcome.answer).strip(),
                    "contexts": [c.text for c in s.outcome.contexts],
                    "reference": s.example.reference or "",
                }
                for s in samples
            ],
        }
        theirs: dict[str, list[list[dict[str, Any]]]] = {}
        async with serving(*servers):
            for mode in MODES:
                started = time.perf_counter()
                _say(f"RAGAS ({mode} mode) scoring {len(samples)} items x {1 if mode == 'json' else repeats}")
                # JSON mode once: what it shows is its NaN count, and its failing calls retry at length
                found = await ragas_scores(python, spec | {"mode": mode, "repeats": 1 if mode == "json" else repeats})
                seconds[f"ragas_{mode}"] = time.perf_counter() - started
                theirs[mode] = found["scores"]
                for metric, messages in found["errors"].items():
                    print(f"RAGAS ({mode} mode) {metric} failures, e.g.: {messages[0]}", file=sys.stderr)
    good = len(examples)
    for mode in MODES:
        print(f"-- RAGAS in instructor's {mode} mode")
        _table(ours, theirs[mode], good)
    result = summary(ours, theirs["json_schema"], good)
    exact_std, _, exact_ratio = spread(ours_exact, theirs["json_schema"])
    return {
        **result,
        "std_agentstack_exact": exact_std,
        "std_agentstack_exact_over_ragas": exact_ratio,
        "nan_agentstack_exact": nan_count(ours_exact),
        "nan_ragas": nan_count(theirs["json"]),
        "nan_ragas_json_schema": nan_count(theirs["json_schema"]),
        "scores_per_tool": len(samples) * len(METRICS) * repeats,
        "items": len(samples),
        "repeats": repeats,
        **{f"{tool}_s": round(spent, 1) for tool, spent in seconds.items()},
    }


def _say(step: str) -> None:
    """A step of a run that takes hours on a CPU, on stderr as it starts (stdout is the tables and the JSON)."""
    print(f"{time.strftime('%H:%M:%S')} {step}", file=sys.stderr, flush=True)


def _top(outcome: Outcome, *, answer: str | None = None) -> Outcome:
    """The outcome as both tools see it: its first five passages, and `answer` in place of its own."""
    contexts = outcome.contexts[:PASSAGES]
    kept = {c.id for c in contexts}
    return Outcome(
        answer=outcome.answer if answer is None else answer,
        contexts=contexts,
        cited=tuple(i for i in outcome.cited if i in kept),
    )


def _table(ours: list[list[dict[str, Any]]], theirs: list[list[dict[str, Any]]], good: int) -> None:
    print(f"{'metric':18} {'tool':10} {'good':>6} {'broken':>7} {'NaN':>5}   (means over every repeat)")
    for metric in METRICS:
        for tool, runs in (("agentstack", ours), ("ragas", theirs)):
            good_values = [item[metric] for run in runs for item in run[:good]]
            broken_values = [item[metric] for run in runs for item in run[good:]]
            means = [_mean_text(values) for values in (good_values, broken_values)]
            nan = (good_values + broken_values).count(None)
            print(f"{metric:18} {tool:10} {means[0]:>6} {means[1]:>7} {nan:5d}")


def _mean_text(values: list[float | None]) -> str:
    scored = [v for v in values if v is not None]
    return f"{statistics.fmean(scored):6.3f}" if scored else "     -"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="8 questions (16 items), 2 repeats")
    size.add_argument("--smoke", action="store_true", help="2 questions (4 items), 1 repeat")
    parser.add_argument("--ragas-python", help="a Python with ragas 0.4 installed (else a venv is made)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, help="repeats of each tool's scoring (default: 3; --quick 2; --smoke 1)")
    args = parser.parse_args()
    questions, repeats = (2, 1) if args.smoke else (8, 2) if args.quick else (25, 3)
    repeats = args.repeats or repeats
    python = ragas_python(args.ragas_python)
    print(json.dumps(asyncio.run(main(questions, repeats, python, args.concurrency))))
