"""``mem1 --help`` stays light: building the parser imports no deep-learning or verl code."""

from __future__ import annotations

import subprocess
import sys


def test_building_the_cli_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from verl_mem1.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'verl', 'faiss', 'fastapi', 'ray') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
