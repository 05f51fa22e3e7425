"""GPU check: the library on CUDA, against the CPU and against plain transformers calls.

One run (planned for well under 9 minutes on one H100/H200) measures, in one process:

1. **Accuracy on the device.** Each built-in model (``smollm2-135m``, ``gemma3-270m``) is
   loaded with ``emocircuits.load_model`` on the CPU in float32 (the reference), on the
   device in float32 and in bfloat16, and on the CPU in bfloat16 (what bfloat16 arithmetic
   alone does to this model). ``emocircuits.capture`` reads the residual stream of every
   layer at every token (``all``) of the same texts. Per layer: the largest relative error
   ``|a - b| / |b|`` over tokens and the smallest per-token cosine.
2. **A model of Llama-3-8B's shape** (hidden 4096, 32 layers, 32 heads, 8 KV heads,
   intermediate 14336, vocabulary 128256), random weights built directly in bfloat16 on the
   device (no download), wrapped as a ``LoadedModel``:
   - capture (``emocircuits.extract``: ~256 sentences, every residual layer, ``mean``
     position) against a plain forward pass of the same batches (``model(...)`` with the LM
     head, ``use_cache=False``, no hooks; tokenisation in both arms);
   - steered ``generate_text`` (``emocircuits.steering`` at one layer, a direction from
     ``emocircuits.directions`` of that capture) against plain ``generate_text``, same
     prompts, 32 new tokens;
   - peak GPU memory of each arm;
   - the same weights saved to a local folder and loaded with ``emocircuits.load_model(...,
     device_map="auto", max_memory=...)`` so that part of the layers is on the CPU: the same
     activations within bfloat16 tolerance, and its capture throughput against the unsplit
     model.
3. A markdown table on stdout and, with ``--out``, a JSON file with every number, the
   device's name and the torch / transformers versions.

Arms alternate within each repeat (order flipped every repeat); the ratio is the median
over repeats of ``baseline seconds / method seconds`` (> 1: the method is faster). Targets
(issue 15): capture >= 1.1x the plain forward pass (the LM head is skipped), steered
generation >= 0.95x plain generation.

Tolerances follow from the arithmetic (``u``: unit roundoff, 2**-24 for float32, 2**-8 for
bfloat16; ``l``: the residual layer, ``K``: the widest matrix product's inner dimension):

- float32 on the device vs the CPU: the two differ only in summation order. A dot product
  of length K rounds to about ``sqrt(K) u`` relative error (random rounding), and the
  errors of successive blocks add like a random walk: ``16 sqrt(l + 1) sqrt(K) u``.
- bfloat16 vs CPU float32: products accumulate in float32, so the error is the rounding of
  weights and stored activations to bfloat16, about ``u`` per block, added over blocks:
  ``4 sqrt(l + 1) u``; or, where this model amplifies rounding more, up to twice what
  bfloat16 does on the CPU in the same run (printed as the reference).
- split vs unsplit (the same dtype, the same weights): the bfloat16 bound.

    python bench/bench_gpu.py --out gpu.json                  # on a CUDA machine
    python bench/bench_gpu.py --tiny --device cpu --out t.json  # the same code, tiny, CPU

``--tiny`` runs every step with a tiny Llama config (the accuracy step on a tiny random
float32 model instead of the built-ins); on the CPU the split puts part of the layers on
disk (``offload_folder``) instead of the CPU. Without CUDA the script refuses unless
``--tiny --device cpu``.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAPTURE_TARGET = 1.1
STEER_TARGET = 0.95
U32, U16 = 2.0**-24, 2.0**-8
BUILTIN_MODELS = ("smollm2-135m", "gemma3-270m")
LLAMA3_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
TINY_LLAMA = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------- setup


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny Llama config (tests the script)")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (with --tiny)")
    p.add_argument("--out", type=Path, help="write every number to this JSON file")
    p.add_argument("--rows", type=int, help="sentences captured (default 256; tiny 32)")
    p.add_argument("--accuracy-texts", type=int, help="texts of step 1 (default 48; tiny 8)")
    p.add_argument("--prompts", type=int, help="prompts generated from (default 16; tiny 4)")
    p.add_argument("--new-tokens", type=int, help="generated per prompt (default 32; tiny 8)")
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float32"),
        help="of the Llama-shaped model (default bfloat16; float32 with --device cpu, where "
        "bfloat16 matrix products are slow)",
    )
    p.add_argument("--batch-size", type=int, help="capture batch size (default 32; tiny 8)")
    p.add_argument("--repeats", type=int, help="timed repeats per comparison (default 10)")
    p.add_argument(
        "--gpu-share",
        type=float,
        default=0.5,
        help="fraction of the weights' bytes the split run may keep on the device",
    )
    p.add_argument("--models", default=",".join(BUILTIN_MODELS), help="models of step 1")
    p.add_argument("--workdir", type=Path, help="local folder for the saved model (a temp dir)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    a = p.parse_args(argv)
    tiny = a.tiny
    a.rows = a.rows or (32 if tiny else 256)
    a.accuracy_texts = a.accuracy_texts or (8 if tiny else 48)
    a.prompts = a.prompts or (4 if tiny else 16)
    a.batch_size = a.batch_size or (8 if tiny else 32)
    a.new_tokens = a.new_tokens or (8 if tiny else 32)
    a.repeats = a.repeats or (1 if tiny else 10)
    a.dtype = a.dtype or ("float32" if a.device == "cpu" else "bfloat16")
    return a


def refuse(msg: str) -> int:
    print(f"bench_gpu.py: {msg}", file=sys.stderr)
    return 2


def check_args(args: argparse.Namespace) -> str | None:
    """None if the arguments and the device can be used, else the one-line reason."""
    import torch

    if not 0 < args.gpu_share < 1:
        return (
            f"--gpu-share must be between 0 and 1 (a fraction of the weights), not {args.gpu_share}"
        )
    for name in ("rows", "accuracy_texts", "prompts", "new_tokens", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1, not {getattr(args, name)}"
    if args.rows < 8:
        return f"--rows must be >= 8 (every label needs rows for a direction), not {args.rows}"
    dev = args.device
    if dev == "cpu":
        return None if args.tiny else "--device cpu is only for --tiny (the check is for CUDA)"
    if not dev.startswith("cuda"):
        return f"unknown --device {dev!r}: use cuda, cuda:N, or cpu with --tiny"
    if not torch.cuda.is_available():
        return (
            f"no CUDA device (torch {torch.__version__} sees none); run this on a CUDA "
            "machine, or test the script with --tiny --device cpu"
        )
    return None


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out: dict[str, Any] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "accelerate", "tokenizers", "emocircuits"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["cuda"] = torch.version.cuda
    return out


def machine(device: str) -> dict[str, Any]:
    import torch
    from _machine import cpu_model

    info: dict[str, Any] = {
        "device": device,
        "device_name": "cpu",
        "gpu_memory_gib": None,
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info["device_name"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["bf16_reduced_precision_reduction"] = (
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
        )
    return info


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def train_tokenizer(texts: Sequence[str], vocab: int) -> Any:
    """A byte-level BPE trained on ``texts`` (no download); adds ``<bos>`` like Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


