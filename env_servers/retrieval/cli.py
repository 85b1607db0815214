"""``mem1 corpus|index|serve`` subcommands for the retrieval server.

Only argparse is imported at module level: ``verl_mem1.cli`` imports this module to build ``mem1 --help``,
so bm25s, faiss, torch and fastapi are imported inside the handlers that need them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from env_servers.serve_options import add_server_options, server_settings

EXIT_USAGE = 2
DEFAULT_PORT = 8000


def _guarded(prog: str, run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report expected failures (bad input files, missing index) as one stderr line and exit code 2."""

    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ValueError, OSError, RuntimeError) as e:  # FileNotFoundError is an OSError
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_USAGE

    return handler


def _corpus_hotpotqa(args: argparse.Namespace) -> int:
    from env_servers.retrieval.corpus import build_hotpotqa_corpus

    sources = [Path(s) for s in args.source] if args.source else None
    n = build_hotpotqa_corpus(sources, Path(args.out))
    print(f"wrote {n} paragraphs to {args.out}")
    return 0


def _index_build(args: argparse.Namespace) -> int:
    from env_servers.retrieval.index import build_index

    out = build_index(
        Path(args.corpus),
        Path(args.out),
        args.encoder,
        faiss_index=args.faiss_index,
        batch_size=args.batch_size,
        max_length=args.max_length,
        device=args.device,
        show_progress=not args.quiet,
        shard_size=args.shard_size,
        train_size=args.train_size,
        keep_vectors=args.keep_vectors,
        vectors_from=Path(args.from_faiss) if args.from_faiss else None,
    )
    print(f"wrote {args.encoder} index to {out}")
    return 0


def _serve_retrieval(args: argparse.Namespace) -> int:
    from functools import partial

    search_r1 = (args.faiss_index, args.corpus, args.encoder)
    if args.index is not None and any(search_r1):
        raise ValueError("give --index DIR, or Search-R1's --faiss-index FILE --corpus FILE --encoder NAME, not both")
    if args.index is None and not all(search_r1):
        raise ValueError("give --index DIR, or all of --faiss-index FILE --corpus FILE --encoder NAME")
    if args.max_batch_queries < 0 or args.batch_window_ms < 0 or (args.threads is not None and args.threads < 1):
        raise ValueError("--max-batch-queries and --batch-window-ms must be >= 0 and --threads >= 1")
    if args.faiss_gpus is not None and args.faiss_gpus < 0:
        raise ValueError("--faiss-gpus must be >= 0")
    if args.index is not None:
        from env_servers.retrieval.index import read_meta

        read_meta(Path(args.index))  # fail fast with a clear message before importing the server stack
        from env_servers.retrieval.index import load_retriever

        load = partial(load_retriever, Path(args.index), device=args.device, mmap=args.mmap, faiss_gpus=args.faiss_gpus)
    else:
        for path in (args.faiss_index, args.corpus):
            if not Path(path).is_file():
                raise FileNotFoundError(f"file not found: {path}")
        from env_servers.retrieval.index import load_search_r1_retriever

        load = partial(
            load_search_r1_retriever,
            Path(args.faiss_index),
            Path(args.corpus),
            args.encoder,
            pooling=args.pooling,
            max_length=args.query_max_length,
            device=args.device,
            mmap=args.mmap,
            faiss_gpus=args.faiss_gpus,
        )
    from env_servers.retrieval.server import serve

    serve(
        load,
        max_queries=args.max_queries,
        max_topk=args.max_topk,
        max_batch_queries=args.max_batch_queries,
        batch_window_ms=args.batch_window_ms,
        threads=args.threads,
        **server_settings(args),
    )
    return 0


