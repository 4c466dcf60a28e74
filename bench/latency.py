"""Added latency from outside the gateway: matching what the load side sent to what came out, sans-I/O.

Caller direction: frame k written by the Twilio client -> the append it produced arriving upstream. The
gateway appends whole `APPEND_MS` pieces; with the default 20 ms and PCM16, the resampler holds back
2.5 ms (60 samples at 24 kHz), so the first frame yields 420 samples, less than one 480-sample append:
append j (1-based) goes out when frame j+1 arrives (`CALLER_FRAME_LAG["pcm16"] == 1`). In G.711 mode
frames pass through one to one (lag 0).

Bot direction: delta j sent upstream -> the first Twilio `media` message carrying its audio. The gateway
converts each delta as it comes and splits the result into media messages, so a delta's audio starts a
new message; where it starts in the call's bot audio (bytes of mu-law) follows from the delta's own
position: PCM16 output is delay-compensated and holds back 20 output samples, so the first new byte of
a delta starting `start_ms` into its item is at `item_offset + start_ms * 8 - 20` (`item_offset` when
`start_ms` is 0); the held-back tail is flushed when the item ends, so items follow each other whole.

Also: a Prometheus-style quantile from cumulative histogram buckets (percentiles of samples are
`gateway.stats.percentile`).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BOT_HOLDBACK_BYTES",
    "BYTES_PER_MS",
    "CALLER_FRAME_LAG",
    "BotMatch",
    "bot_latencies",
    "caller_latencies",
    "delta_first_byte",
    "histogram_quantile",
]

BYTES_PER_MS: Final = 8  # mu-law at 8 kHz
CALLER_FRAME_LAG: Final[Mapping[str, int]] = {"pcm16": 1, "g711": 0}
BOT_HOLDBACK_BYTES: Final[Mapping[str, int]] = {"pcm16": 20, "g711": 0}


def caller_latencies(
    sent_at: Sequence[float], append_at: Sequence[float], frame_lag: int, window: tuple[float, float]
) -> list[float]:
    """Seconds from each frame written in `window` to its append's arrival (append j <- frame j+lag)."""
    start, end = window
    out: list[float] = []
    last = min(len(append_at), len(sent_at) - frame_lag)
    for j in range(max(0, last)):
        sent = sent_at[j + frame_lag]
        if start <= sent < end:
            out.append(append_at[j] - sent)
    return out


def delta_first_byte(item_offset_ms: int, start_ms: int, holdback_bytes: int) -> int:
    """Offset in the call's bot audio (mu-law bytes) of the first byte a delta adds."""
    base = item_offset_ms * BYTES_PER_MS
    return base if start_ms == 0 else base + start_ms * BYTES_PER_MS - holdback_bytes


@dataclass(frozen=True, slots=True)
class BotMatch:
    """Bot-direction latencies (seconds) of deltas sent in a window, and deltas that found no media."""

    latencies: list[float]
    unmatched: int


def bot_latencies(
    deltas: Iterable[tuple[float, int, int]],
    media_at: Sequence[float],
    media_offset: Sequence[int],
    holdback_bytes: int,
    window: tuple[float, float],
    *,
    until: float = math.inf,
) -> BotMatch:
    """Match each delta (sent_at, item_offset_ms, start_ms) sent in `window` and before `until` (the
    first clear: later offsets are not comparable) to the media message starting at its first byte."""
    start, end = window
    out: list[float] = []
    unmatched = 0
    for sent_at, item_offset_ms, start_ms in deltas:
        if not start <= sent_at < end or sent_at >= until:
            continue
        offset = delta_first_byte(item_offset_ms, start_ms, holdback_bytes)
        i = bisect_left(media_offset, offset)
        if i < len(media_offset) and media_offset[i] == offset:
            out.append(media_at[i] - sent_at)
        else:
            unmatched += 1
    return BotMatch(out, unmatched)


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: `buckets` are (upper bound, cumulative count) sorted by bound,
    the last one +Inf; linear interpolation inside the bucket. NaN without observations."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # as Prometheus does: the highest finite bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
