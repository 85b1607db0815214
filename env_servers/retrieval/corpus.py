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
from typing import Any


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


def iter_corpus(path: Path) -> Iterator[dict]:
    """Stream a corpus JSONL's documents, validated as they come: a bad line raises ``ValueError`` naming the file
    and 1-based line, as does an empty corpus (after the last line). Memory: the ids seen, for duplicates."""
    path = Path(path)
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
        yield doc
    if not first_line:
        raise ValueError(f"{path}: corpus is empty")


def read_corpus(path: Path) -> list[dict]:
    """Load and validate a corpus JSONL (:func:`iter_corpus`)."""
    return list(iter_corpus(path))


def title_of(contents: str) -> str:
    """The title of a ``contents`` string (first line, quotes removed)."""
    first = contents.split("\n", 1)[0]
    return first[1:-1] if len(first) >= 2 and first[0] == first[-1] == '"' else first


class LazyCorpus(Sequence[dict]):
    """A corpus JSONL read in place: one scan finds where each line starts (8 bytes a document, kept beside the file
    as ``FILE.offsets.npy`` for the next start), the file is memory-mapped, and ``corpus[i]`` parses line ``i`` when
    a search returns it. Search-R1's wiki-18.jsonl (21M passages, ~13 GB) then costs ~170 MB of memory, not tens
    of GB of Python objects. Rows are returned as they are in the file (Search-R1 returns whole rows)."""

    def __init__(self, path: Path, *, cache_offsets: bool = True) -> None:
        import mmap

        import numpy as np

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"corpus file not found: {self.path}")
        cached = self.path.with_name(self.path.name + ".offsets.npy")
        size = self.path.stat().st_size
        offsets = None
        if cached.is_file() and cached.stat().st_mtime >= self.path.stat().st_mtime:
            offsets = np.load(cached)
            if len(offsets) == 0 or offsets[-1] != size:
                offsets = None
        if offsets is None:
            offsets = self._scan()
            if cache_offsets:
                try:
                    np.save(cached, offsets)
                except OSError:  # a read-only data folder: scan again next time
                    pass
        self._offsets = offsets  # line starts, then the file size
        if len(self) == 0:
            raise ValueError(f"{self.path}: corpus is empty")
        self._file = self.path.open("rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def _scan(self) -> Any:
        import numpy as np

        starts, position = [], 0
        with self.path.open("rb") as f:
            for line in f:
                if line.strip():
                    starts.append(position)
                position += len(line)
        return np.asarray([*starts, position], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]
        raw = self._map[int(self._offsets[i]) : int(self._offsets[i + 1])]
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{self.path}, document {i}: not JSON ({exc.msg})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("contents"), str):
            raise ValueError(f"{self.path}, document {i}: expected an object with string 'contents'")
        return doc
