"""Added latency from outside the gateway: matching what the load side sent to what came out, sans-I/O.

Caller direction: frame k written by the phone -> the append it produced arriving upstream. The gateway
appends whole `APPEND_MS` pieces; with the default 20 ms and PCM16, the resampler holds back its group
delay (2.5 ms from 8 kHz, 1.25 ms from 16 kHz), so the first frame yields less than one 480-sample
append: append j (1-based) goes out when frame j+1 arrives (a lag of one frame). L16 at 24 kHz passes
through, and in G.711 mode mu-law passes through (lag 0).

Bot direction: delta j sent upstream -> the first media message carrying its audio. The gateway converts
each delta as it comes and cuts an item's converted audio into messages as the leg's `PlayoutRule` says
(`gateway.call.core`). `LegLayout` says, for one leg format and AUDIO_MODE, where the first byte a delta
adds lands in the call's bot audio (bytes of the leg's format): a delta starting `start_ms` into its
item adds from `start_ms * bytes_per_ms - holdback` (0 for the item's first delta), where `holdback` is
the resampler's delay (20 samples to 8 or 16 kHz, none to 24 kHz or in G.711 mode); the held-back tail
is flushed when the item ends, and the item's last message is padded to the rule's minimum, so the next
item starts `item_bytes(item_ms)` later. The delta is matched to the one media message whose byte range
holds that byte.

Without a minimum message size (Twilio, SignalWire, Plivo, ACS) that message goes out as the delta is
converted. With one (Exotel: 3,200 bytes; Telnyx and Vonage: whole 20 ms frames), the message may need
audio the service has not sent yet: a later delta, or the item's end. Such a delta waits by design, for
the service, not for the gateway; `BotMatch.immediate` holds the latencies of the deltas that did not
(the gateway's own delay), `BotMatch.latencies` those of all.

The figures for Twilio (mu-law 8 kHz) are the ones this module always gave: `BYTES_PER_MS`,
`CALLER_FRAME_LAG`, `BOT_HOLDBACK_BYTES` and `delta_first_byte` are that layout's.

Also: a Prometheus-style quantile from cumulative histogram buckets (percentiles of samples are
`gateway.stats.percentile`).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from gateway.telephony.events import PlayoutRule
from telcodec import BotPath, CallerPath, Encoding, WireFormat

__all__ = [
    "BOT_HOLDBACK_BYTES",
    "BYTES_PER_MS",
    "CALLER_FRAME_LAG",
    "MODES",
    "ULAW_8K",
    "BotMatch",
    "Delta",
    "LegLayout",
    "bot_latencies",
    "caller_latencies",
    "delta_first_byte",
    "histogram_quantile",
    "paced_latencies",
]

ULAW_8K: Final = WireFormat(Encoding.ULAW, 8000)
MODES: Final = ("pcm16", "g711")  # the gateway's AUDIO_MODE
BYTES_PER_MS: Final = 8  # mu-law at 8 kHz
CALLER_FRAME_LAG: Final[Mapping[str, int]] = {"pcm16": 1, "g711": 0}  # mu-law 8 kHz
BOT_HOLDBACK_BYTES: Final[Mapping[str, int]] = {"pcm16": 20, "g711": 0}  # mu-law 8 kHz
PLAYOUT_CHUNK_MS: Final = 40  # the gateway's default PLAYOUT_CHUNK_MS


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
    """Offset in the call's bot audio (mu-law bytes) of the first byte a delta adds (Twilio's layout)."""
    base = item_offset_ms * BYTES_PER_MS
    return base if start_ms == 0 else base + start_ms * BYTES_PER_MS - holdback_bytes


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass(frozen=True, slots=True)
class LegLayout:
    """How the gateway lays a call's bot audio out on one leg, in bytes of the leg's format, and how many
    caller frames it holds back before its first append. Build it with `LegLayout.of`."""

    bytes_per_ms: int
    holdback_bytes: int = 0  # the resampler's delay, emitted with the item's next delta or its end
    chunk_bytes: int = 320  # a whole message (with a minimum: items are cut into these, the last padded)
    min_bytes: int = 0
    multiple_bytes: int = 1
    caller_frame_lag: int = 0

    @classmethod
    def of(
        cls,
        fmt: WireFormat,
        mode: str,
        playout: PlayoutRule | None = None,
        *,
        playout_chunk_ms: int = PLAYOUT_CHUNK_MS,
    ) -> LegLayout:
        """The layout for a leg streaming `fmt` under AUDIO_MODE `mode` with the dialect's `playout` rule.

        ValueError for `g711` and any format but mu-law 8 kHz: the gateway cannot pass it through and
        ends such a call at once (outcome protocol_error)."""
        rule = playout if playout is not None else PlayoutRule()
        if mode not in MODES:
            raise ValueError(f"unknown AUDIO_MODE {mode!r}: one of {', '.join(MODES)}")
        if mode == "g711" and fmt != ULAW_8K:
            raise ValueError(f"AUDIO_MODE=g711 passes mu-law 8 kHz through; the gateway refuses {fmt} calls")
        transcode = mode == "pcm16"
        holdback = round(BotPath(fmt.encoding, fmt.rate).delay_ms * fmt.rate / 1000) if transcode else 0
        caller_lag = 1 if transcode and CallerPath(fmt.encoding, fmt.rate).delay_ms > 0 else 0
        multiple = max(rule.multiple_bytes, fmt.bytes_per_sample)
        chunk = fmt.frame_bytes(rule.chunk_ms or playout_chunk_ms)
        return cls(
            bytes_per_ms=fmt.bytes_per_ms,
            holdback_bytes=holdback * fmt.bytes_per_sample,
            chunk_bytes=max(rule.min_bytes, chunk - chunk % multiple, multiple),
            min_bytes=rule.min_bytes,
            multiple_bytes=multiple,
            caller_frame_lag=caller_lag,
        )

    def first_byte(self, start_ms: int) -> int:
        """Offset in its item's leg audio of the first byte a delta starting `start_ms` into it adds."""
        return max(0, start_ms * self.bytes_per_ms - self.holdback_bytes)

    def item_bytes(self, item_ms: int) -> int:
        """Leg bytes of a whole item of `item_ms` (its last message padded to the rule's minimum)."""
        total = item_ms * self.bytes_per_ms
        rest = total % self.chunk_bytes
        if not rest:
            return total
        return total - rest + max(self.min_bytes, _round_up(rest, self.multiple_bytes))

    def waits(self, start_ms: int, size_ms: int) -> bool:
        """Whether the message holding a delta's first byte needs audio after the delta's own (a later
        delta or the item's end): only under a minimum message size, where items are cut into whole
        `chunk_bytes` messages and a shorter rest waits for more."""
        if not self.min_bytes:
            return False
        supplied = (start_ms + size_ms) * self.bytes_per_ms - self.holdback_bytes
        message_end = (self.first_byte(start_ms) // self.chunk_bytes + 1) * self.chunk_bytes
        return message_end > supplied


class Delta(NamedTuple):
    """One audio delta as the realtime side sent it: when, its item's offset in the session's bot audio
    (ms, counting every earlier item whole), and where it starts in its item and how long it is (ms)."""

    sent_at: float
    item_offset_ms: int
    start_ms: int
    size_ms: int


@dataclass(frozen=True, slots=True)
class BotMatch:
    """Bot-direction latencies (seconds) of deltas sent in a window: of all matched ones, of those whose
    message did not wait for later audio (`immediate`), and how many deltas found no media."""

    latencies: list[float]
    unmatched: int
    immediate: list[float] = field(default_factory=list)

    @property
    def waited(self) -> int:
        """Matched deltas whose message waited, by the provider's rule, for audio sent after them."""
        return len(self.latencies) - len(self.immediate)


def _item_starts(deltas: Sequence[Delta], layout: LegLayout) -> dict[int, int]:
    """Each item's first byte in the call's leg audio, by its offset in the session's audio (ms)."""
    starts: dict[int, int] = {}
    previous: tuple[int, int] | None = None  # (offset ms, leg byte) of the item before
    for delta in deltas:
        offset = delta.item_offset_ms
        if offset in starts:
            continue
        if previous is None:  # items before the first recorded one are taken as unpadded
            starts[offset] = offset * layout.bytes_per_ms
        else:
            starts[offset] = previous[1] + layout.item_bytes(offset - previous[0])
        previous = (offset, starts[offset])
    return starts


def bot_latencies(
    deltas: Iterable[Delta | tuple[float, int, int, int]],
    media_at: Sequence[float],
    media_offset: Sequence[int],
    layout: LegLayout,
    window: tuple[float, float],
    *,
    media_end: int,
    until: float = math.inf,
) -> BotMatch:
    """Match each delta (in the order sent) sent in `window` and before `until` (the first clear: later
    offsets are not comparable) to the media message holding its first byte. Message i holds bytes
    media_offset[i] up to the next message's offset; the last one up to `media_end` (all bytes received).
    """
    start, end = window
    records = [Delta(*d) for d in deltas]
    items = _item_starts(records, layout)
    out: list[float] = []
    immediate: list[float] = []
    unmatched = 0
    for delta in records:
        if not start <= delta.sent_at < end or delta.sent_at >= until:
            continue
        offset = items[delta.item_offset_ms] + layout.first_byte(delta.start_ms)
        i = bisect_right(media_offset, offset) - 1
        message_end = media_offset[i + 1] if i + 1 < len(media_offset) else media_end
        if i < 0 or offset >= message_end:
            unmatched += 1
            continue
        latency = media_at[i] - delta.sent_at
        out.append(latency)
        if not layout.waits(delta.start_ms, delta.size_ms):
            immediate.append(latency)
    return BotMatch(out, unmatched, immediate)


def paced_latencies(
    first_sent: Iterable[float],
    spurt_at: Sequence[float],
    packet_at: Sequence[float],
    window: tuple[float, float],
    period_s: float = 0.020,
) -> list[float]:
    """The SIP leg's bot direction: the gateway paces, one packet every `period_s` whatever it has (silence
    when nothing), so a reply's first delta (sent at each of `first_sent`) goes out in the first packet
    slot after it arrives: by design, it waits for that slot. Seconds from that slot to the arrival of the
    first talkspurt packet (`spurt_at`, the marker bit) after the delta, for deltas sent in `window`. The
    slot is the call's packet schedule: the last packet (of `packet_at`) that arrived before the delta,
    plus whole periods. A delta that missed its slot (the gateway too slow) costs a period or more."""
    start, end = window
    out: list[float] = []
    for sent in first_sent:
        if not start <= sent < end:
            continue
        spurt = bisect_right(spurt_at, sent)
        before = bisect_right(packet_at, sent) - 1
        if spurt >= len(spurt_at) or before < 0:
            continue
        last = packet_at[before]
        slot = last + max(1, math.ceil((sent - last) / period_s - 1e-9)) * period_s
        out.append(spurt_at[spurt] - slot)
    return out


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
