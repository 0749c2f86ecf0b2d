"""The graph `bench/api_runs.py` serves on both servers: five supersteps, each a call to a scripted chat model
(LangChain's `GenericFakeChatModel`: no sleeps, no network). It imports nothing of agentstack, so LangGraph's
own server loads it in its own environment as it is."""

from __future__ import annotations

import operator
from typing import Annotated

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.graph import END, START, StateGraph
from typing_extensions import TypedDict

STEPS = 5
MODEL = GenericFakeChatModel(messages=iter(lambda: AIMessage(content="ok"), None))  # replies "ok", forever


class State(TypedDict):
    steps: Annotated[list[str], operator.add]


async def step(state: State) -> dict[str, list[str]]:
    reply = await MODEL.ainvoke(f"step {len(state['steps'])}")
    return {"steps": [str(reply.content)]}


def _next(state: State) -> str:
    return "step" if len(state["steps"]) < STEPS else END


builder = StateGraph(State)
builder.add_node("step", step)
builder.add_edge(START, "step")
builder.add_conditional_edges("step", _next, ["step", END])
graph = builder.compile()
