"""`Judge`: the model (and embedder) that grades answers, any OpenAI-compatible one or the CPU Gemma.

Every judge call asks for a bounded pydantic schema through `StructuredCall`, the graphs' own path: on llama.cpp,
vLLM or SGLang the grammar makes even a 270M model's reply parse, and a reply that still does not is asked
again with other sampling. What then still fails raises `ModelOutputError`, which the metric records as that
item's error (never a NaN, never a dropped item). Sentence support goes through the graphs' `SupportScorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from agentstack._structured import StructuredCall, chat_model_name
from agentstack.errors import ConfigError
from agentstack.graphs._support import CascadeSupport, Embedder, EmbeddingSupport, JudgeSupport, SupportScorer
from agentstack.prompts import Prompt, PromptLibrary

__all__ = ["Judge"]

T = TypeVar("T", bound=BaseModel)


class Judge:
    """Grades samples: `model` answers the judged metrics' questions, `embedder` compares texts.

    Sentence support (faithfulness, context recall, context precision) is the embedder's alone without a model,
    the model's alone without an embedder, and with both a `CascadeSupport`: the embedder settles what is
    copied or unrelated, the model the rest. Without a model the metrics that must ask one (answer relevancy,
    rubrics) are refused before an experiment starts.
    """

    def __init__(
        self,
        model: BaseChatModel | None = None,
        *,
        embedder: Embedder | None = None,
        prompts: PromptLibrary | None = None,
        support: SupportScorer | None = None,
    ) -> None:
        if model is None and embedder is None and support is None:
            raise ConfigError(
                "a judge needs a model, an embedder or a support scorer", fix="Judge(model, embedder=embedder)"
            )
        self.model = model
        self.embedder = embedder
        self.prompts = prompts or PromptLibrary()
        self._calls: dict[type[BaseModel], StructuredCall[Any]] = {}
        self._prompts: dict[str, Prompt] = {}
        self._asked = 0
        self.support = support or _default_support(model, embedder, self.prompts)

    @property
    def name(self) -> str:
        """What cached judgements are keyed by: the model, the embedder and the support scorer."""
        model = chat_model_name(self.model) if self.model is not None else "-"
        embedder = getattr(self.embedder, "name", "-") if self.embedder is not None else "-"
        return f"model={model};embedder={embedder};support={self.support.name}"

    async def ask(self, prompt: str, schema: type[T], *, resample: int = 0, **variables: Any) -> T:
        """The reply to `prompts/eval/<prompt>` as `schema`; `ModelOutputError` when it never parses.
        `resample` n > 0: the n-th sampled reply, not the greedy one (a repeated judgement, for its spread;
        seeded, so a rerun samples the same)."""
        if self.model is None:
            raise ConfigError(f"the {prompt} judgement needs a judge model", fix="Judge(model, embedder=embedder)")
        call = self._calls.get(schema)
        if call is None:
            call = self._calls[schema] = StructuredCall(self.model, schema)
        reply, tokens = await call(self.prompt(prompt), resample=resample, **variables)
        self._asked += tokens
        return reply

    def prompt(self, name: str) -> Prompt:
        """`prompts/eval/<name>`, read once: a judgement per item and claim would read and parse its file again."""
        found = self._prompts.get(name)
        if found is None:
            found = self._prompts[name] = self.prompts.get("eval", name)
        return found

    @property
    def tokens_used(self) -> int:
        """What this judge's model calls cost, its support checks included."""
        return self._asked + int(getattr(self.support, "tokens_used", 0))

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.embedder is None:
            raise ConfigError("this judgement compares embeddings and the judge has no embedder", fix="pass embedder=")
        return await self.embedder.aembed_documents(list(texts))


def _default_support(model: BaseChatModel | None, embedder: Embedder | None, prompts: PromptLibrary) -> SupportScorer:
    if model is None:
        assert embedder is not None
        return EmbeddingSupport(embedder)
    judged = JudgeSupport(model, prompts=prompts)
    return judged if embedder is None else CascadeSupport(EmbeddingSupport(embedder), judged)
