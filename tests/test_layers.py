"""The package's data flow, checked from the source: data -> models -> capture -> geometry
-> compare -> interventions -> report -> study -> commands -> cli. A module imports only
modules of its own layer or a lower one (imports inside functions count too), so nothing
reaches back to an earlier stage except through saved outputs (docs/DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "emocircuits"

LAYERS = [
    {"errors", "results", "_version"},
    {"data"},
    {"models"},
    {"capture", "tables"},
    {"geometry", "plots/common", "plots/geometry", "plots/analysis", "plots/audit"},
    {"compare", "plots/compare", "plots/__init__"},
    {"interventions", "plots/steering", "plots/patching", "plots/heads"},
    {"report"},
    {"study"},
    {"__init__"},  # the public API
    {"commands", "cli", "__main__"},
]


def layer_of(parts: tuple[str, ...]) -> int:
    """The layer of module ``emocircuits.<parts>`` (a package counts as its __init__)."""
    if parts and parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    if len(parts) == 1 and (SRC / parts[0]).is_dir():
        parts = (parts[0], "__init__")
    names = ["/".join(parts[:2]), parts[0] if parts else "__init__"]
    for name in names:
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"emocircuits.{'.'.join(parts)} is in no layer of this test")


def imports(path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, module parts below emocircuits)`` of every import of emocircuits."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "emocircuits":  # from emocircuits import x: x may be a module
                names = [f"emocircuits.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "emocircuits":
                out.append((node.lineno, tuple(parts[1:])))
    return out


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_later_stage(path: Path) -> None:
    own = layer_of(path.relative_to(SRC).with_suffix("").parts)
    wrong = []
    for line, parts in imports(path):
        if not parts:  # `import emocircuits`: the public API
            target = layer_of(("__init__",))
        elif parts[0] in {p.stem for p in SRC.glob("*.py")} | {
            p.name for p in SRC.iterdir() if p.is_dir()
        }:
            target = layer_of(parts)
        else:  # from emocircuits import NAME: a name of the public API
            target = layer_of(("__init__",))
        if target > own:
            wrong.append(f"line {line}: emocircuits.{'.'.join(parts)}")
    assert not wrong, f"{path.relative_to(SRC)} reaches a later stage: {wrong}"


def test_the_layer_table_covers_every_module() -> None:
    for path in modules():
        layer_of(path.relative_to(SRC).with_suffix("").parts)
