"""Loaders: plain text, Markdown, HTML and PDF files into `Document`s, refusing what would index nothing."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from agentstack._optional import require
from agentstack.errors import RetrievalError
from agentstack.rag._types import Document

__all__ = ["SUPPORTED_SUFFIXES", "expand_paths", "load_document"]

_TEXT = {".txt", ".text", ".md", ".markdown", ".rst"}
_HTML = {".html", ".htm"}
_PDF = {".pdf"}
SUPPORTED_SUFFIXES = frozenset(_TEXT | _HTML | _PDF)


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus the supported files under directories named (hidden ones skipped), in a stable order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser().resolve()
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUPPORTED_SUFFIXES
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        elif path.is_file():
            files.append(path)
        else:
            raise RetrievalError(f"{path} does not exist", fix="check the path")
    return list(dict.fromkeys(files))


def load_document(path: str | Path) -> Document:
    """Read one file; the document's source is its resolved path (re-ingesting it replaces its chunks)."""
    path = Path(path).expanduser().resolve()
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise RetrievalError(
            f"{path}: unsupported file type {suffix or '(no suffix)'!r}",
            fix=f"convert it to one of {', '.join(sorted(SUPPORTED_SUFFIXES))}",
        )
    if path.stat().st_size == 0:
        raise RetrievalError(f"{path} is empty", fix="remove it from the ingest, or give it content")
    metadata: dict[str, str] = {"file_name": path.name, "file_type": suffix.lstrip(".")}
    if suffix in _PDF:
        text, title = _pdf(path)
    elif suffix in _HTML:
        text, title = _html(path)
    else:
        text, title = _text(path), None
    if title:
        metadata["title"] = title
    if not text.strip():
        raise RetrievalError(
            f"{path} has no text to index" + (" (a scanned PDF? it holds only images)" if suffix in _PDF else ""),
            fix="run OCR on it first" if suffix in _PDF else "give it content, or leave it out",
        )
    return Document(source=str(path), text=text, metadata=metadata)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RetrievalError(
            f"{path} is not UTF-8 text (byte {exc.start} cannot be decoded)",
            fix="re-save it as UTF-8, or check it is really a text file",
        ) from exc


def _html(path: Path) -> tuple[str, str | None]:
    bs4 = require("bs4", extra="local", feature="reading HTML")
    soup = bs4.BeautifulSoup(_text(path), "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else None
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    return "\n".join(line for line in lines if line), title or None


def _pdf(path: Path) -> tuple[str, str | None]:
    pypdf = require("pypdf", extra="local", feature="reading PDF")
    from pypdf.errors import PyPdfError

    try:
        reader = pypdf.PdfReader(path, strict=False)
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise RetrievalError(
            f"{path} is not a readable PDF: {exc}", fix="check the file is a complete, unencrypted PDF"
        ) from exc
    return "\n\n".join(p.strip() for p in pages if p.strip()), (str(title) if title else None)
