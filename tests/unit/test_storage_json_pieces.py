"""JSON in pieces parses to what ``json.dumps`` gives, and every piece is small."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tradingd.storage.json_pieces import SLICE, json_pieces

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=40)


@given(documents, st.sampled_from([None, 2]))
def test_the_text_parses_to_the_same_value(document: Any, indent: int | None) -> None:
    assert json.loads("".join(json_pieces(document, indent=indent))) == json.loads(json.dumps(document))


def test_long_curves_are_encoded_a_slice_at_a_time() -> None:
    curves = {"timestamps": ["2020-01-01"] * 3, "curves": {str(i): [1.5 + i] * (3 * SLICE + 7) for i in range(4)}}
    pieces = list(json_pieces({"equity": curves}, indent=2))
    assert json.loads("".join(pieces)) == {"equity": curves}
    longest = max(len(piece) for piece in pieces)
    assert longest < len(json.dumps([1.5] * SLICE)) + 8  # no piece is more than a slice of a curve


def test_arrays_are_written_as_the_lists_of_their_values() -> None:
    curve = np.cumprod(np.full(2 * SLICE + 3, 1.0001)) * 10_000.0
    document = {"curves": {"0": curve, "1": curve[:2], "2": np.array([], dtype=np.float64)}}
    pieces = list(json_pieces(document, indent=2))
    assert json.loads("".join(pieces)) == {"curves": {"0": curve.tolist(), "1": curve[:2].tolist(), "2": []}}
    assert max(len(piece) for piece in pieces) < len(json.dumps(curve.tolist())) / 2  # a slice, not the curve


@pytest.mark.parametrize("document", [{"a": [[1.0, math.nan]]}, {"a": np.array([1.0, math.inf])}])
def test_non_finite_numbers_are_refused(document: Any) -> None:
    with pytest.raises(ValueError):
        "".join(json_pieces(document))
