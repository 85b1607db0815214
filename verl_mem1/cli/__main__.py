"""``python -m verl_mem1.cli``: the ``mem1`` command."""

import sys

from verl_mem1.cli import main

sys.exit(main())
