"""Folders the project ships with its code: in the wheel under `agentstack/` (pyproject's force-include),
or at the top of a source checkout (an editable install)."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_CHECKOUT = _PACKAGE.parents[1]


def bundled(packaged: str, checkout: str) -> Path:
    """`agentstack/<packaged>` of an installed wheel, else `<checkout>` of the source tree."""
    path = _PACKAGE / packaged
    return path if path.is_dir() else _CHECKOUT / checkout
