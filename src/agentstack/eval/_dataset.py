"""`Dataset`: the examples an experiment runs, from JSONL, CSV or a Python list.

An example is a graph input (a `question`, or any `input` object), what a good answer says (`reference`), and
the passages that answer it (`reference_contexts`, as text, and/or `reference_context_ids`). Gold passages are
given as text because chunk ids change whenever a document or the chunker does: a retrieved chunk is gold when
it contains one of those texts (see `agentstack.eval._metrics_retrieval.gold_ranking`). A dataset's `hash`
names its content, so an experiment records exactly which examples it ran.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentstack.errors import ConfigError

__all__ = ["Dataset", "Example"]

_LIST_COLUMNS = ("reference_contexts", "reference_context_ids", "tags")


class Example(BaseModel):
    """One item of a dataset. Give a `question`, or the graph's whole `input` (then `question` names it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    question: str | None = Field(default=None, min_length=1)
    input: dict[str, Any] | None = None
    reference: str | None = None
    reference_contexts: tuple[str, ...] = ()
    reference_context_ids: tuple[str, ...] = ()
    metadata: dict[str, Any] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _has_input(self) -> Example:
        if self.question is None and self.input is None:
            raise ValueError("give a `question` or an `input` object")
        if any(not text.strip() for text in self.reference_contexts):
            raise ValueError("a reference context is empty")
        return self

    @property
    def text(self) -> str:
        """What the graph is asked, as text: the question, or the input as JSON."""
        if self.question is not None:
            return self.question
        return json.dumps(self.input, sort_keys=True, ensure_ascii=False)

    def fingerprint(self) -> str:
        """Changes when anything about the example does: keys cached judgements and dataset hashes."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Dataset:
    """Examples with unique ids, in order; `name` is how experiments refer to it."""

    name: str
    examples: tuple[Example, ...]

    def __post_init__(self) -> None:
        if not self.examples:
            raise ConfigError(f"dataset {self.name!r} has no examples", fix="add at least one example")
        ids = [e.id for e in self.examples]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ConfigError(
                f"dataset {self.name!r} has the id {twice[0]!r} more than once", fix="give every example its own id"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)

    @property
    def hash(self) -> str:
        """The content's hash: two experiments with the same hash ran the same examples."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(example.fingerprint().encode())
        return digest.hexdigest()[:16]

    def select(self, *, tags: Iterable[str] = (), limit: int | None = None) -> Dataset:
        """The examples carrying every one of `tags`, the first `limit` of them."""
        wanted = set(tags)
        chosen = [e for e in self.examples if wanted <= set(e.tags)][:limit]
        if not chosen:
            raise ConfigError(
                f"no example of dataset {self.name!r} has the tags {sorted(wanted)}", fix="check the tag names"
            )
        return Dataset(self.name, tuple(chosen))

    # -- loading ---------------------------------------------------------------------------------------
    @classmethod
    def from_list(cls, rows: Sequence[Mapping[str, Any]], *, name: str = "dataset") -> Dataset:
        """From dicts with `Example`'s fields; an example without an `id` is numbered by its position."""
        return cls(name, tuple(_example(row, f"item {n}", n) for n, row in enumerate(rows, 1)))

    @classmethod
    def from_jsonl(cls, path: str | Path, *, name: str | None = None) -> Dataset:
        """One JSON object per line (blank lines skipped); a bad line is named by its number."""
        path = Path(path)
        examples: list[Example] = []
        for number, line in enumerate(_read(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"{path}, line {number}: not JSON ({exc.msg} at column {exc.colno})",
                    fix="write one JSON object per line",
                ) from None
            examples.append(_example(row, f"{path}, line {number}", number))
        return cls(name or path.stem, tuple(examples))

    @classmethod
    def from_csv(cls, path: str | Path, *, name: str | None = None) -> Dataset:
        """A header row naming `Example`'s fields; list columns hold a JSON array or one text."""
        path = Path(path)
        reader = csv.DictReader(_read(path).splitlines())
        examples: list[Example] = []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if None in row:
                raise ConfigError(f"{where}: more cells than the header has columns", fix="quote cells with commas")
            fields: dict[str, Any] = {k: v for k, v in row.items() if v not in ("", None)}
            for column in _LIST_COLUMNS:
                if column in fields:
                    fields[column] = _cell_list(fields[column], where, column)
            for column in ("input", "metadata"):
                if column in fields:
                    fields[column] = _cell_json(fields[column], where, column)
            examples.append(_example(fields, where, reader.line_num))
        return cls(name or path.stem, tuple(examples))

    @classmethod
    def load(cls, path: str | Path, *, name: str | None = None) -> Dataset:
        """A `.jsonl` or `.csv` file, by its suffix."""
        path = Path(path)
        if path.suffix == ".jsonl":
            return cls.from_jsonl(path, name=name)
        if path.suffix == ".csv":
            return cls.from_csv(path, name=name)
        raise ConfigError(f"{path} is neither .jsonl nor .csv", fix="save the dataset as JSON lines or CSV")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"there is no dataset file {path}", fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the dataset {path}: {exc}", fix="save it as UTF-8 text") from None


def _example(row: Any, where: str, number: int) -> Example:
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where}: an example is an object, got {type(row).__name__}", fix='write {"question": ...}')
    fields = dict(row)
    fields.setdefault("id", str(number))
    try:
        return Example.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "the example"
        raise ConfigError(
            f"{where}: {field}: {first['msg']}",
            fix="an example has `id`, `question` or `input`, and optionally `reference`, `reference_contexts`, "
            "`reference_context_ids`, `metadata`, `tags`",
        ) from None


def _cell_json(value: str, where: str, column: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ConfigError(f"{where}: {column} is not JSON: {value[:80]!r}", fix=f"write {column} as JSON") from None


def _cell_list(value: str, where: str, column: str) -> list[str]:
    if value.lstrip().startswith("["):
        parsed = _cell_json(value, where, column)
        if not isinstance(parsed, list):
            raise ConfigError(f"{where}: {column} is not a list", fix=f'write {column} as ["...", "..."]')
        return [str(item) for item in parsed]
    return [value]
