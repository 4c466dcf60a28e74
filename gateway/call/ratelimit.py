"""A token bucket for caller media: Twilio sends 50 frames a second; a flood is dropped, not queued.

A sans-I/O core: time is an argument. The burst allows a provider to catch up after a network stall
(Twilio may deliver a backlog at once) without letting a hostile client push audio faster than real time
for long.
"""

from __future__ import annotations

__all__ = ["FrameBudget"]


class FrameBudget:
    """`rate_per_s` frames a second on average, `burst` at once; `allow(now_ms)` spends one frame."""

    __slots__ = ("_last_ms", "_tokens", "burst", "dropped", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._last_ms: int | None = None
        self.dropped = 0

    def allow(self, now_ms: int) -> bool:
        """True if a frame arriving at `now_ms` is within budget; False (and counted) if it is excess."""
        if self._last_ms is not None:
            elapsed = max(0, now_ms - self._last_ms)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s / 1000)
        self._last_ms = now_ms
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.dropped += 1
        return False
