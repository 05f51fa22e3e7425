"""Steering SmolLM2-135M for real: one_vs_rest directions from the `baseline` preset, layer
15, alpha 0.25 of the typical residual norm, greedy, on ten neutral prompts, 30 tokens.
Measured: gratitude +0.50 VADER, the random direction -0.04, apology markers in 40% of
continuations (70% with directions from `extended`; anger -0.64 there). The thresholds
leave a margin below these; the issue's targets are for the sweep's recommended settings,
which do not exist yet."""

from __future__ import annotations

import numpy as np
import pytest

import emocircuits as ec
from emocircuits.geometry import compute_vectors
from emocircuits.interventions import typical_norms
from emocircuits.interventions.run import steer_prompts
from emocircuits.interventions.summary import summarize

pytestmark = pytest.mark.real

PROMPTS = [
    "The meeting has been moved to Thursday afternoon.",
    "I went to the store this morning and",
    "Here is what happened at work today:",
    "My neighbour called me yesterday about the fence.",
    "The package arrived this afternoon, and",
    "We talked about the schedule for next week.",
    "I read your message about the project.",
    "The train was on time, so I",
    "Let me tell you about the new office.",
    "Yesterday I met my brother for lunch and",
]


@pytest.fixture(scope="module")
def steered(smollm2, tmp_path_factory):
    spec = ec.CaptureSpec(sites=("resid",), positions=("mean",), batch_size=32)
    acts = ec.extract(smollm2, ec.load_dataset("baseline"), tmp_path_factory.mktemp("st") / "a",
                      spec, progress=False)  # fmt: skip
    vecs = compute_vectors(acts, method="one_vs_rest")
    scales = typical_norms(smollm2, [e.text for e in ec.load_dataset("baseline").examples][::3])
    out = {}
    for emotion in ("gratitude", "anger", "apology"):
        rows = steer_prompts(smollm2, PROMPTS, vecs, emotion, layers=[15], alphas=[0.25],
                             scales=scales, max_new_tokens=30, batch_size=32,
                             n_random=1)  # fmt: skip
        out[emotion] = {r["condition"]: r for r in summarize(rows)}
    return out


def test_directions_move_the_tone_and_a_random_push_does_not(steered):
    assert steered["gratitude"]["direction"]["vader_change"] >= 0.25, steered["gratitude"]
    assert steered["anger"]["direction"]["vader_change"] <= -0.25, steered["anger"]
    assert steered["apology"]["direction"]["marker_apology"] >= 0.3, steered["apology"]
    for emotion, s in steered.items():
        assert abs(s["random"]["vader_change"]) < 0.15, (emotion, s["random"])
        assert s["none"]["marker_apology"] <= 0.1  # the unsteered text has no apologies
        assert np.isfinite(s["direction"]["perplexity_ratio_median"])
