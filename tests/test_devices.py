"""Devices, placement and dtype: a tiny model split by a real accelerate device map (the
embedding and block 0 on "cpu", the later blocks, the final norm and, where it is not
tied, the unembedding offloaded to "disk", their parameters on "meta" until accelerate's
hook loads them for their own forward pass) gives what the unsplit model gives: captured
activations, steered generations, patching, ablation and heads, through the library and
the CLI; no hook is left behind; a device that is not there, a broken or wrong device
map, a disk map without an offload folder and quantization without CUDA are one clear
line each; ``auto`` resolves to the CPU and float32 here and is recorded; a CPU study
keeps its stage hashes.

Tolerance: both models run the same float32 operations on the same weights (read from the
same safetensors file, by transformers for the whole model and by accelerate for the
offloaded modules) on the same CPU, so they agree to float32 rounding: ``close`` allows
1e-5 of the largest value, far above the ~1e-7 relative rounding of one operation
accumulated over three blocks of width 64, and far below any real placement error (a
missing block, a weight left at zero or a push added twice change values by O(1)).
Greedy generations and every derived table must then be equal (table numbers to 1e-5
relative)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_heads import _save_vectors
from test_patching import _vectors

import emocircuits as ec
from emocircuits.capture.capture import CaptureSpec, capture
from emocircuits.capture.hooks import count_hooks
from emocircuits.errors import EmocircuitsError, ModelError
from emocircuits.interventions import readout as readout_module
from emocircuits.interventions.generation import generate
from emocircuits.interventions.steering import Steer, steering, steering_scales
from emocircuits.models.loading import PLACEMENT, load_model, resolve_device, resolve_dtype

from helpers import close, one_error_line, run

ARCHS = ["llama", "gemma3_text"]  # RoPE + untied unembedding; post-norms + tied embeddings


def split_map(lm: ec.LoadedModel) -> dict[str, str]:
    """Embedding, rotary tables and block 0 on "cpu"; blocks 1.., the final norm and the
    unembedding (unless tied to the embedding, which stays on "cpu") on "disk"."""
    model, arch = lm.model, lm.arch
    prefix = model.base_model_prefix
    out: dict[str, str] = {}
    for name, module in arch.base_model.named_children():
        if isinstance(module, torch.nn.ModuleList):
            for i in range(len(module)):
                out[f"{prefix}.{name}.{i}"] = "cpu" if i == 0 else "disk"
        else:
            out[f"{prefix}.{name}"] = "disk" if module is arch.final_norm else "cpu"
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    out["lm_head"] = "cpu" if tied else "disk"
    return out


@pytest.fixture(scope="module")
def pair(tiny, tiny_dir, tmp_path_factory):
    """``pair(arch)`` -> (whole model, split model, its device-map file, offload folder)."""
    made = {}

    def get(arch: str):
        if arch not in made:
            root = tmp_path_factory.mktemp(f"split-{arch}")
            whole = tiny(arch)
            path = root / "map.json"
            path.write_text(json.dumps(split_map(whole)))
            split = load_model(tiny_dir(arch), device_map=path, offload_folder=root / "off",
                               progress=False)  # fmt: skip
            made[arch] = (whole, split, path, root / "off")
        return made[arch]

    return get


@pytest.fixture()
def readout_words(monkeypatch):
    """Readout words that are single tokens of the tiny tokenizer (it has no feeling words)."""
    monkeypatch.setattr(readout_module, "FEELING_WORDS",
                        {"gratitude": ("the", "a"), "apology": ("to", "and"),
                         "anger": ("you", "I")})  # fmt: skip
    monkeypatch.setattr(readout_module, "REFERENCE_WORDS", ("for", "of", "is", "in"))


def _same_tables(a: dict, b: dict) -> None:
    """Every table row equal; numbers to 1e-5 relative (see the module docstring)."""
    assert a.keys() == b.keys()
    for name in a:
        assert len(a[name]) == len(b[name]), name
        for ra, rb in zip(a[name], b[name], strict=True):
            assert ra.keys() == rb.keys(), name
            for k in ra:
                x, y = ra[k], rb[k]
                if isinstance(x, float) and isinstance(y, float):
                    if math.isnan(x) or math.isnan(y):
                        assert math.isnan(x) and math.isnan(y), (name, k)
                    else:
                        assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-6), (name, k, x, y)
                else:
                    assert x == y, (name, k, x, y)


# --------------------------------------------------------------------------- the split
@pytest.mark.parametrize("arch", ARCHS)
def test_the_device_map_offloads_through_accelerate_hooks(pair, arch):
    _, lm, path, off = pair(arch)
    block = lm.arch.blocks[1]
    assert hasattr(block, "_hf_hook")  # accelerate's hook, not ours
    assert {p.device.type for p in block.parameters()} == {"meta"}  # loaded per forward
    assert {p.device.type for p in lm.arch.blocks[0].parameters()} == {"cpu"}
    prov = lm.provenance
    assert prov["device_map"] == json.loads(path.read_text())
    assert prov["offload"]["disk"] == len([v for v in prov["device_map"].values() if v == "disk"])
    assert prov["offload"]["folder"] == str(off)
    assert prov["device"] == "cpu" and prov["dtype"] == "float32"
    assert lm.input_device == torch.device("cpu")
    assert count_hooks(lm.model) == 0  # accelerate's hooks are not counted as ours


@pytest.mark.parametrize("arch", ARCHS)
def test_weights_read_directly_are_the_offloaded_ones(pair, arch):
    whole, lm, _, _ = pair(arch)
    for layer in (0, 2):
        for get in ("o_proj_weight", "mlp_proj_weight"):
            (w1, b1), (w2, b2) = getattr(whole.arch, get)(layer), getattr(lm.arch, get)(layer)
            assert w2.device.type == "cpu" and torch.equal(w1, w2)
            assert (b1 is None and b2 is None) or torch.equal(b1, b2)
    for site in ("attn", "mlp"):
        g1, g2 = whole.arch.post_norm_gain(2, site), lm.arch.post_norm_gain(2, site)
        assert (g1 is None) == (g2 is None) and (g1 is None or torch.equal(g1, g2))
    assert lm.arch.o_proj(2).weight.device.type == "meta"  # put back after the read


# ------------------------------------------------------------------- same results as whole
@pytest.mark.parametrize("arch", ARCHS)
def test_capture_and_steering_equal_the_whole_model(pair, arch):
    whole, lm, _, _ = pair(arch)
    texts = ec.load_dataset("baseline").texts[:12]
    spec = CaptureSpec(sites=("resid", "attn", "mlp", "heads"), positions=("last", "mean", "all"),
                       batch_size=5)  # fmt: skip
    a, b = capture(whole, texts, spec), capture(lm, texts, spec)
    assert a.keys() == b.keys()
    for k in a:
        close(b[k], a[k], k)
    s = steering_scales(whole)
    close(steering_scales(lm), s, "steering scales")
    v = np.random.default_rng(0).normal(size=whole.arch.width)
    steers = [
        Steer(layer=1, vector=v, alpha=1.0, scale=float(s[1])),  # block 0 on the CPU
        Steer(layer=3, vector=-v, alpha=1.0, scale=float(s[3])),
    ]  # block 2 offloaded
    prompts = texts[:4]
    enc = whole.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = whole.model(**enc).logits
    logits, outs = [], []
    for m in (whole, lm):
        with steering(m, steers), torch.no_grad():
            logits.append(m.model(**enc).logits)
        with steering(m, steers, steer_tokens=4):
            outs.append(generate(m, prompts, max_new_tokens=8, batch_size=3))
        assert count_hooks(m.model) == 0
    close(logits[1], logits[0], "steered logits")
    assert float((logits[0] - plain).abs().max()) > 0.1  # the push changes the logits
    assert outs[0] == outs[1]  # greedy token ids


def test_extract_equals_the_whole_model_through_the_library_and_the_cli(pair, tmp_path, capsys):
    whole, lm, path, off = pair("llama")
    data = ec.load_dataset("baseline")
    ref = ec.extract(whole, data, sites=("resid", "mlp"), positions=("mean", "last"),
                     progress=False)  # fmt: skip
    lib = ec.extract(lm, data, sites=("resid", "mlp"), positions=("mean", "last"),
                     progress=False)  # fmt: skip
    code, _, err = run(capsys, "extract", "--model", lm.provenance["path"], "--data", "baseline",
                       "--sites", "resid,mlp", "--positions", "mean,last", "--quiet",
                       "--out", tmp_path / "acts", "--device-map", path,
                       "--offload-folder", off)  # fmt: skip
    assert code == 0, err
    cli = ec.load_activations(tmp_path / "acts")
    for site in ("resid", "mlp"):
        for pos in ("mean", "last"):
            close(lib.get(site, pos), ref.get(site, pos), f"{site}/{pos}")
            close(cli.get(site, pos), ref.get(site, pos), f"cli {site}/{pos}")
    model = cli.manifest["model"]
    assert model["device_map"] == json.loads(path.read_text()) and model["offload"]["disk"] > 0
    assert count_hooks(lm.model) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_ablate_and_heads_equal_the_whole_model(pair, arch, readout_words):
    whole, lm, _, _ = pair(arch)
    vecs = _vectors(whole, ("gratitude", "anger"))
    runs = {
        "patch": lambda m: ec.patch(m, "baseline", vecs, n_pairs=3, min_pairs=2,
                                    n_positions=2, layers=[0, 2, 3], n_boot=20),
        "ablate": lambda m: ec.ablate(m, "baseline", vecs, from_layer=1, n_random=1,
                                      n_train=10, n_eval=6, n_boot=20),
        "heads": lambda m: ec.heads(m, "baseline", vecs, emotion=["anger"], top_k=[1, 2],
                                    n_random=2, n_ablate=2, n_per_class=4, n_boot=20, layer=3),
    }  # fmt: skip
    for name, call in runs.items():
        a, b = call(whole), call(lm)
        _same_tables(a.tables, b.tables)
        assert b.summary["model"]["offload"]["disk"] > 0, name
        assert count_hooks(lm.model) == 0, name


def test_patch_and_heads_through_the_cli_with_a_device_map(pair, tmp_path, capsys, readout_words):
    whole, lm, path, off = pair("gemma3_text")
    vec = str(_save_vectors(whole, tmp_path / "v.safetensors"))
    model = lm.provenance["path"]
    place = ["--device-map", path, "--offload-folder", off, "--quiet"]
    code, _, err = run(capsys, "patch", "--model", model, "--vectors", vec, "--data",
                       "baseline", "--emotion", "anger", "--n-pairs", "4", "--min-pairs", "2",
                       "--n-positions", "1", "--n-boot", "20", "--no-plots",
                       "--out", tmp_path / "patch", *place)  # fmt: skip
    assert code == 0, err
    ref = ec.patch(whole, "baseline", vec, emotion=["anger"], n_pairs=4, min_pairs=2,
                   n_positions=1, n_boot=20)  # fmt: skip
    ref.save(tmp_path / "r1", plots=False)
    _same_tables(ec.PatchResult.load(tmp_path / "patch").tables,
                 ec.PatchResult.load(tmp_path / "r1").tables)  # fmt: skip
    code, _, err = run(capsys, "heads", "--model", model, "--vectors", vec, "--data",
                       "baseline", "--emotion", "anger", "--top-k", "1", "--n-random", "2",
                       "--n-ablate", "2", "--n-per-class", "4", "--n-boot", "20", "--layer",
                       "2", "--no-plots", "--out", tmp_path / "heads", *place)  # fmt: skip
    assert code == 0, err
    ref = ec.heads(whole, "baseline", vec, emotion=["anger"], top_k=[1], n_random=2,
                   n_ablate=2, n_per_class=4, n_boot=20, layer=2)  # fmt: skip
    ref.save(tmp_path / "r2", plots=False)
    _same_tables(ec.HeadsResult.load(tmp_path / "heads").tables,
                 ec.HeadsResult.load(tmp_path / "r2").tables)  # fmt: skip
    summary = json.loads((tmp_path / "heads" / "summary.json").read_text())
    assert summary["model"]["device_map"] == json.loads(path.read_text())


# ---------------------------------------------------------------- resolution and refusals
def test_auto_resolves_to_the_cpu_and_float32_here_and_is_recorded(tiny_dir):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    lm = load_model(tiny_dir("gpt2"), progress=False)
    assert lm.provenance["device"] == "cpu" and lm.provenance["dtype"] == "float32"
    assert lm.provenance["device_map"] is None and lm.provenance["quantization"] is None
    assert lm.dtype == torch.float32 and lm.input_device == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:3", "mps", "cdua"])
def test_a_device_that_is_not_there_is_one_line_exit_2(tiny_dir, tmp_path, capsys, device):
    code, _, err = run(capsys, "extract", "--model", tiny_dir("gpt2"), "--data", "baseline",
                       "--out", tmp_path / "x", "--device", device)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and repr(device) in line and "available: cpu" in line
    assert not (tmp_path / "x").exists()
    with pytest.raises(ModelError, match="available: cpu"):
        resolve_device(device)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a readable JSON device map"),
        ("[1, 2]", "JSON object of module name"),
        ('{"model.layerz.0": "cpu", "": "cpu"}', "no module 'model.layerz.0'"),
        ('{"model.layers.0": "cuda:7", "": "cpu"}', "'cuda:7' is not available"),
        ('{"model.layers.0": "cpu"}', "is on no device"),
        ('{"model.layers.0": "disk", "": "cpu"}', "give an offload folder"),
    ],
)
def test_a_bad_device_map_file_is_one_line_naming_it(tiny_dir, tmp_path, capsys, content, message):
    path = tmp_path / "map.json"
    path.write_text(content)
    code, _, err = run(capsys, "extract", "--model", tiny_dir("llama"), "--data", "baseline",
                       "--out", tmp_path / "x", "--device-map", path)  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and message in line and str(path) in line, line
    assert not (tmp_path / "x").exists()


def test_other_placement_mistakes_are_clear(tiny_dir):
    model = tiny_dir("llama")
    cases = [
        (dict(device_map="atuo"), "neither a strategy"),
        (dict(device="cpu", device_map="auto"), "not both"),
        (dict(offload_folder="x"), "only with a device_map"),
        (dict(max_memory="0=20G1B"), "not a size"),
        (dict(max_memory="gpu=2GiB"), "unknown device 'gpu'"),
        (dict(dtype="fp8"), "unknown dtype"),
        (dict(quantization="3bit"), "unknown quantization"),
    ]
    for kw, message in cases:
        with pytest.raises(EmocircuitsError, match=message):
            load_model(model, progress=False, **kw)


def test_quantization_needs_bitsandbytes_and_cuda(tiny_dir, tmp_path, capsys):
    """bitsandbytes is not installed here (and there is no GPU): one clear line."""
    code, _, err = run(capsys, "extract", "--model", tiny_dir("llama"), "--data", "baseline",
                       "--out", tmp_path / "x", "--quantization", "4bit")  # fmt: skip
    line = one_error_line(err)
    assert code == 2 and ("bitsandbytes" in line or "CUDA" in line)


def test_a_strategy_with_max_memory_spreads_and_offloads(tiny, tiny_dir, tmp_path):
    """``max_memory`` alone implies ``device_map="auto"``: with room for little on the CPU,
    accelerate puts the rest on disk, and the model still computes what it did."""
    whole = tiny("llama")
    lm = load_model(tiny_dir("llama"), max_memory="cpu=150KB", offload_folder=tmp_path,
                    progress=False)  # fmt: skip
    assert "disk" in lm.provenance["device_map"].values() and lm.provenance["max_memory"]
    texts = ec.load_dataset("baseline").texts[:6]
    spec = CaptureSpec(sites=("resid",), positions=("last",))
    close(capture(lm, texts, spec)["resid/last"], capture(whole, texts, spec)["resid/last"],
          "resid/last")  # fmt: skip


# -------------------------------------------------------------------------------- study
def test_study_placement_keys_and_unchanged_cpu_hashes(tiny_dir, tmp_path):
    from emocircuits._version import __version__
    from emocircuits.study import calls
    from emocircuits.study.config import PLACEMENT_KEYS, ConfigError, load_config
    from emocircuits.study.stages import _hash, data_identity, model_identity, plan_study

    model = str(tiny_dir("llama"))
    base = {"models": [model], "data": ["baseline"], "out": str(tmp_path / "s"),
            "analyses": ["geometry"]}  # fmt: skip
    auto = plan_study(load_config(None, {"study": base}))
    explicit = plan_study(load_config(None, {"study": {**base, "device": "cpu",
                                                       "dtype": "float32"}}))  # fmt: skip
    assert [s.hash for s in auto] == [s.hash for s in explicit]
    bf16 = plan_study(load_config(None, {"study": {**base, "dtype": "bfloat16"}}))
    assert auto[0].hash != bf16[0].hash
    # the capture hash is what it was before placement became a study setting
    cap = auto[0]
    old_settings = {**load_config(None).stage_options("capture"), "device": "cpu"}
    for later in ("chat", "system"):  # options added later, hashed only when set
        del old_settings[later]
    old = _hash({"stage": "capture", "settings": old_settings,
                 "identity": {"model": model_identity(model), "data": data_identity("baseline"),
                              "dtype": "float32", "trust_remote_code": False, "revision": ""},
                 "inputs": [], "version": __version__})  # fmt: skip
    assert cap.hash == old
    # a device map changes where weights live, not the numbers: same hashes
    mapped = plan_study(load_config(None, {"study": {**base, "device_map": "auto"}}))
    assert [s.hash for s in mapped] == [s.hash for s in auto]
    with pytest.raises(ConfigError, match=r"\[extract\] device is a \[study\] setting"):
        load_config(None, {"extract": {"device": "cpu"}})
    assert PLACEMENT_KEYS == PLACEMENT  # the config's copy (no torch import) is the same
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_config(None, {"study": {"dtype": "fp8"}})
    with pytest.raises(ModelError, match="'cuda' is not available"):
        plan_study(load_config(None, {"study": {**base, "device": "cuda"}}))
    # a printed config with a device map table reads back the same
    dm = {"model.layers.1": "disk", "": "cpu"}
    cfg = load_config(None, {"study": {"device_map": dm, "max_memory": "cpu=1GiB"}})
    again = tmp_path / "c.toml"
    again.write_text(cfg.to_toml())
    assert load_config(again).study == cfg.study
    # the adapter loads with the study's placement and says where the model ran
    mp = tmp_path / "map.json"
    mp.write_text(json.dumps(split_map(load_model(model, progress=False))))
    run_opts = {"revision": "", "trust_remote_code": False, "dtype": "auto", "device": "auto",
                "device_map": str(mp), "max_memory": "", "offload_folder": str(tmp_path / "o"),
                "quantization": ""}  # fmt: skip
    placed = calls.capture(model, "baseline", tmp_path / "cap",
                           {"sites": ["resid"], "positions": ["last"]}, run_opts)  # fmt: skip
    assert placed["device"] == "cpu" and placed["dtype"] == "float32"
    assert placed["offload"]["disk"] > 0 and placed["placement"]["disk"] > 0


@pytest.mark.real
def test_a_builtin_gguf_model_loads_with_a_device_map(smollm2, tmp_path):
    """The built-in's GGUF is converted once to a safetensors folder; the device map
    (the later half of the blocks on disk) loads that folder and computes the same."""
    dm = split_map(smollm2)
    half = smollm2.arch.n_layers // 2
    dm.update({k: "cpu" for k in dm if k.split(".")[-1].isdigit() and int(k.split(".")[-1]) < half})
    lm = load_model("smollm2-135m", device_map=dm, offload_folder=tmp_path, progress=False)
    assert lm.provenance["source"] == "gguf" and lm.provenance["offload"]["disk"] > 0
    assert {p.device.type for p in lm.arch.blocks[-1].parameters()} == {"meta"}
    texts = ec.load_dataset("baseline").texts[:4]
    spec = CaptureSpec(sites=("resid",), positions=("last",))
    close(capture(lm, texts, spec)["resid/last"], capture(smollm2, texts, spec)["resid/last"],
          "resid/last")  # fmt: skip
    assert count_hooks(lm.model) == 0
