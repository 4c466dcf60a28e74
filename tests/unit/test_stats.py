"""The one percentile: numpy's linear definition, NaN for no values, the same for every caller."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.stats import percentile

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@pytest.mark.parametrize("q", [0, 1, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy_linear_on_a_fixed_sample(q: float) -> None:
    """On unsorted values, every percentile equals numpy's default (linear) method."""
    values = [12.0, 3.0, 7.5, 100.0, 42.0, 8.0, 9.0]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q, method="linear")))


@settings(max_examples=300, deadline=None)
@given(values=st.lists(finite, min_size=1, max_size=50), q=st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_linear_everywhere(values: list[float], q: float) -> None:
    """Any non-empty sample and any q in 0..100 give numpy's linear percentile."""
    expected = float(np.percentile(values, q, method="linear"))
    assert percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_percentile_interpolates_between_ranks_not_nearest_rank() -> None:
    """The median of an even count is the midpoint of the middle two (nearest-rank would pick one)."""
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([10.0, 20.0], 25) == 12.5
    assert percentile(range(1, 101), 99) == pytest.approx(99.01)


def test_percentile_ends_are_the_extremes_in_any_order() -> None:
    """q=0 is the smallest value and q=100 the largest, whatever the input order (generators too)."""
    values = [5.0, -2.0, 9.5, 0.0]
    assert percentile(values, 0) == -2.0
    assert percentile(values, 100) == 9.5
    assert percentile(iter(values), 100) == 9.5
    assert values == [5.0, -2.0, 9.5, 0.0]  # the caller's list is not sorted in place


@pytest.mark.parametrize("q", [0, 50, 99, 100])
def test_one_value_is_every_percentile_of_itself(q: float) -> None:
    """A single sample is its own p0, p50, p99 and p100."""
    assert percentile([7.25], q) == 7.25


@pytest.mark.parametrize("q", [0, 50, 100])
def test_no_values_give_nan(q: float) -> None:
    """An empty sample has no percentile: NaN (which fails any `<= bound` check), not an exception."""
    result = percentile([], q)
    assert math.isnan(result)
    assert not result <= 10.0


@pytest.mark.parametrize("q", [-0.1, 100.5, math.nan])
def test_q_out_of_range_is_refused(q: float) -> None:
    """A q outside 0..100 is the caller's mistake: ValueError, never an extrapolated number."""
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0, 2.0], q)