def llama_config(shape: dict[str, Any], tok: Any) -> Any:
    from transformers import LlamaConfig

    cfg = LlamaConfig(**shape)
    cfg.pad_token_id, cfg.bos_token_id = tok.pad_token_id, tok.bos_token_id
    cfg.eos_token_id = tok.eos_token_id
    return cfg


def random_llama(cfg: Any, dtype: Any, device: str, seed: int = 0) -> Any:
    """A randomly initialised ``LlamaForCausalLM`` built directly on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval()


def wrap(model: Any, tok: Any, name: str, device: str) -> Any:
    """An in-memory transformers model as a ``LoadedModel`` (the library has no wrapping
    function; these are the fields ``load_model`` fills)."""
    import emocircuits as ec

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    prov = {"name": name, "source": "in-memory", "device": device, "dtype": dtype}
    return ec.LoadedModel(model, tok, ec.architecture(model), prov)


def input_device(lm: Any) -> Any:
    """Where input ids go: ``lm.input_device`` where the library has it."""
    dev = getattr(lm, "input_device", None)
    return dev if dev is not None else lm.model.get_input_embeddings().weight.device


def sub_dataset(n: int) -> Any:
    """``n`` evenly spaced rows of the ``extended`` preset (every label kept)."""
    from _machine import spread

    import emocircuits as ec

    full = ec.load_dataset("extended")
    idx = spread(len(full), n)
    examples = tuple(full.examples[i] for i in idx)
    body = "".join(json.dumps(e.to_json()) + "\n" for e in examples).encode()
    source = f"extended ({len(idx)} evenly spaced of {len(full)} rows)"
    return ec.Dataset(examples, source, hashlib.sha256(body).hexdigest())


# --------------------------------------------------------------------------- measuring


def peak_memory(fn: Callable[[], Any], device: str) -> tuple[Any, float | None, float | None]:
    """Run ``fn`` once; its result, peak allocated GiB on the device, and the part of that
    above what was allocated before (None, None on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return fn(), None, None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return out, round(peak / 2**30, 3), round((peak - before) / 2**30, 3)


def interleaved(
    arms: dict[str, Callable[[], Any]], repeats: int, device: str
) -> dict[str, list[float]]:
    """Seconds of each arm per repeat, arms alternating (order flipped every repeat)."""
    names = list(arms)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            arms[name]()
            sync(device)
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def ratio_stats(base: list[float], method: list[float]) -> dict[str, float]:
    """Median, min and max over repeats of ``base / method`` (> 1: method faster)."""
    r = [b / m for b, m in zip(base, method, strict=True)]
    return {"ratio": statistics.median(r), "ratio_min": min(r), "ratio_max": max(r)}


def compare(a: np.ndarray, ref: np.ndarray) -> dict[str, list[float]]:
    """Per layer: max over rows of ``|a - ref| / |ref|`` and min over rows of the cosine.
    ``a``, ``ref``: ``[rows, layers, width]``."""
    a64, r64 = a.astype(np.float64), ref.astype(np.float64)
    na, nr = np.linalg.norm(a64, axis=-1), np.linalg.norm(r64, axis=-1)
    rel = np.linalg.norm(a64 - r64, axis=-1) / np.maximum(nr, 1e-30)
    cos = (a64 * r64).sum(-1) / np.maximum(na * nr, 1e-30)
    return {"max_rel_err": rel.max(0).tolist(), "min_cos": cos.min(0).tolist()}


def tol_float32(n_layers: int, k: int) -> list[float]:
    return [16 * math.sqrt(layer + 1) * math.sqrt(k) * U32 for layer in range(n_layers)]


def tol_bfloat16(n_layers: int) -> list[float]:
    return [4 * math.sqrt(layer + 1) * U16 for layer in range(n_layers)]


def judge(cmp: dict[str, list[float]], tol: list[float]) -> dict[str, Any]:
    """Add the tolerance, the worst layer (by error / tolerance) and pass/fail."""
    err = cmp["max_rel_err"]
    worst = int(np.argmax(np.array(err) / np.array(tol)))
    return cmp | {
        "tol": tol,
        "worst_layer": worst,
        "worst_rel_err": err[worst],
        "worst_min_cos": min(cmp["min_cos"]),
        "pass": bool(all(e <= t for e, t in zip(err, tol, strict=True))),
    }


# --------------------------------------------------------------------------- step 1


def accuracy(name: str, texts: Sequence[str], args: argparse.Namespace) -> dict[str, Any]:
    """CPU float32 vs the device in float32 and bfloat16, every residual layer and token."""
    import emocircuits as ec

    spec = ec.CaptureSpec(sites=("resid",), positions=("all",), batch_size=16)

    def acts(device: str, dtype: str) -> tuple[np.ndarray, Any]:
        lm = ec.load_model(name, device=device, dtype=dtype, progress=False)
        out, cfg = ec.capture(lm, texts, spec)["resid/all"], lm.model.config
        del lm
        release(device)
        return out, cfg

    out: dict[str, Any] = {"model": name, "n_texts": len(texts)}
    try:
        ref, cfg = acts("cpu", "float32")
    except ec.EmocircuitsError as e:
        return out | {"status": f"skipped: {e}"}
    k = max(cfg.hidden_size, getattr(cfg, "intermediate_size", cfg.hidden_size))
    n_layers = ref.shape[1]
    cpu16 = compare(acts("cpu", "bfloat16")[0], ref)
    f32 = judge(compare(acts(args.device, "float32")[0], ref), tol_float32(n_layers, k))
    bf16 = compare(acts(args.device, "bfloat16")[0], ref)
    tol16 = [max(t, 2 * c) for t, c in
             zip(tol_bfloat16(n_layers), cpu16["max_rel_err"], strict=True)]  # fmt: skip
    bf16 = judge(bf16, tol16) | {"reference_cpu_bfloat16": cpu16}
    return out | {
        "status": "ok",
        "n_tokens": int(ref.shape[0]),
        "n_layers": n_layers,
        "inner_dim": k,
        "float32": f32,
        "bfloat16": bf16,
    }


def release(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- step 2


def plain_forward(lm: Any, texts: Sequence[str], batches: list[np.ndarray]) -> Callable[[], None]:
    """The baseline: tokenise each batch, the full causal LM (LM head), no cache, no hooks."""
    import torch

    dev = input_device(lm)

    def run() -> None:
        with torch.inference_mode():
            for rows in batches:
                enc = lm.tokenizer([texts[i] for i in rows], padding=True, return_tensors="pt")
                lm.model(**{k: v.to(dev) for k, v in enc.items()}, use_cache=False)

    return run


def capture_run(lm: Any, data: Any, batch_size: int) -> Callable[[], Any]:
    import emocircuits as ec

    def run() -> Any:
        return ec.extract(
            lm, data, sites=("resid",), positions=("mean",), batch_size=batch_size, progress=False
        )

    return run


def bench_capture(lm: Any, data: Any, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """emocircuits.extract vs the plain forward pass of the same batches."""
    from emocircuits.capture.capture import plan_batches, token_lengths

    lengths = token_lengths(lm, data.texts)
    batches = plan_batches(lengths, args.batch_size)  # the batches extract runs
    plain, cap = plain_forward(lm, data.texts, batches), capture_run(lm, data, args.batch_size)
    _, peak_plain, above_plain = peak_memory(plain, args.device)  # also the warm-up
    store, peak_cap, above_cap = peak_memory(cap, args.device)
    assert store.get("resid", "mean").shape[:2] == (len(data), lm.arch.n_layers + 1)
    s = interleaved({"plain": plain, "capture": cap}, args.repeats, args.device)
    n_tok = int(lengths.sum())
    res = {
        "n_rows": len(data),
        "n_tokens": n_tok,
        "batch_size": args.batch_size,
        "plain_s": s["plain"],
        "capture_s": s["capture"],
        "plain_tok_s": n_tok / statistics.median(s["plain"]),
        "capture_tok_s": n_tok / statistics.median(s["capture"]),
        "peak_gib_plain": peak_plain,
        "peak_gib_capture": peak_cap,
        "above_weights_gib_plain": above_plain,
        "above_weights_gib_capture": above_cap,
    } | ratio_stats(s["plain"], s["capture"])
    return res, store


def bench_generate(lm: Any, store: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Steered vs plain ``generate_text``: same prompts, one steered layer."""
    import emocircuits as ec

    prompts = (ec.neutral_prompts() * args.prompts)[: args.prompts]
    vecs = ec.directions(store)
    layer, emotion, alpha = lm.arch.n_layers // 2, "gratitude", 0.1
    ec.steering_scales(lm)  # computed once per model, before timing
    kw = {"max_new_tokens": args.new_tokens, "batch_size": args.prompts}

    def plain() -> list[str]:
        return ec.generate_text(lm, prompts, **kw)

    def steered() -> list[str]:
        with ec.steering(lm, vecs, emotion, layer=layer, alpha=alpha):
            return ec.generate_text(lm, prompts, **kw)

    texts_plain, peak_plain, above_plain = peak_memory(plain, args.device)  # warm-ups
    texts_steered, peak_st, above_st = peak_memory(steered, args.device)
    s = interleaved({"plain": plain, "steered": steered}, args.repeats, args.device)
    return {
        "n_prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "layer": layer,
        "emotion": emotion,
        "alpha": alpha,
        "plain_s": s["plain"],
        "steered_s": s["steered"],
        "steering_changed_text": texts_plain != texts_steered,
        "peak_gib_plain": peak_plain,
        "peak_gib_steered": peak_st,
        "above_weights_gib_plain": above_plain,
        "above_weights_gib_steered": above_st,
    } | ratio_stats(s["plain"], s["steered"])


SPLIT_KEYS = (
    "status",
    "max_memory",
    "placement",
    "save_load_s",
    "max_rel_err",
    "min_cos",
    "tol",
    "worst_layer",
    "worst_rel_err",
    "worst_min_cos",
    "pass",
    "unsplit_s",
    "split_s",
    "unsplit_tok_s",
    "split_tok_s",
    "ratio",
    "ratio_min",
    "ratio_max",
    "weights_gib_on_device",
    "above_weights_gib_split",
)


def bench_split(
    model: Any, tok: Any, lm: Any, data: Any, store: Any, weights_bytes: int, n_tok: int,
    folder: Path, args: argparse.Namespace,
) -> dict[str, Any]:  # fmt: skip
    """The same weights loaded with a device_map that puts part of the layers off the
    device: same activations (bfloat16 tolerance) and capture throughput vs unsplit."""
    import emocircuits as ec

    out: dict[str, Any] = dict.fromkeys(SPLIT_KEYS)
    if "device_map" not in inspect.signature(ec.load_model).parameters:
        return out | {"status": "skipped: emocircuits.load_model has no device_map yet"}
    t0 = time.perf_counter()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    share = max(1, int(weights_bytes * args.gpu_share))
    cuda = args.device.startswith("cuda")
    here = (args.device.partition(":")[2] or "0") if cuda else "cpu"  # the device_map's name
    if cuda:
        max_memory: dict[Any, Any] = {int(here): share, "cpu": 4 * weights_bytes}
        extra: dict[str, Any] = {}
    else:  # tiny on the CPU: the rest goes to disk
        max_memory = {"cpu": share}
        extra = {"offload_folder": str(folder / "offload")}
    split = ec.load_model(
        folder, dtype=args.dtype, device_map="auto", max_memory=max_memory, progress=False,
        **extra,
    )  # fmt: skip
    dmap = getattr(split.model, "hf_device_map", None) or split.provenance.get("device_map") or {}
    placement: dict[str, int] = {}
    for where in dmap.values():
        placement[str(where)] = placement.get(str(where), 0) + 1
    out |= {
        "max_memory": {str(k): v for k, v in max_memory.items()},
        "placement": placement,
        "save_load_s": time.perf_counter() - t0,
    }
    if here not in placement or set(placement) == {here}:
        return out | {"status": f"not split: the device_map placed modules as {placement}"}
    cap_split, cap = (
        capture_run(split, data, args.batch_size),
        capture_run(lm, data, args.batch_size),
    )
    got, _, above = peak_memory(cap_split, args.device)  # also the warm-up
    kind = args.device.partition(":")[0]
    on_device = sum(p.numel() * p.element_size() for p in split.model.parameters()
                    if p.device.type == kind)  # fmt: skip
    n = lm.arch.n_layers + 1
    res = judge(compare(got.get("resid", "mean"), store.get("resid", "mean")), tol_bfloat16(n))
    repeats = max(1, min(args.repeats, 2))  # each split pass moves the offloaded weights
    s = interleaved({"unsplit": cap, "split": cap_split}, repeats, args.device)
    return (
        out
        | res
        | {
            "status": "ok",
            "unsplit_s": s["unsplit"],
            "split_s": s["split"],
            "unsplit_tok_s": n_tok / statistics.median(s["unsplit"]),
            "split_tok_s": n_tok / statistics.median(s["split"]),
            "weights_gib_on_device": round(on_device / 2**30, 3),
            "above_weights_gib_split": above,
        }
        | ratio_stats(s["unsplit"], s["split"])
    )


def big_model(tok: Any, data: Any, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import torch

    shape = dict(TINY_LLAMA, vocab_size=len(tok)) if args.tiny else LLAMA3_8B
    cfg = llama_config(shape, tok)
    t0 = time.perf_counter()
    model = random_llama(cfg, getattr(torch, args.dtype), args.device)
    n_params = sum(p.numel() for p in model.parameters())
    weights_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    name = "random-llama-tiny" if args.tiny else "random-llama-3-8b-shape"
    lm = wrap(model, tok, name, args.device)
    out: dict[str, Any] = {
        "model": name,
        "config": shape,
        "n_params": n_params,
        "dtype": args.dtype,
        "weights_gib": round(weights_bytes / 2**30, 3),
        "build_s": time.perf_counter() - t0,
        "tokenizer": f"byte-level BPE trained on the presets ({len(tok)} tokens)",
    }
    log(f"built {name}: {n_params / 1e9:.2f}B parameters in {out['build_s']:.1f}s")
    out["capture"], store = bench_capture(lm, data, args)
    log(f"capture vs plain forward: {out['capture']['ratio']:.3f}x")
    out["generate"] = bench_generate(lm, store, args)
    log(f"steered vs plain generate: {out['generate']['ratio']:.3f}x")
    t0 = time.perf_counter()
    n_tok = out["capture"]["n_tokens"]
    out["split"] = bench_split(
        model, tok, lm, data, store, weights_bytes, n_tok, workdir / "model", args
    )
    out["split"]["seconds"] = time.perf_counter() - t0
    log(f"split: {out['split']['status']}")
    return out


# --------------------------------------------------------------------------- report


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def targets(res: dict[str, Any]) -> dict[str, Any]:
    big = res["big"]
    acc = [a for a in res["accuracy"] if a["status"] == "ok"]
    split = big["split"]
    return {
        "capture_vs_forward": {
            "target": CAPTURE_TARGET,
            "value": big["capture"]["ratio"],
            "pass": big["capture"]["ratio"] >= CAPTURE_TARGET,
        },
        "steered_vs_plain": {
            "target": STEER_TARGET,
            "value": big["generate"]["ratio"],
            "pass": big["generate"]["ratio"] >= STEER_TARGET,
        },
        "accuracy": {
            "pass": bool(acc) and all(a["float32"]["pass"] and a["bfloat16"]["pass"] for a in acc)
        },
        "split_accuracy": {"pass": split["pass"] if split["status"] == "ok" else None},
    }


def report(res: dict[str, Any]) -> None:
    m, v = res["machine"], res["versions"]
    log(f"\n{m['device_name']} ({m['device']}), CUDA {v['cuda']}, torch {v['torch']}, "
        f"transformers {v['transformers']}, accelerate {v['accelerate']}, "
        f"emocircuits {v['emocircuits']}; CPU {m['cpu']} x {m['nproc']}"
        + (" [--tiny: a tiny config, not a measurement]" if res["tiny"] else ""))  # fmt: skip
    log("\n| model | on the device | worst rel. err. (layer) | tolerance there | "
        "min token cosine | CPU bf16 err. there | |")  # fmt: skip
    log("|---|---|---:|---:|---:|---:|---|")
    for a in res["accuracy"]:
        if a["status"] != "ok":
            log(f"| {a['model']} | {a['status']} | | | | | |")
            continue
        for dt in ("float32", "bfloat16"):
            r, w = a[dt], a[dt]["worst_layer"]
            ref = a["bfloat16"]["reference_cpu_bfloat16"]["max_rel_err"][w]
            log(f"| {a['model']} | {dt} vs CPU float32 | {r['worst_rel_err']:.2e} ({w}) | "
                f"{r['tol'][w]:.2e} | {r['worst_min_cos']:.6f} | "
                f"{ref:.2e} | {verdict(r['pass'])} |")  # fmt: skip
    big, t = res["big"], res["targets"]
    c, g, s = big["capture"], big["generate"], big["split"]
    log(f"\n{big['model']} ({big['n_params'] / 1e9:.2f}B parameters, {big['dtype']}, "
        f"{big['weights_gib']:.2f} GiB): {c['n_rows']} sentences / {c['n_tokens']} tokens, "
        f"batch {c['batch_size']}; generation {g['n_prompts']} prompts x "
        f"{g['new_tokens']} new tokens, layer {g['layer']} steered")  # fmt: skip
    log("\n| arm | median s | tok/s | ratio [min-max] | peak GiB on the device | target | |")
    log("|---|---:|---:|---:|---:|---:|---|")
    log(
        f"| plain forward (LM head) | {statistics.median(c['plain_s']):.3f} | "
        f"{c['plain_tok_s']:.0f} | 1.000 | {fmt(c['peak_gib_plain'], '.2f')} | | |"
    )
    log(
        f"| emocircuits extract (resid, mean) | {statistics.median(c['capture_s']):.3f} | "
        f"{c['capture_tok_s']:.0f} | {c['ratio']:.3f} [{c['ratio_min']:.3f}-"
        f"{c['ratio_max']:.3f}] | {fmt(c['peak_gib_capture'], '.2f')} | >= {CAPTURE_TARGET} | "
        f"{verdict(t['capture_vs_forward']['pass'])} |"
    )
    log(
        f"| plain generate_text | {statistics.median(g['plain_s']):.3f} | | 1.000 | "
        f"{fmt(g['peak_gib_plain'], '.2f')} | | |"
    )
    log(
        f"| steered generate_text | {statistics.median(g['steered_s']):.3f} | | "
        f"{g['ratio']:.3f} [{g['ratio_min']:.3f}-{g['ratio_max']:.3f}] | "
        f"{fmt(g['peak_gib_steered'], '.2f')} | >= {STEER_TARGET} | "
        f"{verdict(t['steered_vs_plain']['pass'])} |"
    )
    if s["status"] == "ok":
        log(
            f"| extract, unsplit | {statistics.median(s['unsplit_s']):.3f} | "
            f"{s['unsplit_tok_s']:.0f} | 1.000 | | | |"
        )
        log(
            f"| extract, split {s['placement']} | {statistics.median(s['split_s']):.3f} | "
            f"{s['split_tok_s']:.0f} | {s['ratio']:.3f} | {fmt(s['weights_gib_on_device'], '.2f')} "
            f"+ {fmt(s['above_weights_gib_split'], '.2f')} | | |"
        )
        log(
            f"\nsplit vs unsplit activations: worst rel. err. {s['worst_rel_err']:.2e} "
            f"(layer {s['worst_layer']}, tolerance {s['tol'][s['worst_layer']]:.2e}), "
            f"min cosine {s['worst_min_cos']:.6f}: {verdict(s['pass'])}"
        )
    else:
        log(f"| split run | {s['status']} | | | | | |")
    log(
        f"\naccuracy on the device: {verdict(t['accuracy']['pass'])}; split accuracy: "
        f"{verdict(t['split_accuracy']['pass'])}; total {res['seconds']:.0f} s"
    )


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    why = check_args(args)
    if why:
        return refuse(why)
    t_start = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if "EMOCIRCUITS_CACHE" not in os.environ and (ROOT / ".cache" / "emocircuits").is_dir():
        os.environ["EMOCIRCUITS_CACHE"] = str(ROOT / ".cache" / "emocircuits")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import emocircuits as ec

    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
        torch.backends.cudnn.allow_tf32 = False
    res: dict[str, Any] = {
        "tiny": args.tiny,
        "machine": machine(args.device),
        "versions": versions(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    all_texts = ec.load_dataset("extended").texts + ec.load_dataset("baseline").texts
    tok = train_tokenizer(all_texts, 512 if args.tiny else 8192)
    data = sub_dataset(args.rows)
    acc_texts = [
        data.texts[i] for i in range(0, len(data), max(1, len(data) // args.accuracy_texts))
    ]
    acc_texts = acc_texts[: args.accuracy_texts]
    with tempfile.TemporaryDirectory(prefix="bench-gpu-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        if args.tiny:  # a tiny float32 model saved as a folder stands in for the built-ins
            folder = workdir / "tiny-llama-float32"
            small = random_llama(llama_config(dict(TINY_LLAMA, vocab_size=len(tok)), tok),
                                 torch.float32, "cpu")  # fmt: skip
            small.save_pretrained(folder)
            tok.save_pretrained(folder)
            models: list[str] = [str(folder)]
        else:
            models = [m for m in args.models.split(",") if m]
        res["accuracy"] = []
        for name in models:
            t0 = time.perf_counter()
            a = accuracy(name, acc_texts, args)
            a["seconds"] = time.perf_counter() - t0
            if args.tiny:
                a["model"] = "tiny-llama-float32"
            res["accuracy"].append(a)
            log(f"accuracy {a['model']}: {a['status']} ({a['seconds']:.1f}s)")
        res["big"] = big_model(tok, data, args, workdir)
    res["targets"] = targets(res)
    res["seconds"] = time.perf_counter() - t_start
    report(res)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
