"""Write the viewer page: one self-contained HTML file (data, style, script and the mask picture inlined).

The episodes travel as one JSON document inside the page; the script renders the index (filters by reward, objectives,
context policy, termination, step) and builds an episode's turns only when it is opened (``#episode=K``), so pages of
thousands of episodes stay usable. Nothing is fetched: the page opens from disk.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from tqdm import tqdm

from verl_mem1.viewer.episode import episode_view
from verl_mem1.viewer.load import LoadedEpisode

DATA_MARK = "/*MEM1_DATA*/"


@cache
def _tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer {model!r} to decode episodes ({exc}); pass --tokenizer") from exc


def tokenizer_for(loaded: LoadedEpisode, tokenizer: str | Any | None) -> Any:
    """The given tokenizer (a path or a loaded one), else the one of the model recorded with the episode."""
    if tokenizer is not None:
        return _tokenizer(tokenizer) if isinstance(tokenizer, str | Path) else tokenizer
    if not loaded.model:
        raise ValueError(
            f"{loaded.source}: no model is recorded with this episode (no metrics.json beside it), so its token ids "
            "cannot be decoded; pass --tokenizer PATH"
        )
    return _tokenizer(str(loaded.model))


def pick_mask_episode(episodes: Sequence[LoadedEpisode], episode_id: str | None) -> int | None:
    """Index of the episode whose mask is drawn: the first with ``episode_id``, else the episode with the most turns
    that generated something, a MEM1 one if any (None when no episode generated anything)."""
    if episode_id is not None:
        for i, loaded in enumerate(episodes):
            if loaded.record.id == episode_id:
                return i
        raise ValueError(f"--mask-episode {episode_id!r}: no episode has this id")
    ranked = [
        (loaded.record.context_policy == "mem1", sum(bool(t.generated_ids) for t in loaded.record.turns), -i)
        for i, loaded in enumerate(episodes)
    ]
    _, turns, negative_index = max(ranked)
    return -negative_index if turns > 0 else None


def write_page(
    episodes: Sequence[LoadedEpisode],
    out_dir: str | Path,
    *,
    tokenizer: str | Any | None = None,
    mask_episode: str | None = None,
    title: str = "MEM1 episodes",
    progress: bool = True,
) -> Path:
    """Write ``out_dir/index.html`` (and the mask picture as ``out_dir/mask.png``); return the page's path.

    Raises ``ValueError`` when an episode's tokens cannot be decoded (no tokenizer) or ``mask_episode`` names none.
    """
    from verl_mem1.viewer.mask import draw_mask

    views = []
    for key, loaded in enumerate(tqdm(episodes, desc="episodes", unit="ep", disable=not progress)):
        decoder = tokenizer_for(loaded, tokenizer)
        try:
            views.append(episode_view(loaded, decoder, key))
        except (TypeError, ValueError, KeyError, IndexError) as exc:  # a record with fields of the wrong shape
            raise ValueError(f"{loaded.source}: cannot show this episode ({type(exc).__name__}: {exc})") from exc
    chosen = pick_mask_episode(episodes, mask_episode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)  # only once every episode could be shown
    mask = None
    if chosen is not None:
        png = draw_mask(episodes[chosen].record, out / "mask.png")
        encoded = base64.b64encode(png.read_bytes()).decode("ascii")
        mask = {"key": chosen, "id": episodes[chosen].record.id, "png": f"data:image/png;base64,{encoded}"}
    data = {"title": title, "episodes": views, "mask": mask}
    # neither "</" nor "<!--" may appear inside the script element: JSON spells them "<\/" and "<\u0021--"
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\u0021--")
    template = resources.files("verl_mem1.viewer").joinpath("page.html").read_text(encoding="utf-8")
    page = out / "index.html"
    page.write_text(template.replace("MEM1_TITLE", _escape(title)).replace(DATA_MARK, payload), encoding="utf-8")
    return page


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report_page(run_dirs: Sequence[str | Path], report_dir: str | Path) -> str:
    """The episode page of ``mem1 eval`` runs beside their report: ``report_dir/view/index.html``, linked from
    ``report_dir/report.md``. Returns a line saying where it is, or why it could not be made (the report stands
    without it: e.g. runs whose metrics.json names no model cannot be decoded)."""
    from verl_mem1.viewer.load import load_episodes

    report = Path(report_dir) / "report.md"
    try:
        page = write_page(load_episodes(run_dirs), Path(report_dir) / "view", title="MEM1 evaluation", progress=False)
    except (FileNotFoundError, ValueError) as exc:
        return f"no episode page: {exc}"
    if report.exists():
        with report.open("a", encoding="utf-8") as fh:
            fh.write(
                "\nEpisodes, turn by turn (what each context kept and dropped): [view/index.html](view/index.html)\n"
            )
    return f"episode page: {page}"
