"""Decoding: token ids in, continuations out, and what the text costs in fluency.

- :func:`generate`: batched continuations (left padding, rows sorted by length), greedy or
  sampled (:class:`Decoding`), with the same steering for every prompt or each prompt's own
  (``per_row``);
- :func:`generate_text`: the same, text in and text out, under whatever steering is active;
- :func:`perplexity`: of a continuation after its prompt, under the model as it is;
- :func:`next_token_kl`: KL(unsteered || steered) of next-token distributions on text the
  model did not write;
- :func:`prompt_ids`: what the model continues: a text, or the text put through the chat
  template (``chat="user"``: the text is the user's message and the continuation is the
  assistant's reply; ``chat="assistant"``: the text is the start of the assistant's reply
  and the continuation goes on with it; :mod:`~emocircuits.capture.chat`).

Batches are left-padded by hand (whatever the tokenizer's own padding side: SmolLM2's is
right, which would put padding between a prompt and its continuation) with positions from
the attention mask. A continuation ends at the first end token: the tokenizer's EOS or any
of the model's generation-config end tokens (an instruct model's end of turn), and only the
new tokens are returned, decoded and scored.

**Sampling** (:class:`Decoding` ``kind="sample"``) never uses the model's own sampler:
``generate`` stays ``do_sample=False`` and a logits processor (:class:`GumbelSampler`)
applies the temperature and the top-p cut, then adds Gumbel noise; the argmax of
``warped logits + Gumbel`` is an exact draw from the warped distribution (the Gumbel-max
trick). The noise of a row at its ``k``-th new token comes from a generator seeded by
(seed, the row's prompt tokens, ``k``) (:func:`noise_seed`), counted in new tokens, not
positions (left padding shifts those), so a row's continuation depends on its prompt
tokens, steering, decoding and seed only, never on the batch it ran in or the batch size
(batches are halved on out-of-memory). The steering is not part of the key: the unsteered
and a steered continuation of one prompt and seed share their noise (common random
numbers), so their paired difference reflects the push rather than the dice.

Everything here is model mechanics: what to steer with, and why, lives in
:mod:`~emocircuits.interventions.run` and :mod:`~emocircuits.interventions.sweep`.

>>> ids = generate(lm, ["The meeting moved to Thursday."], max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emocircuits.capture.chat import ChatFormat, chat_format
from emocircuits.errors import DataError
from emocircuits.interventions.steering import Steer, steering
from emocircuits.models.batching import Batches, BatchSize, row_bytes

if TYPE_CHECKING:
    from emocircuits.models.loading import LoadedModel


DECODING_KINDS = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How continuations are chosen: ``"greedy"`` (the most likely token each step) or
    ``"sample"`` (a draw from the model's distribution at ``temperature``, cut to the
    smallest set of tokens holding ``top_p`` of the probability; one continuation per seed).

    >>> Decoding("sample", temperature=0.7, top_p=0.9).record()
    {'kind': 'sample', 'temperature': 0.7, 'top_p': 0.9}
    >>> Decoding().record()
    'greedy'
    """

    kind: str = "greedy"
    temperature: float = 0.7
    top_p: float = 0.9

    def __post_init__(self) -> None:
        if self.kind not in DECODING_KINDS:
            raise DataError(f"decoding must be one of {', '.join(DECODING_KINDS)}, "
                            f"got {self.kind!r}")  # fmt: skip
        t, p = self.temperature, self.top_p
        if isinstance(t, bool) or not isinstance(t, int | float) or not (0 < t < math.inf):
            raise DataError(f"temperature must be a number > 0, got {t!r}")
        if isinstance(p, bool) or not isinstance(p, int | float) or not (0 < p <= 1):
            raise DataError(f"top_p must be a number in (0, 1], got {p!r}")

    @property
    def sampled(self) -> bool:
        """Whether continuations are drawn (one per seed) rather than greedy."""
        return self.kind == "sample"

    def record(self) -> str | dict[str, Any]:
        """What a row records: ``"greedy"``, or the kind with its temperature and top-p."""
        if not self.sampled:
            return "greedy"
        return {"kind": "sample", "temperature": float(self.temperature),
                "top_p": float(self.top_p)}  # fmt: skip

    @classmethod
    def of(
        cls,
        value: Decoding | str | dict[str, Any] | None = None,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
    ) -> Decoding:
        """A :class:`Decoding` from itself, a kind name (``None``: greedy), or a recorded
        dict; ``temperature`` / ``top_p`` override.

        >>> Decoding.of("sample", temperature=1.0).temperature
        1.0
        """
        if isinstance(value, Decoding):
            base = value
        elif isinstance(value, dict):
            base = cls(**value)
        else:
            base = cls("greedy" if value is None else value)
        kw = {k: v for k, v in (("temperature", temperature), ("top_p", top_p)) if v is not None}
        return cls(base.kind, **{"temperature": base.temperature, "top_p": base.top_p, **kw})


