"""Where each site of layer l lives (``Architecture.place``), for every tiny architecture:
reading the residual stream there gives transformers' own ``output_hidden_states``,
writing there changes exactly that hidden state, and the hooks are gone afterwards."""

from __future__ import annotations

import pytest
import torch

from emocircuits.capture.hooks import count_hooks, hooked
from emocircuits.errors import CaptureError

from conftest import TINY_CONFIGS
from helpers import close

TEXT = "Thank you so much for staying late to help me."


def _ids(lm):
    return torch.tensor([lm.tokenizer(TEXT)["input_ids"]])


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_resid_place_reads_output_hidden_states(tiny, arch):
    lm = tiny(arch)
    a, ids = lm.arch, _ids(lm)
    got: dict[int, torch.Tensor] = {}

    def keep(layer):
        return lambda h: got.__setitem__(layer, h.detach().clone())

    places = [a.place("resid", layer) for layer in range(a.n_layers + 1)]
    with torch.no_grad():
        lm.model(input_ids=ids, output_hidden_states=True)  # transformers adds its own hooks
    before = count_hooks(lm.model)
    with torch.no_grad(), hooked([p.read(keep(p.layer)) for p in places]):
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    assert count_hooks(lm.model) == before
    for layer in range(a.n_layers):  # hidden_states[L] is after the final norm
        close(got[layer].numpy(), hs[layer].numpy(), f"{arch} resid {layer}")
    with torch.no_grad():
        close(a.final_norm(got[a.n_layers]).numpy(), hs[a.n_layers].numpy(), f"{arch} last")
    assert places[0].kind == "pre" and places[0].module is a.blocks[0]
    assert all(p.module is a.blocks[p.layer - 1] and p.kind == "forward" for p in places[1:])


@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
def test_resid_place_edit_changes_that_state_and_what_follows(tiny, arch):
    lm = tiny(arch)
    a, ids = lm.arch, _ids(lm)
    with torch.no_grad():
        clean = lm.model(input_ids=ids, output_hidden_states=True)
        before = count_hooks(lm.model)  # after transformers' own lazily added hooks
        for layer in (0, a.n_layers - 1):
            seen: dict[int, torch.Tensor] = {}
            edit = a.place("resid", layer).edit(lambda h: h + 1.0)
            reads = [
                a.place("resid", i).read(lambda h, i=i, s=seen: s.__setitem__(i, h.clone()))
                for i in range(layer + 1)
            ]  # registered after the edit: they see the edited state
            with hooked([edit, *reads]):
                logits = lm.model(input_ids=ids).logits
            hs = clean.hidden_states
            close(seen[layer].numpy(), (hs[layer] + 1.0).numpy(), f"{arch} edit {layer}")
            if layer:
                close(seen[layer - 1].numpy(), hs[layer - 1].numpy(), f"{arch} before")
            assert not torch.allclose(logits, clean.logits)
    assert count_hooks(lm.model) == before


def test_place_normalises_negative_layers_and_refuses_out_of_range(tiny):
    a = tiny("llama").arch
    assert a.place("resid", -1).layer == a.n_layers
    assert a.place("resid", -1).block == a.n_layers - 1
    assert a.place("attn", -1).layer == a.n_layers - 1
    assert a.place("heads", 0).module is a.o_proj(0) and a.place("heads", 0).kind == "pre"
    assert a.place("mlp", 1).module is a.mlp_out(1)
    with pytest.raises(CaptureError, match="out of range"):
        a.place("resid", a.n_layers + 1)
    with pytest.raises(CaptureError, match="unknown site"):
        a.place("neurons", 0)


def test_place_hooks_are_removed_after_an_exception(tiny):
    lm = tiny("gpt2")
    before = count_hooks(lm.model)

    def boom(h):
        raise RuntimeError("boom")

    hooks = [lm.arch.place("resid", 2).edit(boom)]
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), hooked(hooks):
        lm.model(input_ids=_ids(lm))
    assert count_hooks(lm.model) == before
