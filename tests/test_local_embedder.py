"""The local embedder states its shape from the model's files and loads torch and the weights on first use."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agentstack.rag._bert import PlainBert
from agentstack.rag._embeddings import _declared_shape

LAZY = """
import sys
from agentstack.rag import LocalEmbedder

embedder = LocalEmbedder()
declared = (embedder.dimension, embedder.max_tokens)
assert "torch" not in sys.modules and "sentence_transformers" not in sys.modules, "loaded at construction"
assert len(embedder.tokenize("checkpoints survive a crash")) > 3
assert "sentence_transformers" not in sys.modules, "the default model runs on PlainBert"
assert embedder._model.shape() == declared, (embedder._model.shape(), declared)
print("shape", declared)
"""


@pytest.mark.slow  # a fresh interpreter that imports torch
def test_the_default_model_loads_on_first_use_with_the_shape_its_files_state() -> None:
    done = subprocess.run([sys.executable, "-c", LAZY], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "shape (384, 254)" in done.stdout
    assert "Loading weights" not in done.stderr  # transformers' progress bar: noise on every CLI run


def _model_dir(root: Path, *modules: str) -> Path:
    (root / "1_Pooling").mkdir(parents=True)
    listed = [{"idx": i, "name": str(i), "path": "1_Pooling" if m.endswith(".Pooling") else "", "type": m} for i, m in
              enumerate(f"sentence_transformers.models.{m}" for m in modules)]  # fmt: skip
    (root / "modules.json").write_text(json.dumps(listed))
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 768}))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512}))
    return root


def test_only_a_plain_model_is_trusted_without_loading_it(tmp_path: Path) -> None:
    assert _declared_shape(_model_dir(tmp_path / "plain", "Transformer", "Pooling", "Normalize")) == (768, 510)
    # a Dense layer changes the dimension the pooling states: such a model is loaded to be asked
    assert _declared_shape(_model_dir(tmp_path / "dense", "Transformer", "Pooling", "Dense")) is None
    broken = _model_dir(tmp_path / "broken", "Transformer", "Pooling")
    (broken / "sentence_bert_config.json").unlink()
    assert _declared_shape(broken) is None
    assert _declared_shape("sentence-transformers/all-mpnet-base-v2") is None  # a hub name


@pytest.mark.slow  # imports torch and sentence-transformers
def test_plain_bert_computes_what_sentence_transformers_computes() -> None:
    """Same token ids, same unit vectors (to float rounding) for the default model: short, empty, padded,
    non-ASCII, and past the 256-token window (both truncate)."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from agentstack.rag._embeddings import DEFAULT_EMBEDDING_MODEL, _model_path

    root = Path(_model_path(DEFAULT_EMBEDDING_MODEL))
    texts = ["checkpoints survive a crash", "", "  padded  ", "Ünïcödé — naïve café 東京 " * 3, "word " * 400]
    ours, reference = PlainBert(root), SentenceTransformer(str(root))
    assert PlainBert.fits(root) and ours.shape() == (384, 254)
    expected = reference.encode(texts, normalize_embeddings=True)
    assert np.abs(np.array(ours.encode(texts, batch_size=2)) - expected).max() < 1e-5
    for text in texts:
        assert ours.tokenize(text) == reference.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def test_plain_bert_takes_only_what_it_computes(tmp_path: Path) -> None:
    from agentstack.rag._embeddings import DEFAULT_EMBEDDING_MODEL, _model_path

    def copy(name: str, **config: object) -> Path:
        root = tmp_path / name
        source = Path(_model_path(DEFAULT_EMBEDDING_MODEL))
        shutil.copytree(source, root, ignore=shutil.ignore_patterns("*.safetensors"))
        (root / "model.safetensors").touch()
        merged = json.loads((root / "config.json").read_text()) | config
        (root / "config.json").write_text(json.dumps(merged))
        return root

    assert PlainBert.fits(copy("minilm"))
    assert not PlainBert.fits(copy("roberta", model_type="roberta"))
    assert not PlainBert.fits(copy("tanh-gelu", hidden_act="gelu_new"))
    cls = copy("cls")
    (cls / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert not PlainBert.fits(cls)
    lowercased = copy("lowercased")
    (lowercased / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": True}))
    assert not PlainBert.fits(lowercased)
    assert not PlainBert.fits(tmp_path / "missing")


@pytest.mark.slow  # imports torch
async def test_a_damaged_model_is_a_config_error_naming_it(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from agentstack.errors import ConfigError
    from agentstack.rag import LocalEmbedder
    from agentstack.rag._embeddings import DEFAULT_EMBEDDING_MODEL, _model_path

    source = Path(_model_path(DEFAULT_EMBEDDING_MODEL))
    empty = tmp_path / "empty"
    shutil.copytree(source, empty, ignore=shutil.ignore_patterns("*.safetensors"))
    (empty / "model.safetensors").touch()
    with pytest.raises(ConfigError, match=r"cannot load the embedding model .* SafetensorError") as info:
        await LocalEmbedder(empty).aembed_query("a question")
    assert "re-install" in (info.value.fix or "")

    partial = tmp_path / "partial"
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns("*.safetensors"))
    weights = load_file(str(source / "model.safetensors"))
    del weights["encoder.layer.5.output.dense.weight"]
    save_file(weights, str(partial / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"lacks 1 tensor\(s\) .* encoder.layer.5.output.dense.weight"):
        await LocalEmbedder(partial).aembed_query("a question")