def add_corpus_commands(subparsers: Any) -> None:
    """Add ``hotpotqa`` to ``mem1 corpus``."""
    p = subparsers.add_parser(
        "hotpotqa",
        help="pool HotpotQA context paragraphs into a corpus JSONL",
        description=(
            "Write one {id, contents} line per distinct paragraph of HotpotQA files, contents being "
            '"Title"\\ntext (Search-R1\'s wiki format). Without --source, uses the bundled train and dev samples '
            "(about 5900 paragraphs)."
        ),
    )
    p.add_argument(
        "--source",
        nargs="+",
        action="extend",
        metavar="FILE",
        help="HotpotQA JSONL file(s) with a `context` field (default: the bundled train.jsonl and dev.jsonl)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="corpus JSONL to write")
    p.set_defaults(func=_guarded("mem1 corpus hotpotqa", _corpus_hotpotqa))


def add_index_commands(subparsers: Any) -> None:
    """Add ``build`` to ``mem1 index``."""
    p = subparsers.add_parser(
        "build",
        help="build a BM25 or dense (faiss) index directory from a corpus JSONL",
        description=(
            "Index a corpus JSONL ({id, contents} per line) into a self-contained directory that "
            "`mem1 serve retrieval --index DIR` serves."
        ),
    )
    p.add_argument("--corpus", required=True, metavar="FILE", help="corpus JSONL ({id, contents} per line)")
    p.add_argument("--out", required=True, metavar="DIR", help="index directory to write")
    p.add_argument(
        "--encoder",
        default="bm25",
        metavar="ENCODER",
        help="'bm25' (sparse, default) or a Hugging Face encoder name or local path, e.g. intfloat/e5-base-v2 (dense)",
    )
    p.add_argument(
        "--faiss-index",
        default="flat",
        metavar="KIND",
        help="dense only: exact inner product (flat, default), HNSW graph (hnsw), IVF with ~sqrt(N) lists (ivf), or "
        "any faiss factory string for a compressed index, e.g. 'IVF4096,PQ64' or 'HNSW32,SQ8' (trained on the corpus)",
    )
    p.add_argument(
        "--batch-size", type=int, default=64, metavar="N", help="dense only: passages per encoder batch (default 64)"
    )
    p.add_argument(
        "--max-length", type=int, default=256, metavar="N", help="dense only: tokens kept per passage (default 256)"
    )
    p.add_argument("--device", default=None, metavar="DEVICE", help="dense only: cpu or cuda (default: cuda if any)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=500_000,
        metavar="N",
        help="dense only: passages encoded per shard (default 500000); each finished shard is kept in DIR/vectors/, "
        "so the same command run again after an interruption resumes after the last finished shard",
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=200_000,
        metavar="N",
        help="dense only: vectors drawn at random to train an IVF/PQ/SQ index (default 200000)",
    )
    p.add_argument(
        "--keep-vectors",
        action="store_true",
        help="dense only: keep DIR/vectors/ after the build, so another --faiss-index builds without encoding again",
    )
    p.add_argument(
        "--from-faiss",
        default=None,
        metavar="FILE",
        help="dense only: take the vectors from an exact inner-product faiss index over the same corpus in the same "
        "order (Search-R1's e5_Flat.index) instead of encoding: e.g. compress it with --faiss-index IVF4096,SQ8; "
        "--encoder names the model that made them",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_guarded("mem1 index build", _index_build))


def add_serve_command(subparsers: Any) -> None:
    """Add ``retrieval`` to ``mem1 serve``."""
    p = subparsers.add_parser(
        "retrieval",
        help="serve an index over Search-R1's HTTP API (POST /retrieve, GET /health)",
        description=(
            'Serve an index directory. POST /retrieve {"queries": [...], "topk": 3, "return_scores": true} '
            'returns {"result": [[{"document": {"id", "contents"}, "score"}, ...], ...]}.'
        ),
    )
    p.add_argument("--index", default=None, metavar="DIR", help="index directory written by `mem1 index build`")
    p.add_argument(
        "--faiss-index", default=None, metavar="FILE", help="Search-R1's faiss index as it is (e.g. e5_Flat.index)"
    )
    p.add_argument(
        "--corpus", default=None, metavar="FILE", help="with --faiss-index: its corpus JSONL (e.g. wiki-18.jsonl)"
    )
    p.add_argument(
        "--encoder",
        default=None,
        metavar="NAME",
        help="with --faiss-index: the encoder it was built with "
        "(e.g. intfloat/e5-base-v2; E5 and BGE get their query prefixes, as in Search-R1)",
    )
    p.add_argument(
        "--pooling",
        choices=("mean", "cls"),
        default=None,
        help="with --faiss-index: default by family, BGE cls, else mean",
    )
    p.add_argument(
        "--query-max-length", type=int, default=256, metavar="N", help="with --faiss-index: query tokens (default 256)"
    )
    p.add_argument("--device", default=None, metavar="DEVICE", help="dense only: query encoder device (cpu or cuda)")
    p.add_argument(
        "--mmap",
        action="store_true",
        help="dense only: memory-map the faiss index instead of reading it into memory (an index larger than RAM "
        "serves, from the page cache)",
    )
    p.add_argument("--max-queries", type=int, default=256, metavar="N", help="most queries per request (default 256)")
    p.add_argument("--max-topk", type=int, default=100, metavar="N", help="largest topk accepted (default 100)")
    p.add_argument(
        "--faiss-gpus",
        type=int,
        default=None,
        metavar="N",
        help="dense only: GPUs the faiss index is split across, each holding 1/N of the vectors (0: search on the "
        "CPU; default: every GPU faiss sees when the encoder runs on CUDA; needs faiss-gpu, the gpu extra)",
    )
    p.add_argument(
        "--max-batch-queries",
        type=int,
        default=64,
        metavar="N",
        help="most queries of concurrent requests encoded and searched together (default 64; 0: each request alone)",
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=1.0,
        metavar="MS",
        help="how long a search waits for more requests to join it (default 1.0)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="dense only: the query encoder's torch threads (default: torch's, one per core)",
    )
    add_server_options(p, DEFAULT_PORT)
    p.set_defaults(func=_guarded("mem1 serve retrieval", _serve_retrieval))
