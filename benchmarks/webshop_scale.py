"""WebShop at full scale: `mem1 serve webshop` over a synthetic catalogue of 100k and 1M products.

Users serve WebShop's 1,000-product file and its full 1.18M-product set (``items_shuffle.json``, a 5 GB JSON array, with
``items_ins_v2.json``). Without that data here, a catalogue of the same shape is generated from the bundled 100
products: each copy gets a brand word (one of 20,000 made-up words) and a style word in its title, its description's
sentences shuffled, a random non-empty subset of each option's values, and its price scaled by 0.5-2x; a copy of a
product with a synthetic instruction keeps it (44% of products, as in the bundled subset), so goals number ~5 per
product as in WebShop. The files are written once per size, in WebShop's raw formats, under ``--data``.

For each size the server is started as users start it, and measured: time until ``/health`` answers (its breakdown
from ``/health``'s ``load_s``: products read and stored, goals made, search index built), peak resident memory
(``VmHWM``), then ``--clients`` concurrent clients each open a session and search with distinct goal instructions
(``search[...]`` then ``click[back to search]``; distinct so the search cache never answers), recording each search's
latency, and the time to open a session (a goal drawn with WebShop's weights). ``--baseline REPO`` runs the same on
another checkout of the project in the same run (e.g. ``git worktree add /tmp/before <commit>``), for the ratios.

    .venv/bin/python benchmarks/webshop_scale.py --sizes 100000 1000000 --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from loadtest import http_session, start_server  # noqa: E402

from env_servers.background import free_port  # noqa: E402
from env_servers.webshop.data import BUNDLED_ATTRIBUTES, BUNDLED_PRODUCTS  # noqa: E402

RAW_FIELDS = ("Title", "Description", "BulletPoints", "Price", "options", "option_to_image", "MainImage", "Attributes")
STYLES = ("Premium", "Classic", "Deluxe", "Essential", "Pro", "Lite", "Plus", "Select", "Original", "Ultra")


def brand_words(n: int, rng: random.Random) -> list[str]:
    syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))).capitalize())
    return sorted(words)


def write_catalogue(n: int, data_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """``items_{n}.json`` (raw products, a JSON array like items_shuffle.json) and ``attrs_{n}.json``
    (like items_ins_v2.json) in ``data_dir``; kept when already there."""
    products_path, attributes_path = data_dir / f"items_{n}.json", data_dir / f"attrs_{n}.json"
    if products_path.exists() and attributes_path.exists():
        return products_path, attributes_path
    from tqdm import tqdm

    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    brands = brand_words(20_000, rng)
    bases = [json.loads(line)["product"] for line in BUNDLED_PRODUCTS.read_text(encoding="utf-8").splitlines()]
    base_attributes = json.loads(BUNDLED_ATTRIBUTES.read_text(encoding="utf-8"))
    attributes: dict[str, Any] = {}
    tmp = products_path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write("[\n")
        for k in tqdm(range(n), desc=f"writing {n:,} products", unit=" products", mininterval=5):
            base = bases[k % len(bases)]
            asin = f"X{k:09d}"
            brand, style = rng.choice(brands), rng.choice(STYLES)
            product = {key: value for key, value in base.items() if key not in RAW_FIELDS}
            product["asin"] = asin
            product["name"] = f"{brand} {style} {base['name']}"
            sentences = re.split(r"(?<=\.) ", base.get("full_description") or "")
            rng.shuffle(sentences)
            product["full_description"] = f"{brand} {style}. " + " ".join(sentences)
            options = {}
            for name, values in (base.get("customization_options") or {}).items():
                if values:
                    keep = sorted(rng.sample(range(len(values)), rng.randint(1, len(values))))
                    options[name] = [values[i] for i in keep]
            product["customization_options"] = options or ""
            factor = rng.uniform(0.5, 2.0)
            product["pricing"] = " - ".join(f"${round(float(p) * factor, 2)}" for p in base["pricing"])
            f.write(json.dumps(product))
            f.write(",\n" if k < n - 1 else "\n")
            entry = dict(base_attributes.get(base["asin"]) or {"attributes": []})
            attributes[asin] = entry
        f.write("]\n")
    attributes_path.write_text(json.dumps(attributes), encoding="utf-8")
    tmp.rename(products_path)
    return products_path, attributes_path


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


async def search_load(url: str, instructions: list[str], clients: int) -> dict[str, Any]:
    """``clients`` workers, each with a session, searching the instructions (each once) until none are left."""
    queue = list(reversed(instructions))
    search_ms: list[float] = []
    open_ms: list[float] = []
    errors = 0
    session, call = http_session("aiohttp", url, clients)

    async def worker() -> None:
        nonlocal errors
        start = time.perf_counter()
        status, body = await call("POST", "/sessions", {"goal_index": None})
        open_ms.append((time.perf_counter() - start) * 1000)
        if status != 200:
            errors += 1
            return
        sid = body["session_id"]
        while queue:
            query = queue.pop()
            start = time.perf_counter()
            status, page = await call("POST", f"/sessions/{sid}/step", {"action": f"search[{query}]"})
            search_ms.append((time.perf_counter() - start) * 1000)
            if status != 200 or not page.get("valid"):
                errors += 1
            status, _ = await call("POST", f"/sessions/{sid}/step", {"action": "click[back to search]"})
            errors += status != 200
        await call("DELETE", f"/sessions/{sid}", None)

    start = time.perf_counter()
    async with session:
        await asyncio.gather(*(worker() for _ in range(clients)))
    seconds = time.perf_counter() - start
    ordered = sorted(search_ms)

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")

    return {
        "searches": len(search_ms),
        "errors": errors,
        "searches_per_s": len(search_ms) / seconds,
        "search_p50_ms": pct(ordered, 50),
        "search_p99_ms": pct(ordered, 99),
        "open_session_p50_ms": pct(sorted(open_ms), 50),
    }


def measure(repo: Path, products: Path, attributes: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    start = time.perf_counter()
    proc = start_server(
        ["webshop", "--products", str(products), "--attributes", str(attributes)], port, timeout=args.timeout, repo=repo
    )
    startup = time.perf_counter() - start
    url = f"http://127.0.0.1:{port}"
    try:
        health = httpx.get(f"{url}/health", timeout=30).json()
        loaded = memory_kib(proc.pid)
        goals: list[str] = []
        while len(goals) < args.searches:
            page = httpx.get(f"{url}/goals", params={"offset": len(goals), "limit": 1000}, timeout=60).json()
            goals += [g["instruction"] for g in page["goals"]]
            if not page["goals"]:
                break
        load = asyncio.run(search_load(url, goals[: args.searches], args.clients))
        after = memory_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {
        "products": health["products"],
        "goals": health["goals"],
        "file_mb": products.stat().st_size / 2**20,
        "startup_s": startup,
        "load_s": health.get("load_s", {}),
        "rss_loaded_gb": loaded["VmRSS"] / 2**20,
        "peak_rss_gb": max(loaded["VmHWM"], after["VmHWM"]) / 2**20,
        **load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="catalogue sizes")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--searches", type=int, default=2000, help="searches per size (distinct goal instructions)")
    parser.add_argument("--data", type=Path, default=REPO / "outputs" / "webshop_scale", help="catalogue files")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to measure beside this one")
    parser.add_argument("--baseline-sizes", type=int, nargs="*", default=None, help="sizes for the baseline")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds a server may take to start")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.clients} clients")
    runs = []
    for n in args.sizes:
        products, attributes = write_catalogue(n, args.data)
        checkouts = [("this", REPO)]
        if args.baseline and (args.baseline_sizes is None or n in args.baseline_sizes):
            checkouts.append(("baseline", args.baseline))
        for name, repo in checkouts:
            result = {"checkout": name, "size": n, **measure(repo, products, attributes, args)}
            runs.append(result)
            print(json.dumps(result), flush=True)
    header = (
        "| checkout | products | goals | file | start | read products | make goals | search index | peak RSS | "
        "search p50 | search p99 | searches/s | open p50 | errors |"
    )
    print("\n" + header + "\n|" + "---|" * (header.count("|") - 1))
    for r in runs:
        parts = [f"{r['load_s'][k]:.1f} s" if k in r["load_s"] else "—" for k in ("products", "goals", "search_index")]
        print(
            f"| {r['checkout']} | {r['products']:,} | {r['goals']:,} | {r['file_mb']:,.0f} MB | {r['startup_s']:.0f} s "
            f"| {' | '.join(parts)} | {r['peak_rss_gb']:.2f} GB | {r['search_p50_ms']:.0f} ms | "
            f"{r['search_p99_ms']:.0f} ms | {r['searches_per_s']:.0f} | {r['open_session_p50_ms']:.0f} ms | "
            f"{r['errors']} |"
        )
    for n in args.sizes:
        pair = {r["checkout"]: r for r in runs if r["size"] == n}
        if len(pair) == 2:
            this, base = pair["this"], pair["baseline"]
            print(
                f"\n{n:,} products, this / baseline: start {this['startup_s'] / base['startup_s']:.2f}x, "
                f"peak RSS {this['peak_rss_gb'] / base['peak_rss_gb']:.2f}x, "
                f"search p99 {this['search_p99_ms'] / base['search_p99_ms']:.2f}x"
            )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
