"""The ``emocircuits`` entry point: the parser of every command (emocircuits/commands/) and
the error handling.

Every user error prints one line ``emocircuits: error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from importlib import import_module

from emocircuits.commands import COMMANDS
from emocircuits.commands._common import _Parser
from emocircuits.errors import EmocircuitsError

# OS failures of the storage (full disk, quota, read-only, I/O error, file too large) that
# reach the top without a file name attached are still one line
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}

EPILOG = """examples:
  emocircuits data list
  emocircuits extract --model smollm2-135m --data extended --out runs/ext-smollm2
  emocircuits summary runs/ext-smollm2 --position mean
  emocircuits geometry --activations runs/ext-smollm2 --out runs/ext-smollm2-geometry
  emocircuits extract --data natural --out runs/nat-smollm2
  emocircuits probe --train runs/ext-smollm2 --test runs/nat-smollm2 --out probe.json
  emocircuits plot probe.json
  emocircuits compare --activations runs/ext-smollm2 runs/ext-gemma3 --out runs/cmp
"""


def build_parser() -> argparse.ArgumentParser:
    from emocircuits._version import __version__

    p = _Parser(
        prog="emocircuits",
        description="Find, compare and test how emotions are represented inside causal "
        "language models. Stages: data -> extract -> (geometry, compare, interventions).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"emocircuits {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    for name in COMMANDS:
        import_module(f"emocircuits.commands.{name}").register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EmocircuitsError as e:
        print(f"emocircuits: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("emocircuits: interrupted (an extraction resumes when re-run)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # after BrokenPipeError, itself an OSError
        if e.errno not in _STORAGE_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"emocircuits: error: {where}{e.strerror}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
