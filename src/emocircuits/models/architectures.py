"""The one module that knows where things live inside each supported architecture.

Everything else asks :func:`architecture` for blocks, attention and MLP outputs, the
attention output projection, head counts and layer numbers, and
:meth:`Architecture.place` for where a site of layer ``l`` is read and written (the
residual stream at layer ``l`` is the output of block ``l - 1``; layer 0 is the input of
block 0): capture, steering, patching, ablation, heads and the traced forward all ask it.
To add a family, append an :class:`ArchSpec` to ``SPECS`` (module paths are dotted
attribute paths, see the existing entries), then add a tiny config to
``tests/conftest.py::TINY_CONFIGS``: the tests check the new entry against transformers'
own ``output_hidden_states``.

>>> spec_for("llama").blocks
'layers'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import reduce
from typing import Any

import torch
from torch import nn

from emocircuits.errors import CaptureError, ModelError

SITES = ("resid", "attn", "mlp", "heads")
"""Capture sites: residual stream, attention output, MLP output, per-head attention input
to the output projection (``z``)."""


@dataclass(frozen=True)
class ArchSpec:
    """Where one family keeps its parts. Paths are relative to the base model / block."""

    model_types: tuple[str, ...]
    blocks: str  # from the base model (``model.base_model``) to the ModuleList of blocks
    attn_out: str  # from a block to the module whose output is added to the residual
    mlp_out: str  # likewise for the MLP
    o_proj: str  # from a block to the attention output projection (input = per-head z)
    final_norm: str  # from the base model
    mlp_proj: str  # from a block to the MLP's output (down) projection (input = neurons)
    conv1d: bool = False  # GPT-2's Conv1D stores weights as [in, out]
    post_norm: bool = False  # attn_out / mlp_out are RMSNorms of the projections' outputs
    parallel: Callable[[Any], bool] = lambda config: False


SPECS: tuple[ArchSpec, ...] = (
    ArchSpec(("gpt2",), "h", "attn", "mlp", "attn.c_proj", "ln_f", "mlp.c_proj", conv1d=True),
    ArchSpec(
        ("gpt_neox",),
        "layers",
        "attention",
        "mlp",
        "attention.dense",
        "final_layer_norm",
        "mlp.dense_4h_to_h",
        parallel=lambda c: bool(getattr(c, "use_parallel_residual", True)),
    ),
    ArchSpec(("gpt_neo",), "h", "attn", "mlp", "attn.attention.out_proj", "ln_f", "mlp.c_proj"),
    ArchSpec(
        ("llama", "mistral", "qwen2", "qwen3", "gemma"),
        "layers",
        "self_attn",
        "mlp",
        "self_attn.o_proj",
        "norm",
        "mlp.down_proj",
    ),
    # Gemma 2/3 normalise each sublayer's output before adding it to the residual stream:
    # what the block adds is the output of the post-sublayer norms.
    ArchSpec(
        ("gemma2", "gemma3_text"),
        "layers",
        "post_attention_layernorm",
        "post_feedforward_layernorm",
        "self_attn.o_proj",
        "norm",
        "mlp.down_proj",
        post_norm=True,
    ),
)

_BY_TYPE = {t: s for s in SPECS for t in s.model_types}
SUPPORTED = tuple(sorted(_BY_TYPE))


def parse_layers(text: str) -> list[int]:
    """A layer list as users write it: ``"0,5,-1"``, ``"10-20"`` (inclusive) or a mix.

    >>> parse_layers("0,10-12,-1")
    [0, 10, 11, 12, -1]
    """
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            if "-" in part.lstrip("-"):
                a, b = part.lstrip("-").split("-", 1)
                lo = -int(a) if part.startswith("-") else int(a)
                out += list(range(lo, int(b) + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise ValueError(f"not a layer list: {text!r}") from None
    return out


def spec_for(model_type: str) -> ArchSpec:
    """The :class:`ArchSpec` for a ``config.model_type``, or a clear :class:`ModelError`."""
    try:
        return _BY_TYPE[model_type]
    except KeyError:
        raise ModelError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(SUPPORTED)}. "
            "To add one, append an ArchSpec to emocircuits/models/architectures.py "
            "(see docs/ARCHITECTURES.md)"
        ) from None


def _get(root: nn.Module, path: str) -> nn.Module:
    return reduce(getattr, path.split("."), root)


def _hooks(module: nn.Module) -> list[Any]:
    """accelerate's hooks on ``module`` (``_hf_hook``, a ``SequentialHook`` unpacked)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        return []
    return list(getattr(hook, "hooks", None) or [hook])


