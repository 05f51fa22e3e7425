"""Text scorers against hand-computed values: VADER's direction, marker words, distinct-n
and repetition."""

from __future__ import annotations

import numpy as np
import pytest

from emocircuits.errors import DataError
from emocircuits.interventions.scorers import (
    MARKERS,
    distinct_n,
    marker_rate,
    repetition,
    vader,
    words,
)


def test_vader_separates_grateful_from_angry_text():
    s = vader(["Thank you so much, I'm really grateful!", "I hate this, I'm furious.", "OK."])
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == pytest.approx(0.0, abs=0.3)
    assert ((s >= -1) & (s <= 1)).all()


def test_markers_match_word_prefixes_and_phrases():
    texts = ["I apologise.", "We apologized twice", "My bad, really", "Not bad at all"]
    np.testing.assert_array_equal(marker_rate(texts, "apology"), [1, 1, 1, 0])
    np.testing.assert_array_equal(
        marker_rate(["Thanks!", "I'm thankless? no: thankful", "the bank"], "gratitude"),
        [1, 1, 0],
    )
    np.testing.assert_array_equal(marker_rate(["I am so MAD AT you", "madness"], "anger"), [1, 0])
    assert set(MARKERS) == {"gratitude", "apology", "anger"}
    with pytest.raises(DataError, match="no marker words"):
        marker_rate(["x"], "joy")


def test_distinct_and_repetition_by_hand():
    assert words("It's A test, it's.") == ["it's", "a", "test", "it's"]
    # bigrams: (a b) (b a) (a b) -> 2 distinct of 3
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "a b"], 2) == pytest.approx(1 / 2)
    # trigrams of "a b c a b c": abc bca cab abc -> one repeat of four
    assert repetition("a b c a b c") == pytest.approx(1 / 4)
    assert repetition("one two") == 0.0
