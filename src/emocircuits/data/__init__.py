"""Data: the JSONL schema, validation, shipped presets."""

from emocircuits.data.dataset import (
    BASELINE_LABEL,
    Dataset,
    Example,
    check_counts,
    load_dataset,
    parse_jsonl,
    preset_index,
    preset_version,
    presets,
    resolve,
)

__all__ = [
    "BASELINE_LABEL",
    "Dataset",
    "Example",
    "check_counts",
    "load_dataset",
    "parse_jsonl",
    "preset_index",
    "preset_version",
    "presets",
    "resolve",
]
