"""Arguments the RQ1 commands share, with their defaults read from the library function
the command calls (``_common._add_reading_args`` writes them out instead)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from emocircuits.commands._common import lib_default


def add_reading_args(p: argparse.ArgumentParser, fn: Callable[..., Any]) -> None:
    """Which activations an analysis reads: ``--site``, ``--position``, ``--baseline``."""
    p.add_argument(
        "--site", default=lib_default(fn, "site"), help="resid, attn, mlp (default %(default)s)"
    )
    p.add_argument(
        "--position",
        default=lib_default(fn, "position"),
        help="position rule (default mean if captured, else the first)",
    )
    p.add_argument(
        "--baseline",
        default=lib_default(fn, "baseline"),
        help="baseline label (default %(default)s)",
    )
