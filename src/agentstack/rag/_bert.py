"""A BERT sentence encoder in plain torch, for the plain sentence-transformers models (the default MiniLM).

Why not sentence-transformers itself: importing it costs 6-7 s on two cores (it pulls in transformers'
model zoo, torch._dynamo, torch.distributed and scikit-learn), paid by every CLI run that embeds a query,
for a 6-layer encoder. This module needs torch, safetensors and tokenizers (torch alone ~2 s) and computes
the same thing: the BERT encoder, mean pooling over the attention mask, L2 normalisation. It takes only
models whose files say exactly that (`PlainBert.fits`); anything else goes to sentence-transformers, and a
test holds both to the same vectors and token ids.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_ACTIVATIONS = frozenset({"gelu"})  # the exact (erf) GELU: BERT's and MiniLM's
_QKV = ("query", "key", "value")
_EMBEDDINGS = tuple(
    f"embeddings.{name}"
    for name in (
        "word_embeddings.weight",
        "position_embeddings.weight",
        "token_type_embeddings.weight",
        "LayerNorm.weight",
        "LayerNorm.bias",
    )
)
_LAYER = tuple(
    f"{module}.{kind}"
    for module in (
        *(f"attention.self.{p}" for p in _QKV),
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    for kind in ("weight", "bias")
)


class PlainBert:
    """Transformer (a `bert` model, absolute positions) + mean Pooling + Normalize, from a local directory."""

    def __init__(self, root: Path, *, device: str | None = None) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        config = json.loads((root / "config.json").read_text())
        self._window = int(json.loads((root / "sentence_bert_config.json").read_text())["max_seq_length"])
        self._width = int(config["hidden_size"])
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        self._layers = int(config["num_hidden_layers"])
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        weights = load_file(str(root / "model.safetensors"), device=str(self._device))
        prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
        self._w = {name.removeprefix(prefix): tensor.float() for name, tensor in weights.items()}
        missing = sorted(
            {*_EMBEDDINGS, *(f"encoder.layer.{n}.{p}" for n in range(self._layers) for p in _LAYER)} - set(self._w)
        )
        if missing:  # found now, not at the first search
            raise ValueError(f"model.safetensors lacks {len(missing)} tensor(s) of a BERT encoder, e.g. {missing[0]}")
        # counting tokens sees the whole text; encoding truncates to the window and pads a batch
        self._counter = Tokenizer.from_file(str(root / "tokenizer.json"))
        self._counter.no_truncation()
        self._counter.no_padding()
        self._encoder = Tokenizer.from_file(str(root / "tokenizer.json"))
        self._encoder.enable_truncation(max_length=self._window)
        self._encoder.enable_padding(pad_id=int(config.get("pad_token_id", 0)))

    @staticmethod
    def fits(root: Path) -> bool:
        """Whether `root` holds a model this encoder computes exactly (checked before anything is imported)."""
        try:
            config = json.loads((root / "config.json").read_text())
            listed = json.loads((root / "modules.json").read_text())
            modules = [module["type"].rsplit(".", 1)[-1] for module in listed]
            pooling = next(module["path"] for module in listed if module["type"].endswith(".Pooling"))
            pool = json.loads((root / pooling / "config.json").read_text())
            wrapper = json.loads((root / "sentence_bert_config.json").read_text())
        except (OSError, ValueError, KeyError, TypeError, StopIteration):
            return False
        modes = {key for key, on in pool.items() if key.startswith("pooling_mode") and on}
        return (
            modules == ["Transformer", "Pooling", "Normalize"]
            and config.get("model_type") == "bert"
            and config.get("hidden_act") in _ACTIVATIONS
            and config.get("position_embedding_type", "absolute") == "absolute"
            and modes == {"pooling_mode_mean_tokens"}
            and not wrapper.get("do_lower_case", False)  # sentence-transformers would lowercase the text first
            and (root / "model.safetensors").is_file()
            and (root / "tokenizer.json").is_file()
        )

    def shape(self) -> tuple[int, int]:
        """(dimension, max tokens without [CLS]/[SEP])."""
        return self._width, self._window - 2

    def tokenize(self, text: str) -> list[int]:
        """The token ids of `text`, without [CLS]/[SEP] and untruncated (what a length check needs)."""
        ids: list[int] = self._counter.encode(text, add_special_tokens=False).ids
        return ids

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> list[list[float]]:
        """Unit vectors for `texts`, in order; batched by length so little of a batch is padding."""
        import torch

        stripped = [text.strip() for text in texts]  # as sentence-transformers does
        order = sorted(range(len(stripped)), key=lambda i: -len(stripped[i]))
        vectors: list[list[float]] = [[] for _ in stripped]
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                encoded = self._encoder.encode_batch([stripped[i] for i in batch])
                ids = torch.tensor([e.ids for e in encoded], device=self._device)
                mask = torch.tensor([e.attention_mask for e in encoded], device=self._device)
                for i, vector in zip(batch, self._forward(ids, mask).tolist(), strict=True):
                    vectors[i] = vector
        return vectors

    def _forward(self, ids: Any, mask: Any) -> Any:
        import torch
        from torch.nn import functional as F

        w = self._w
        positions = torch.arange(ids.shape[1], device=ids.device)
        hidden = self._norm(
            "embeddings.LayerNorm",
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][positions]
            + w["embeddings.token_type_embeddings.weight"][0],
        )
        keep = mask.bool()[:, None, None, :]  # [batch, 1, 1, keys]: padding is never attended to
        for n in range(self._layers):
            layer = f"encoder.layer.{n}."
            q, k, v = (self._split(self._linear(f"{layer}attention.self.{p}", hidden)) for p in _QKV)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=1 / math.sqrt(q.shape[-1]))
            attended = self._linear(f"{layer}attention.output.dense", attended.transpose(1, 2).flatten(2))
            hidden = self._norm(f"{layer}attention.output.LayerNorm", attended + hidden)
            inner = F.gelu(self._linear(f"{layer}intermediate.dense", hidden))
            hidden = self._norm(f"{layer}output.LayerNorm", self._linear(f"{layer}output.dense", inner) + hidden)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)

    def _linear(self, name: str, x: Any) -> Any:
        from torch.nn import functional as F

        return F.linear(x, self._w[f"{name}.weight"], self._w[f"{name}.bias"])

    def _norm(self, name: str, x: Any) -> Any:
        from torch.nn import functional as F

        return F.layer_norm(x, x.shape[-1:], self._w[f"{name}.weight"], self._w[f"{name}.bias"], self._eps)

    def _split(self, x: Any) -> Any:
        """[batch, tokens, hidden] -> [batch, heads, tokens, hidden / heads]."""
        batch, tokens, width = x.shape
        return x.view(batch, tokens, self._heads, width // self._heads).transpose(1, 2)
