"""The caller-media budget: real time plus a burst passes; a flood is dropped and counted."""

from __future__ import annotations

import pytest

from gateway.call.ratelimit import FrameBudget


def test_real_time_frames_always_pass() -> None:
    """50 frames a second, one every 20 ms, never exhaust the budget."""
    budget = FrameBudget(50, burst=10)
    assert all(budget.allow(i * 20) for i in range(1000))
    assert budget.dropped == 0


def test_burst_then_drops_then_refill() -> None:
    """A backlog up to the burst passes at once; beyond it frames drop until time refills the bucket."""
    budget = FrameBudget(50, burst=10)
    passed = [budget.allow(0) for _ in range(15)]
    assert passed.count(True) == 10
    assert budget.dropped == 5
    assert not budget.allow(10)  # half a frame's worth of time: still empty
    assert budget.allow(20)


def test_invalid_settings_are_refused() -> None:
    """A zero rate or burst is a configuration bug."""
    with pytest.raises(ValueError, match="rate_per_s"):
        FrameBudget(0, burst=1)
