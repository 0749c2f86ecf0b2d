"""RAGAS 0.4's four RAG metrics over a JSON file of items: run by bench/eval_agreement.py in RAGAS's own venv.

Not importable from agentstack (RAGAS is no dependency of ours): it reads `{"llm_url", "llm_model",
"embeddings_url", "embeddings_model", "mode", "repeats", "concurrency", "items": [{"id", "question", "answer",
"contexts", "reference"}]}` from the file named by argv[1] and prints `{"scores": [[{metric: value or null}]]}`
(repeat, then item), null where RAGAS gave NaN or raised, and `{"errors": {metric: [first messages]}}`.
RAGAS is used as its documentation shows for an OpenAI-compatible server: `llm_factory` on an `AsyncOpenAI`
client (instructor, JSON mode) and `OpenAIEmbeddings` on the same kind of client, with its default settings;
mode "json_schema" swaps in instructor's JSON_SCHEMA mode, which sends the schema as `response_format`.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from typing import Any

import instructor
from openai import AsyncOpenAI
from ragas.embeddings import OpenAIEmbeddings
from ragas.llms import llm_factory
from ragas.llms.base import InstructorLLM, InstructorModelArgs
from ragas.metrics.collections import AnswerRelevancy, ContextPrecision, ContextRecall, Faithfulness


async def score_item(metrics: dict[str, Any], item: dict[str, Any], errors: dict[str, list[str]]) -> dict[str, Any]:
    calls = {
        "faithfulness": lambda m: m.ascore(
            user_input=item["question"], response=item["answer"], retrieved_contexts=item["contexts"]
        ),
        "answer_relevancy": lambda m: m.ascore(user_input=item["question"], response=item["answer"]),
        "context_precision": lambda m: m.ascore(
            user_input=item["question"], reference=item["reference"], retrieved_contexts=item["contexts"]
        ),
        "context_recall": lambda m: m.ascore(
            user_input=item["question"], retrieved_contexts=item["contexts"], reference=item["reference"]
        ),
    }
    scores: dict[str, Any] = {}
    for name, metric in metrics.items():
        try:
            value = (await calls[name](metric)).value
        except Exception as exc:  # what a user of RAGAS sees as NaN in its results table
            errors.setdefault(name, []).append(f"{type(exc).__name__}: {str(exc)[:300]}")
            value = None
        if value is not None and (not isinstance(value, (int, float)) or math.isnan(value)):
            value = None
        scores[name] = value
    return scores


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    llm_client = AsyncOpenAI(base_url=spec["llm_url"], api_key="unused")
    if spec["mode"] == "json":  # what llm_factory builds: instructor in JSON mode
        llm = llm_factory(spec["llm_model"], client=llm_client)
    else:  # the same, with the schema sent to the server as response_format (a grammar on llama.cpp)
        patched = instructor.from_openai(llm_client, mode=instructor.Mode.JSON_SCHEMA)
        llm = InstructorLLM(
            client=patched, model=spec["llm_model"], provider="openai", model_args=InstructorModelArgs()
        )
    embeddings = OpenAIEmbeddings(
        client=AsyncOpenAI(base_url=spec["embeddings_url"], api_key="unused"), model=spec["embeddings_model"]
    )
    metrics = {
        "faithfulness": Faithfulness(llm=llm),
        "answer_relevancy": AnswerRelevancy(llm=llm, embeddings=embeddings),
        "context_precision": ContextPrecision(llm=llm),
        "context_recall": ContextRecall(llm=llm),
    }
    gate = asyncio.Semaphore(spec["concurrency"])
    errors: dict[str, list[str]] = {}

    async def one(item: dict[str, Any]) -> dict[str, Any]:
        async with gate:
            return await score_item(metrics, item, errors)

    runs = []
    for _ in range(spec["repeats"]):
        runs.append(await asyncio.gather(*(one(item) for item in spec["items"])))
    return {"scores": runs, "errors": {name: found[:5] for name, found in errors.items()}}


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        print(json.dumps(asyncio.run(main(json.load(handle)))))