def module_device(module: nn.Module) -> torch.device:
    """Where ``module`` computes: the execution device of accelerate's hook when a device
    map placed it (its parameters may sit on ``meta``, offloaded to CPU or disk, until the
    hook loads them for its forward), else the device of its first parameter or buffer.

    >>> module_device(torch.nn.Linear(2, 2))
    device(type='cpu')
    """
    for h in _hooks(module):
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(f"cuda:{dev}" if isinstance(dev, int) else dev)
    for t in (*module.parameters(), *module.buffers()):
        if t.device.type != "meta":
            return t.device
    return torch.device("cpu")


def is_offloaded(module: nn.Module) -> bool:
    """Whether accelerate keeps ``module``'s own weights offloaded (on ``meta`` between
    forward passes)."""
    return any(getattr(h, "offload", False) for h in _hooks(module))


@contextmanager
def materialised(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``module``'s own parameters are real tensors on its execution
    device, also when accelerate offloads them to CPU or disk (its
    ``align_module_device`` loads them as the module's forward would, and puts them back
    on exit). Tensors read inside stay valid after the block.

    >>> with materialised(lm.model.get_output_embeddings()) as emb:  # doctest: +SKIP
    ...     rows = emb.weight[[3, 7]].clone()
    """
    if not is_offloaded(module):
        yield module
        return
    from accelerate.utils import align_module_device

    with align_module_device(module):
        yield module


def _check_float(module: nn.Module, what: str) -> None:
    w = module.weight
    if not w.dtype.is_floating_point:
        raise ModelError(
            f"the {what} weights of this model are quantised ({type(w).__name__}, "
            f"{str(w.dtype).removeprefix('torch.')}): analyses that read weights directly "
            "(heads, extract --heads) need a model loaded without quantization"
        )


@dataclass(frozen=True)
class Place:
    """Where site ``site`` of layer ``layer`` lives: the input (``kind="pre"``, a forward
    pre-hook with keyword arguments) or the output (``kind="forward"``) of ``module``.
    ``block`` is the block whose run yields it (resid layer 0: block 0, before it runs).
    ``read`` and ``edit`` make ``(module, kind, fn)`` hooks for
    :func:`~emocircuits.capture.hooks.hooked`.

    >>> with hooked([lm.arch.place("resid", 3).edit(lambda h: 2 * h)]):  # doctest: +SKIP
    ...     lm.model(**inputs)
    """

    site: str
    layer: int
    module: nn.Module
    kind: str
    block: int

    def read(self, fn: Callable[[torch.Tensor], None]) -> tuple[nn.Module, str, Callable]:
        """A hook that calls ``fn(h)`` with the site's tensor ``[batch, seq, ...]`` (for
        ``heads``: ``[batch, seq, n_heads * head_dim]``)."""
        if self.kind == "pre":

            def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
                fn(args[0] if args else kwargs["hidden_states"])

            return self.module, "pre", pre

        def forward(module: Any, args: Any, output: Any) -> None:
            fn(output[0] if isinstance(output, tuple | list) else output)

        return self.module, "forward", forward

    def edit(
        self, fn: Callable[[torch.Tensor], torch.Tensor | None]
    ) -> tuple[nn.Module, str, Callable]:
        """A hook that replaces the site's tensor ``h`` by ``fn(h)`` (None: unchanged)."""
        if self.kind == "pre":

            def pre(module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
                new = fn(args[0] if args else kwargs["hidden_states"])
                if new is None:
                    return None
                if args:
                    return (new, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": new}

            return self.module, "pre", pre

        def forward(module: Any, args: Any, output: Any) -> Any:
            tup = isinstance(output, tuple | list)
            new = fn(output[0] if tup else output)
            if new is None:
                return None
            return (new, *output[1:]) if tup else new

        return self.module, "forward", forward


@dataclass
class Architecture:
    """A model's parts, resolved once. Layer numbers follow the residual convention:
    ``resid`` has ``n_layers + 1`` entries (0 = embedding output, i = output of block i);
    ``attn``, ``mlp`` and ``heads`` have ``n_layers`` (i = block i)."""

    spec: ArchSpec
    model_type: str
    base_model: nn.Module
    blocks: list[nn.Module]
    n_layers: int
    width: int
    n_heads: int
    head_dim: int
    parallel: bool

    def attn_out(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.attn_out)

    def mlp_out(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.mlp_out)

    def o_proj(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.o_proj)

    @property
    def final_norm(self) -> nn.Module:
        return _get(self.base_model, self.spec.final_norm)

    def mlp_proj(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.mlp_proj)

    def _weight(self, m: nn.Module, what: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W, bias)`` of a projection, read on its execution device (loaded through
        accelerate's hook when offloaded; a quantised weight is refused)."""
        with materialised(m):
            _check_float(m, what)
            w = m.weight.detach()
            b = None if getattr(m, "bias", None) is None else m.bias.detach()
        return (w.T if self.spec.conv1d else w), b

    def o_proj_weight(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Output projection as ``(W [width, n_heads*head_dim], bias or None)``, so that the
        attention output is ``z @ W.T + b`` and head h contributes
        ``z[..., h*head_dim:(h+1)*head_dim] @ W[:, h*head_dim:(h+1)*head_dim].T``."""
        return self._weight(self.o_proj(layer), "attention output projection")

    def mlp_proj_weight(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """MLP output (down) projection as ``(W [width, n_neurons], bias or None)``: the
        MLP output is ``a @ W.T + b`` for neuron activations ``a`` (the projection's input),
        and neuron j writes ``a[..., j] * W[:, j]``."""
        return self._weight(self.mlp_proj(layer), "MLP output projection")

    def post_norm(self, layer: int, site: str) -> nn.Module | None:
        """Gemma 2/3: the RMSNorm applied to the attention (``site="attn"``) or MLP
        (``"mlp"``) output before it is added to the residual stream; None elsewhere."""
        if not self.spec.post_norm:
            return None
        if site not in ("attn", "mlp"):
            raise CaptureError(f"post_norm: site must be 'attn' or 'mlp', not {site!r}")
        return self.attn_out(layer) if site == "attn" else self.mlp_out(layer)

    def post_norm_gain(self, layer: int, site: str) -> torch.Tensor | None:
        """The elementwise gain ``g`` of :meth:`post_norm` (``y = g * x / rms(x)``), up to a
        constant factor: the norm applied to a vector of ones. Measured, so Gemma's
        ``(1 + weight)`` convention needs no special case; None without a post-norm."""
        norm = self.post_norm(layer, site)
        if norm is None:
            return None
        p = next(norm.parameters())  # its dtype is right also on "meta" (offloaded)
        with torch.no_grad():  # the call loads offloaded weights through accelerate's hook
            return norm(torch.ones(self.width, dtype=p.dtype, device=module_device(norm))).float()

    def n_site_layers(self, site: str) -> int:
        if site not in SITES:
            raise CaptureError(f"unknown site {site!r}; choose from {', '.join(SITES)}")
        return self.n_layers + 1 if site == "resid" else self.n_layers

    def normalize_layer(self, layer: int, site: str = "resid") -> int:
        """Map a possibly negative layer number to its index; out of range is an error.

        >>> arch.normalize_layer(-1, "resid")  # doctest: +SKIP
        30
        """
        n = self.n_site_layers(site)
        if not -n <= layer < n:
            raise CaptureError(
                f"layer {layer} is out of range for site {site!r}: this model has {n} "
                f"{site} layers (0..{n - 1}, or -{n}..-1)"
            )
        return layer % n

    def place(self, site: str, layer: int) -> Place:
        """Where ``site`` of ``layer`` (negative counts from the end) is read and written:
        ``resid`` layer 0 is the input of block 0, layer ``l >= 1`` the output of block
        ``l - 1`` (what ``output_hidden_states`` calls ``hidden_states[l]``); ``attn`` and
        ``mlp`` are the outputs of what block ``l`` adds to the residual stream; ``heads``
        the input of block ``l``'s attention output projection.

        >>> arch.place("resid", 0).kind, arch.place("resid", -1).block  # doctest: +SKIP
        ('pre', 29)
        """
        i = self.normalize_layer(layer, site)
        if site == "resid":
            if i == 0:
                return Place(site, 0, self.blocks[0], "pre", 0)
            return Place(site, i, self.blocks[i - 1], "forward", i - 1)
        if site == "attn":
            return Place(site, i, self.attn_out(i), "forward", i)
        if site == "mlp":
            return Place(site, i, self.mlp_out(i), "forward", i)
        return Place(site, i, self.o_proj(i), "pre", i)


def architecture(model: nn.Module) -> Architecture:
    """Resolve the parts of a transformers causal LM (or its base model).

    >>> arch = architecture(model)  # doctest: +SKIP
    >>> arch.n_layers, arch.width, arch.n_heads  # doctest: +SKIP
    (30, 576, 9)
    """
    config = model.config
    spec = spec_for(config.model_type)
    base = getattr(model, "base_model", model)
    blocks = list(_get(base, spec.blocks))
    tmp = Architecture(spec, config.model_type, base, blocks, len(blocks), 0, 0, 0, False)
    o = tmp.o_proj(0)
    n_heads = int(getattr(config, "num_attention_heads", None) or config.num_heads)
    if hasattr(o, "in_features"):  # nn.Linear, also quantised (its weight is packed)
        width, inner = o.out_features, o.in_features
    else:  # GPT-2's Conv1D: [in, out]; shapes are known also on "meta" (offloaded)
        inner, width = o.weight.shape
    tmp.width, tmp.n_heads, tmp.head_dim = int(width), n_heads, int(inner) // n_heads
    tmp.parallel = spec.parallel(config)
    return tmp
