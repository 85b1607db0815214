"""Retrieval corpora as JSONL ``{"id": str, "contents": "\\"Title\\"\\ntext"}`` — Search-R1's wiki format.

The bundled HotpotQA questions carry their own Wikipedia paragraphs (2 supporting + 8 distractors each);
pooling them gives a ~6k-paragraph mini Wikipedia in which every question's evidence is retrievable, so
the demo and tests need no 13 GB wiki dump.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Iterator, Sequence
from pathlib import Path


def default_hotpotqa_sources() -> list[Path]:
    """The HotpotQA files bundled with ``verl_mem1`` (train, then dev)."""
    root = importlib.resources.files("verl_mem1") / "data" / "hotpotqa"
    return [Path(str(root / "train.jsonl")), Path(str(root / "dev.jsonl"))]


def format_contents(title: str, text: str) -> str:
    """Search-R1's ``contents`` layout: the quoted title on the first line, the paragraph after it."""
    return f'"{title}"\n{text}'


def _iter_jsonl(path: Path) -> Iterator[tuple[int, object]]:
    """Yield ``(1-based line number, parsed JSON)`` for non-blank lines; bad JSON names file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None


def _hotpotqa_paragraphs(path: Path) -> Iterator[tuple[str, str]]:
    for lineno, row in _iter_jsonl(path):
        where = f"{path}, line {lineno}"
        context = row.get("context") if isinstance(row, dict) else None
        if not isinstance(context, dict):
            raise ValueError(f"{where}: expected an object with a 'context' object (HotpotQA format)")
        titles, sentences = context.get("title"), context.get("sentences")
        if not isinstance(titles, list) or not isinstance(sentences, list) or len(titles) != len(sentences):
            raise ValueError(f"{where}: 'context' needs lists 'title' and 'sentences' of equal length")
        for title, sents in zip(titles, sentences, strict=True):
            if not isinstance(title, str) or not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
                raise ValueError(f"{where}: each context title must be a string and its sentences a list of strings")
            # HotpotQA sentences keep their leading spaces, so plain concatenation restores the paragraph.
            yield title, "".join(sents).strip()


def build_hotpotqa_corpus(sources: Sequence[Path] | None, out: Path) -> int:
    """Write the distinct (title, text) paragraphs of HotpotQA files to ``out``; return how many.

    Ids are consecutive integers as strings (like Search-R1's wiki-18), in first-seen order, so the same
    sources always give the same corpus.
    """
    paths = [Path(p) for p in sources] if sources else default_hotpotqa_sources()
    seen: set[tuple[str, str]] = set()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for path in paths:
            for title, text in _hotpotqa_paragraphs(path):
                if (title, text) in seen:
                    continue
                doc = {"id": str(len(seen)), "contents": format_contents(title, text)}
                seen.add((title, text))
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    tmp.replace(out)  # never leave a half-written corpus behind a failed run
    return len(seen)


def read_corpus(path: Path) -> list[dict]:
    """Load and validate a corpus JSONL; a bad line raises ``ValueError`` naming the file and 1-based line."""
    path = Path(path)
    docs: list[dict] = []
    first_line: dict[str, int] = {}
    for lineno, doc in _iter_jsonl(path):
        where = f"{path}, line {lineno}"
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object with string 'id' and 'contents'")
        for key in ("id", "contents"):
            if not isinstance(doc.get(key), str):
                got = "missing" if key not in doc else type(doc[key]).__name__
                raise ValueError(f"{where}: '{key}' must be a string (got {got})")
        if doc["id"] in first_line:
            raise ValueError(f"{where}: duplicate id {doc['id']!r} (first on line {first_line[doc['id']]})")
        first_line[doc["id"]] = lineno
        docs.append(doc)
    if not docs:
        raise ValueError(f"{path}: corpus is empty")
    return docs


def title_of(contents: str) -> str:
    """The title of a ``contents`` string (first line, quotes removed)."""
    first = contents.split("\n", 1)[0]
    return first[1:-1] if len(first) >= 2 and first[0] == first[-1] == '"' else first