def noise_seed(seed: int, prompt: Sequence[int], step: int) -> int:
    """The generator seed of a sampled row's noise at its ``step``-th new token: a hash of
    the seed, the row's prompt token ids and the step (63 bits).

    >>> noise_seed(0, [1, 2], 0) == noise_seed(0, [1, 2], 0) != noise_seed(1, [1, 2], 0)
    True
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{int(seed)}|{int(step)}|".encode())
    h.update(np.asarray(prompt, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


def warp(scores: Any, decoding: Decoding) -> Any:
    """Logits divided by the temperature, with tokens outside the top-p nucleus set to
    ``-inf`` (as transformers' ``TemperatureLogitsWarper`` then ``TopPLogitsWarper``)."""
    from transformers.generation.logits_process import TopPLogitsWarper

    scores = scores / float(decoding.temperature)
    if decoding.top_p < 1:
        scores = TopPLogitsWarper(float(decoding.top_p))(None, scores)
    return scores


class GumbelSampler:
    """A transformers logits processor: warped logits (:func:`warp`) plus Gumbel noise, one
    generator per row seeded by :func:`noise_seed`; under ``do_sample=False`` the argmax
    that ``generate`` takes is then an exact sample. ``prompts``: the rows' own prompt
    token ids, ``seeds`` their seeds, ``start``: the padded prompt length of the batch
    (new tokens so far = current length - ``start``)."""

    def __init__(self, decoding: Decoding, prompts: Sequence[Sequence[int]],
                 seeds: Sequence[int], start: int) -> None:  # fmt: skip
        self.decoding, self.prompts, self.seeds, self.start = decoding, prompts, seeds, start

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = int(input_ids.shape[1]) - self.start
        scores = warp(scores.float(), self.decoding)
        noise = torch.empty_like(scores)
        for j, (p, s) in enumerate(zip(self.prompts, self.seeds, strict=True)):
            g = torch.Generator(device=scores.device)
            g.manual_seed(noise_seed(s, p, step))
            noise[j] = torch.rand(scores.shape[1], generator=g, device=scores.device)
        # u in [0, 1): u = 0 gives -inf (never chosen), as a zero-probability token
        return scores - torch.log(-torch.log(noise))


def has_chat_template(lm: LoadedModel) -> bool:
    """Whether the tokenizer has a chat template (a chat model)."""
    return bool(getattr(lm.tokenizer, "chat_template", None))


def prompt_ids(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[list[int]],
    chat: str | ChatFormat | None = None,
    system: str | None = None,
) -> list[list[int]]:
    """Token ids the model continues, per prompt: a text as raw text (``chat=None``) or
    through the chat template (``"user"``, ``"assistant"`` or a
    :class:`~emocircuits.capture.chat.ChatFormat`, with ``system``); token ids as given.

    >>> prompt_ids(lm, ["The bus is late."], chat="user")  # doctest: +SKIP
    [[1, 9690, 198, ...]]
    """
    fmt = chat if isinstance(chat, ChatFormat) else chat_format(lm, chat, system)
    out = []
    for p in prompts:
        if not isinstance(p, str):
            out.append(list(p))
        elif fmt is None:
            out.append(list(lm.tokenizer(p)["input_ids"]))
        else:
            out.append(fmt.encode(lm.tokenizer, p)[0])
    return out


def _token_ids(lm: LoadedModel, prompt: str | list[int]) -> list[int]:
    """A text's token ids, or the ids as given."""
    return prompt_ids(lm, [prompt])[0]  # type: ignore[list-item]


def stop_ids(lm: LoadedModel) -> list[int]:
    """The tokens that end a continuation: the tokenizer's EOS and the generation config's
    end tokens (an instruct model's end of turn)."""
    ids = [lm.tokenizer.eos_token_id]
    config = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    ids += config if isinstance(config, list | tuple) else [config]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def _left_pad(batch: Sequence[list[int]], pad: int) -> tuple[Any, Any]:
    import torch

    n = max(len(x) for x in batch)
    ids = torch.full((len(batch), n), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, n - len(x) :] = torch.tensor(x)
        mask[i, n - len(x) :] = 1
    return ids, mask


def _pad_id(lm: LoadedModel) -> int:
    tok = lm.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)


