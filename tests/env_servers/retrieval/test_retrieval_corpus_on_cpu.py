"""Corpus building from the bundled HotpotQA files, and corpus validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from env_servers.retrieval.corpus import build_hotpotqa_corpus, default_hotpotqa_sources, read_corpus, title_of


def _distinct_paragraphs(paths: list[Path]) -> set[tuple[str, str]]:
    seen = set()
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            ctx = json.loads(line)["context"]
            for title, sents in zip(ctx["title"], ctx["sentences"], strict=True):
                seen.add((title, "".join(sents).strip()))
    return seen


def test_hotpotqa_corpus_count_and_format(hotpot_corpus: Path) -> None:
    docs = read_corpus(hotpot_corpus)
    expected = _distinct_paragraphs(default_hotpotqa_sources())
    assert len(docs) == len(expected)
    assert 5500 <= len(docs) <= 6000  # 600 questions x 10 paragraphs, minus shared ones
    assert [d["id"] for d in docs] == [str(i) for i in range(len(docs))]
    got = set()
    for d in docs:
        assert set(d) == {"id", "contents"}
        title_line, text = d["contents"].split("\n", 1)
        assert title_line.startswith('"') and title_line.endswith('"')
        assert text == text.strip() and text
        got.add((title_of(d["contents"]), text))
    assert got == expected


def test_hotpotqa_corpus_paragraph_text(hotpot_corpus: Path) -> None:
    """Sentences are joined as they are (they carry their own leading spaces)."""
    first = json.loads(default_hotpotqa_sources()[0].read_text(encoding="utf-8").splitlines()[0])["context"]
    doc = read_corpus(hotpot_corpus)[0]
    assert doc["contents"] == f'"{first["title"][0]}"\n' + "".join(first["sentences"][0]).strip()


def test_every_dev_supporting_fact_is_in_the_corpus(hotpot_corpus: Path, dev_questions: list[dict]) -> None:
    paragraphs: dict[str, list[str]] = {}
    for d in read_corpus(hotpot_corpus):
        paragraphs.setdefault(title_of(d["contents"]), []).append(d["contents"])
    assert len(dev_questions) == 300
    for q in dev_questions:
        sf = q["supporting_facts"]
        for title, sent_id in zip(sf["title"], sf["sent_id"], strict=True):
            assert title in paragraphs, (q["id"], title)
            ctx = q["context"]
            sentence = ctx["sentences"][ctx["title"].index(title)][sent_id].strip()
            assert any(sentence in p for p in paragraphs[title]), (q["id"], title, sent_id)


def test_duplicate_paragraphs_are_written_once(tmp_path: Path) -> None:
    dev = default_hotpotqa_sources()[1]
    once = build_hotpotqa_corpus([dev], tmp_path / "once.jsonl")
    twice = build_hotpotqa_corpus([dev, dev], tmp_path / "twice.jsonl")
    assert once == twice == len(read_corpus(tmp_path / "twice.jsonl"))
    assert (tmp_path / "once.jsonl").read_bytes() == (tmp_path / "twice.jsonl").read_bytes()


def test_bad_hotpotqa_source_names_the_line(tmp_path: Path) -> None:
    dev_line = default_hotpotqa_sources()[1].read_text(encoding="utf-8").splitlines()[0]
    src = tmp_path / "src.jsonl"
    src.write_text(f"{dev_line}\n\n{json.dumps({'question': 'no context'})}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"src\.jsonl, line 3: .*context"):
        build_hotpotqa_corpus([src], tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


GOOD = '{"id": "a", "contents": "\\"A\\"\\ntext a"}'


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"contents": "x"}', "'id' must be a string \\(got missing\\)"),
        ('{"id": 7, "contents": "x"}', "'id' must be a string \\(got int\\)"),
        ('{"id": "b", "contents": null}', "'contents' must be a string \\(got NoneType\\)"),
        ('{"id": "a", "contents": "again"}', "duplicate id 'a' \\(first on line 1\\)"),
    ],
)
def test_read_corpus_rejects_bad_line_with_its_number(tmp_path: Path, bad_line: str, reason: str) -> None:
    path = tmp_path / "corpus.jsonl"
    # a blank line before the bad one: numbering counts physical lines, 1-based
    path.write_text(f'{GOOD}\n\n{{"id": "c", "contents": "x"}}\n{bad_line}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"corpus\.jsonl, line 4: {reason}"):
        read_corpus(path)


def test_read_corpus_skips_blank_lines_and_rejects_empty(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(f"\n{GOOD}\n   \n", encoding="utf-8")
    assert read_corpus(path) == [{"id": "a", "contents": '"A"\ntext a'}]
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_corpus(path)
