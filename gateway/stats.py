"""Percentiles of measured figures, one definition for the load generator, the benches and the reports.

The definition is numpy's default (`method="linear"`, Hyndman and Fan's type 7): sort the n values,
take the rank `(n - 1) * q / 100`, and interpolate linearly between the two values around it. So q=0 is
the smallest value, q=100 the largest, and one value is every percentile of itself.

No values have no percentile: the answer is NaN. That is a number in a report (JSON keeps it), and it
compares false with every bound, so a check such as `p99 <= limit` fails on an empty window instead of
passing. Callers that want "no figure" (None) test for emptiness first.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values` (any order), interpolated linearly between the
    closest ranks as numpy's default does; NaN when there are no values. Raises ValueError for a q out
    of range."""
    if not 0 <= q <= 100:
        raise ValueError(f"a percentile is between 0 and 100, got {q}")
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
