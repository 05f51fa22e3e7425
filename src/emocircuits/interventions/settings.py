"""The recommended steering settings, saved next to the vectors they were found for.

``steer-sweep`` finds a (layer, alpha) per emotion (:mod:`~emocircuits.interventions.sweep`)
and merges it into the vectors' settings file (``v.safetensors`` -> ``v.steer.json``),
keyed by the model's revision and dtype (greedy text depends on both) and, for a chat-mode
sweep, its chat mode and system prompt; ``steer`` without a layer and alpha reads it back.

>>> settings_path("runs/v.safetensors").as_posix()
'runs/v.steer.json'
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emocircuits.errors import DataError
from emocircuits.interventions.inputs import as_list

if TYPE_CHECKING:
    from emocircuits.interventions.sweep import Recommendation


def settings_path(vectors_path: str | os.PathLike[str]) -> Path:
    """Where a vectors file's recommended settings live: ``v.safetensors`` -> ``v.steer.json``."""
    from emocircuits.geometry.vectors import safetensors_path

    p = safetensors_path(vectors_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".steer.json")


def model_key(
    provenance: dict[str, Any], chat: str | None = None, system: str | None = None
) -> str:
    """Settings are per model weights and dtype (greedy text depends on both), and per chat
    mode and system prompt (raw-text keys are as they always were).

    >>> model_key({"name": "m", "dtype": "float32"}, "user")
    'm|float32|chat=user'
    """
    import hashlib

    rev = provenance.get("revision") or provenance.get("name")
    key = f"{rev}|{provenance.get('dtype', 'float32')}"
    if chat is not None:
        key += f"|chat={chat}"
    if system is not None:
        key += f"|system={hashlib.sha256(system.encode('utf-8')).hexdigest()[:12]}"
    return key


def require_setting(
    vectors_path: str | os.PathLike[str], layer: Any = None, alpha: Any = None
) -> None:
    """Without ``layer`` and ``alpha`` a steer needs the settings file of ``steer-sweep``;
    refuse early (before a model loads) if there is none."""
    if (not as_list(layer) or not as_list(alpha)) and not settings_path(vectors_path).is_file():
        raise DataError(
            f"no --layer/--alpha given and no recommended settings "
            f"({settings_path(vectors_path)}); run `emocircuits steer-sweep --vectors "
            f"{vectors_path}` first, or give --layer and --alpha"
        )


def load_recommendation(
    vectors_path: str | os.PathLike[str],
    provenance: dict[str, Any],
    emotion: str,
    *,
    chat: str | None = None,
    system: str | None = None,
) -> dict[str, Any]:
    """The saved recommended setting of ``emotion`` for this model (and chat mode and
    system prompt), or a clear error."""
    path = settings_path(vectors_path)
    mode = f" --chat {chat}" if chat else ""
    hint = f"run `emocircuits steer-sweep --model ... --vectors {vectors_path}{mode}` first"
    if not path.is_file():
        raise DataError(f"no --layer/--alpha given and no recommended settings ({path}); {hint}")
    try:
        data = json.loads(path.read_text("utf-8"))
        entry = data["models"][model_key(provenance, chat, system)]
    except json.JSONDecodeError:
        raise DataError("not a steer-settings JSON file", where=str(path)) from None
    except KeyError:
        raise DataError(
            f"{path} has no settings for this model ({model_key(provenance, chat, system)}); {hint}"
        ) from None
    if emotion not in entry["emotions"]:
        raise DataError(f"{path} has no setting for {emotion!r} on this model; {hint}")
    return entry["emotions"][emotion]


def save_recommendations(
    vectors_path: str | os.PathLike[str],
    provenance: dict[str, Any],
    recs: dict[str, Recommendation],
    evidence: dict[str, Any],
) -> Path:
    """Merge ``recs`` into the vectors' settings file (other models' entries are kept),
    under the chat mode and system prompt the sweep ran with (``evidence``)."""
    from emocircuits.capture.store import atomic_write_json

    path = settings_path(vectors_path)
    data: dict[str, Any] = {"format": "emocircuits.steer-settings", "version": 1, "models": {}}
    if path.is_file():
        try:
            old = json.loads(path.read_text("utf-8"))
            data["models"] = dict(old.get("models", {}))
        except (json.JSONDecodeError, AttributeError):
            raise DataError("not a steer-settings JSON file", where=str(path)) from None
    key = model_key(provenance, evidence.get("chat"), evidence.get("system"))
    entry = data["models"].get(key, {"model": provenance, "emotions": {}})
    entry["model"] = provenance
    for e, r in recs.items():
        entry["emotions"][e] = {**asdict(r), "evidence": evidence}
    data["models"][key] = entry
    atomic_write_json(path, data)
    return path


def setting_of(setting: Any, emotion: str) -> dict[str, Any]:
    """A recommendation as a dict, from a sweep result, a recommendation or a dict."""
    if hasattr(setting, "recommendations"):  # a SweepResult
        if emotion not in setting.recommendations:
            raise DataError(f"the sweep has no setting for {emotion!r}")
        setting = setting.recommendations[emotion]
    if is_dataclass(setting):
        setting = asdict(setting)  # type: ignore[arg-type]
    if not isinstance(setting, dict) or not {"layer", "alpha"} <= set(setting):
        raise DataError("setting= must be a SweepResult, a Recommendation or a dict with "
                        "layer and alpha")  # fmt: skip
    return setting
