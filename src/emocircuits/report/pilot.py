"""What the pilot claimed for each research question, and why our numbers can differ.

Sources: the pilot's two reports (named in each claim's ``source``; the final one is in
Japanese, and quotations are translated) and the pitfalls of docs/METHODS.md (pitfalls
1-7). Only what those texts say is written here; the report puts our own numbers next to it.

>>> sorted(PILOT)
['rq1', 'rq2', 'rq3', 'rq4']
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PilotClaim:
    """The pilot's answer to one question, how it got it, and why ours may differ."""

    claim: str
    method: str
    why_different: str
    source: str


FINAL = "pilot-final-report.ja.txt"
PHASE3 = "pilot-phase3-report.txt"

PILOT: dict[str, PilotClaim] = {
    "rq1": PilotClaim(
        claim=(
            "Yes: each model (GPT-2 small, Pythia-160M, GPT-Neo-125M) has stable emotion "
            "direction vectors when they are read at the emotion-word token. At the last "
            "token Pythia-160M's emotions all had cosine about 0.99 with each other "
            "(gratitude vs anger 0.9861); at the emotion-word token this became -0.7288, "
            "which the pilot read as emotions becoming distinct."
        ),
        method=(
            "One vector per emotion and layer: the plain mean of that emotion's activations "
            "(no contrast with neutral prompts, no centring), at the last token and later at "
            "the emotion word's token; 50 prompts per class; cosines between emotions "
            "reported without intervals. Stability itself (agreement between halves of the "
            "data) was not measured."
        ),
        why_different=(
            "Residual streams carry a large component shared by every prompt, so raw class "
            "means have cosine near 0.99 whatever the emotion (docs/METHODS.md: pitfall 1): the "
            "0.99 measured the shared component, and moving to another token changed which "
            "component dominates, not whether emotions are encoded. We use contrasts "
            "(emotion mean minus neutral mean, or minus the other classes) on centred "
            "activations, give bootstrap intervals, measure stability as split-half cosine, "
            "and test decodability with k-fold probes against chance and against layer 0: "
            "a direction read at the emotion word can be mostly the word's own embedding "
            "(pitfall 6)."
        ),
        source=f"{FINAL} (key findings 1, answer to RQ1); {PHASE3} (intra-model similarities)",
    ),
    "rq2": PilotClaim(
        claim=(
            "Directions differ but subspaces are similar: the cosine between the same "
            "emotion's vectors of two models was about 0 (-0.05 to 0.03, 'emotion vectors "
            "are model-specific'), while the overlap of emotion subspaces across models was "
            "0.13-0.15, 'higher than the random baseline of 0.0-0.1'."
        ),
        method=(
            "Cosine of coordinate i of one model's vector with coordinate i of another's, "
            "layer by layer; PCA subspaces per model compared by overlap against a random "
            "range that was not computed from the data."
        ),
        why_different=(
            "Coordinate i of one model has nothing to do with coordinate i of another, so "
            "a cosine across models is the null itself: two random unit vectors in 768 "
            "dimensions give 0 +- 0.036, which is what the pilot measured (pitfall 4). For "
            "random k-dimensional subspaces of R^d the expected overlap is k/d (0.004 for "
            "k = 3, d = 768), and a data-matched null is needed rather than a guessed range "
            "(pitfall 5). We use measures that do not change when either model's "
            "activations are rotated (linear CKA, RSA of emotion centroids, mutual nearest "
            "neighbours) over every pair of layers, and Procrustes and ridge maps fitted on "
            "half of the prompts and tested on the other half, each against a permutation "
            "null. The pilot's coordinate table is kept (naive.csv) beside a random-rotation "
            "null, for comparison only."
        ),
        source=f"{FINAL} (key findings 2-3, answer to RQ2); {PHASE3} (cross-model tables)",
    ),
    "rq3": PilotClaim(
        claim=(
            "Not measured: the pilot answered RQ3 with 'activation patching was implemented "
            "and run; it works; a detailed evaluation needs further analysis'. No text was "
            "generated with a direction added, and no change of tone was reported."
        ),
        method="Activation patching on GPT-2 and GPT-Neo-125M (results pickled, no metric).",
        why_different=(
            "Patching shows where information is used, not whether adding a direction "
            "changes what the model writes. We add alpha x (typical residual norm) x (unit "
            "direction) while the model generates, sweep layers and strengths, score the "
            "continuations with scorers independent of the model (VADER, NRC lexicon, "
            "emotion-marker words) and fluency costs (perplexity under the unsteered model, "
            "distinct-2, KL divergence on neutral text), against a norm-matched random "
            "direction (and, for chat models, a prompting baseline), with bootstrap "
            "intervals."
        ),
        source=f"{FINAL} (phase 4-light, answer to RQ3)",
    ),
    "rq4": PilotClaim(
        claim=(
            "Not done in the pilot: heads and MLP units were left for future work "
            "('not carried out in this pilot')."
        ),
        method="None.",
        why_different=(
            "We measure each attention head's and MLP neuron's direct contribution to the "
            "emotion direction (emotion minus neutral prompts, bootstrap intervals), "
            "mean-ablate the top-k heads against random sets of k heads, patch emotion runs "
            "into length-matched neutral runs (whole residual and only its component along "
            "the direction) with a logit-difference metric, and project the directions out "
            "against random directions (Tigges et al. 2023)."
        ),
        source=f"{FINAL} (answer to RQ4, future work 2)",
    ),
}