def generation_bytes(lm: LoadedModel, prompt_tokens: int, max_new_tokens: int) -> int:
    """Estimated memory of one row of :func:`generate` (for ``batch_size="auto"``): the
    prompt's forward pass and a key-value cache of the prompt and the new tokens."""
    n = prompt_tokens + max_new_tokens
    return row_bytes(lm, n, cache_tokens=n, logits=2)


def _slices(order: Sequence[int], size: int) -> list[np.ndarray]:
    return [np.asarray(order[i : i + size], dtype=np.int64) for i in range(0, len(order), size)]


def generate(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[list[int]],
    *,
    steers: Sequence[Steer] = (),
    per_row: Sequence[Sequence[Steer]] | None = None,
    where: str = "all",
    steer_tokens: int | None = None,
    max_new_tokens: int = 30,
    batch_size: BatchSize | Batches = 8,
    chat: str | None = None,
    system: str | None = None,
    decoding: Decoding | str | None = None,
    seeds: int | Sequence[int] = 0,
) -> list[list[int]]:
    """Continuations (new token ids, up to the first end token: :func:`stop_ids`) of
    ``prompts`` (texts, put through the chat template with ``chat``/``system`` as in
    :func:`prompt_ids`, or token ids), with the same ``steers`` for all or each prompt's
    own (``per_row``). ``decoding``: greedy (``None``) or a :class:`Decoding`; sampled rows
    use ``seeds`` (one for all, or one per prompt) and do not depend on the batch (module
    docstring). Prompts are batched by length (left padding); order is kept. The
    push covers what ``where`` / ``steer_tokens`` say
    (:func:`~emocircuits.interventions.steering.steering`); with a chat template "the
    prompt" is the whole templated input. ``batch_size``: a number, ``"auto"``, or the
    caller's :class:`~emocircuits.models.batching.Batches`; a batch that runs out of memory
    is halved and run again."""
    import torch

    ids = prompt_ids(lm, prompts, chat, system)
    if per_row is not None and len(per_row) != len(ids):
        raise DataError(f"{len(per_row)} steer lists for {len(ids)} prompts")
    dec = Decoding.of(decoding)
    row_seeds = [int(seeds)] * len(ids) if isinstance(seeds, int | np.integer) else list(seeds)
    if len(row_seeds) != len(ids):
        raise DataError(f"{len(row_seeds)} seeds for {len(ids)} prompts")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[int]] = [[] for _ in ids]
    stops, pad = stop_ids(lm), _pad_id(lm)
    b = Batches.of(batch_size, "generate")
    longest = max(map(len, ids), default=1)
    size = b.size("generate", lm, generation_bytes(lm, longest, max_new_tokens), len(ids))

    def one(chunk: np.ndarray) -> list[list[int]]:
        x, mask = _left_pad([ids[i] for i in chunk], pad)
        rows = None if per_row is None else [per_row[i] for i in chunk]
        extra: dict[str, Any] = {}
        if dec.sampled:
            from transformers import LogitsProcessorList

            sampler = GumbelSampler(dec, [ids[i] for i in chunk],
                                    [row_seeds[i] for i in chunk], x.shape[1])  # fmt: skip
            extra["logits_processor"] = LogitsProcessorList([sampler])
        with steering(lm, steers, where=where, per_row=rows, steer_tokens=steer_tokens):
            new = lm.model.generate(
                input_ids=x.to(lm.input_device),
                attention_mask=mask.to(lm.input_device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=stops,
                **extra,
            )[:, x.shape[1] :]
        return new.tolist()

    with torch.no_grad():
        for chunk, new in b.run("generate", _slices(order, size), one):
            for i, row in zip(chunk.tolist(), new, strict=True):
                ends = [row.index(t) for t in stops if t in row]
                out[i] = row[: min(ends)] if ends else row
    if b is not batch_size:
        b.report()
    return out


def perplexity(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    batch_size: BatchSize | Batches = 32,
) -> np.ndarray:
    """Perplexity of each continuation (token ids) after its prompt (text or ids) under the
    model as it is (call outside any steering): ``exp`` of the mean next-token loss over the
    new tokens; NaN for an empty continuation. Batched with left padding and explicit
    positions (equal to scoring one at a time: tested); ``batch_size`` as in
    :func:`generate`."""
    import torch

    seqs = [(_token_ids(lm, p), list(c)) for p, c in zip(prompts, continuations, strict=True)]
    out = np.full(len(seqs), np.nan)
    todo = sorted((i for i, (_, c) in enumerate(seqs) if c), key=lambda i: sum(map(len, seqs[i])))
    pad = _pad_id(lm)
    b = Batches.of(batch_size, "perplexity")
    longest = max((sum(map(len, seqs[i])) for i in todo), default=1)
    keep_most = max((len(seqs[i][1]) for i in todo), default=0) + 1
    size = b.size("perplexity", lm, row_bytes(lm, longest, logits=keep_most), len(todo))

    def one(chunk: np.ndarray) -> list[float]:
        # left padding: every continuation ends at the last position, so the LM head
        # and the softmax run only over the last max(len(c)) + 1 positions
        x, mask = _left_pad([seqs[i][0] + seqs[i][1] for i in chunk], pad)
        keep = max(len(seqs[i][1]) for i in chunk) + 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        x, mask, pos = (t.to(lm.input_device) for t in (x, mask, pos))
        logits = lm.model(input_ids=x, attention_mask=mask, position_ids=pos,
                          logits_to_keep=keep).logits  # fmt: skip
        values = []
        for j, i in enumerate(chunk):
            c = seqs[i][1]
            pred = torch.log_softmax(logits[j, keep - 1 - len(c) : keep - 1].float(), -1)
            nll = -pred.gather(1, torch.tensor(c, device=pred.device)[:, None]).mean()
            values.append(float(torch.exp(nll)))
        return values

    with torch.no_grad():
        for chunk, values in b.run("perplexity", _slices(todo, size), one):
            out[chunk] = values
    if b is not batch_size:
        b.report()
    return out


def next_token_kl(
    lm: LoadedModel,
    texts: Sequence[str],
    steer_sets: Sequence[Sequence[Steer]],
    *,
    batch_size: BatchSize | Batches = 32,
    chat: str | None = None,
    system: str | None = None,
) -> np.ndarray:
    """``[len(steer_sets)]`` mean KL(unsteered || steered) of the next-token distributions
    over every position of ``texts`` (neutral text: the fluency cost of each steer set on
    text it did not write). All positions are steered. With ``chat`` the texts go through
    the chat template (as the assistant's or the user's words) and the KL is averaged over
    the positions of the texts' own tokens. ``batch_size`` (as in :func:`generate`) counts
    rows: ``batch_size // len(texts)`` steer sets run together."""
    import torch

    fmt = chat_format(lm, chat, system)
    if fmt is None:
        enc = [(lm.tokenizer(t)["input_ids"], None) for t in texts]
    else:
        enc = [fmt.encode(lm.tokenizer, t) for t in texts]
    ids = [e[0] for e in enc]
    n = max(map(len, ids))
    pad = _pad_id(lm)
    x = torch.full((len(ids), n), pad, dtype=torch.long)
    mask = torch.zeros_like(x)
    keep = torch.zeros_like(x, dtype=torch.bool)
    for j, (t, own) in enumerate(enc):
        x[j, : len(t)] = torch.tensor(t)
        mask[j, : len(t)] = 1
        keep[j, : len(t)] = True if own is None else torch.tensor(own)
    x, mask = x.to(lm.input_device), mask.to(lm.input_device)
    with torch.no_grad():
        base = torch.log_softmax(lm.model(input_ids=x, attention_mask=mask).logits.float(), -1)
        keep = keep.to(base.device)  # the logits' device (the last one under a device map)
        base = base[keep]  # [tokens, vocab]
        p_base = base.exp()
        out = np.zeros(len(steer_sets))
        b = Batches.of(batch_size, "next_token_kl")
        # steer sets per forward pass (one set is a batch of len(texts) rows)
        per = b.size("kl_steer_sets", lm, row_bytes(lm, n, logits=n) * len(ids),
                     len(steer_sets), per=len(ids))  # fmt: skip

        def one(chunk: np.ndarray) -> list[float]:
            sets = [steer_sets[k] for k in chunk]
            rows = [list(s) for s in sets for _ in ids]
            with steering(lm, per_row=rows):
                logits = lm.model(
                    input_ids=x.repeat(len(sets), 1), attention_mask=mask.repeat(len(sets), 1)
                ).logits.float()
            logq = torch.log_softmax(logits, -1).view(len(sets), len(ids), n, -1)
            return [
                float((p_base * (base - logq[k][keep])).sum(-1).mean()) for k in range(len(sets))
            ]

        for chunk, values in b.run("kl_steer_sets", _slices(range(len(steer_sets)), per), one):
            out[chunk] = values
    if b is not batch_size:
        b.report()
    return out


def generate_text(
    lm: LoadedModel,
    prompts: str | Sequence[str],
    *,
    max_new_tokens: int = 30,
    batch_size: BatchSize | Batches = 8,
    chat: str | None = None,
    system: str | None = None,
) -> str | list[str]:
    """Greedy continuation (new text only) of one prompt, or of each of a list; any steering
    that is active (:func:`~emocircuits.interventions.steering.steering`) applies. With
    ``chat="user"`` the prompt is the user's message and the text returned is the
    assistant's reply; with ``chat="assistant"`` the prompt starts the reply and the text
    returned goes on with it (``system``: a system prompt).

    >>> with ec.steering(lm, vecs, "gratitude", layer=15, alpha=0.2):  # doctest: +SKIP
    ...     print(generate_text(lm, "The meeting moved to Thursday.", max_new_tokens=20))
    >>> generate_text(lm, "How was your day?", chat="user")  # doctest: +SKIP
    """
    one = isinstance(prompts, str)
    ids = generate(lm, [prompts] if one else list(prompts), max_new_tokens=max_new_tokens,
                   batch_size=batch_size, chat=chat, system=system)  # fmt: skip
    texts = [lm.tokenizer.decode(x, skip_special_tokens=True) for x in ids]
    return texts[0] if one else texts
