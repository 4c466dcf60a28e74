"""What a SIP caller observes of the gateway's RTP, sans-I/O: packet timing, loss, and its own playback.

- `gap_deviations_ms(arrivals, sequences)`: the jitter of a paced stream as the load generator reports it:
  for every two packets in sequence (sequence numbers one apart), |arrival gap - 20 ms|. The gateway sends
  one packet per 20 ms on an absolute schedule, so a deviation is how late (or early, after a late one)
  a packet left, plus what the network added (nothing on loopback).
- `SequenceWatch`: lost, reordered and duplicated packets by RTP sequence number (RFC 3550 A.1's
  extended numbers), counted as packets arrive.
- `RtpPlayout`: the phone's playback of the bot's audio with a fixed-delay jitter buffer: a talkspurt
  (bot audio after silence) starts playing `delay_ms` after its first packet arrived, then plays packet
  after packet at real time. A packet that arrives after its slot has begun is an underrun (the caller
  hears a gap; the rest of the talkspurt plays that much later); so is a talkspurt that resumes a bot
  turn the gateway's pacer left silent (a turn ends when the caller speaks, `new_turn`, or at a flush).
  It records what was played as `PlayedSpan`s and `Underrun`s, as `TwilioPlayout` does for Twilio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from gateway.loadtest.playout import PlayedSpan, Underrun

__all__ = ["FRAME_MS", "RtpPlayout", "SequenceWatch", "gap_deviations_ms"]

FRAME_MS: Final = 20
EPSILON_MS: Final = 1e-6


def gap_deviations_ms(
    arrivals: Sequence[float], sequences: Sequence[int], period_ms: float = FRAME_MS
) -> list[float]:
    """|gap - period| in ms between each two packets whose sequence numbers are one apart (mod 2^16);
    `arrivals` in seconds. Pairs across a loss or a reordering are skipped: their gap is not one period."""
    period = period_ms / 1000
    out: list[float] = []
    for i in range(1, min(len(arrivals), len(sequences))):
        if (sequences[i] - sequences[i - 1]) & 0xFFFF == 1:
            out.append(abs(arrivals[i] - arrivals[i - 1] - period) * 1000)
    return out


class SequenceWatch:
    """Counts received, lost, reordered and duplicate packets of one RTP stream by sequence number."""

    __slots__ = ("_first", "_highest", "_seen", "duplicates", "received", "reordered")

    def __init__(self) -> None:
        self.received = 0
        self.reordered = 0  # arrived after a higher sequence number
        self.duplicates = 0
        self._first = 0  # extended number of the first packet
        self._highest: int | None = None  # extended
        self._seen: set[int] = set()  # extended numbers within the last 512 (for duplicates)

    def packet(self, sequence: int) -> None:
        """One packet arrived."""
        if self._highest is None:
            extended = self._first = sequence
        else:
            delta = (sequence - self._highest) & 0xFFFF
            extended = self._highest + (delta - 0x10000 if delta >= 0x8000 else delta)
        if extended in self._seen:
            self.duplicates += 1
            return
        self.received += 1
        self._seen.add(extended)
        if len(self._seen) > 1024:
            floor = extended - 512
            self._seen = {n for n in self._seen if n >= floor}
        if self._highest is None or extended > self._highest:
            self._highest = extended
        else:
            self.reordered += 1

    @property
    def expected(self) -> int:
        """Packets from the first to the highest sequence number seen."""
        return 0 if self._highest is None else self._highest - self._first + 1

    @property
    def lost(self) -> int:
        """Packets never received (expected minus received; late ones count as received)."""
        return max(0, self.expected - self.received)


class RtpPlayout:
    """The SIP phone's playback of bot audio (see the module docstring). Times in ms, never going back."""

    def __init__(self, delay_ms: float = 40.0) -> None:
        self.delay_ms = delay_ms
        self.spans: list[PlayedSpan] = []
        self.underruns: list[Underrun] = []
        self.received_ms = 0.0
        self._end = -math.inf  # when everything received so far has played
        self._talking = False  # a talkspurt is arriving
        self._turn_open = False
        self._clock = 0.0

    def audio(self, ms: float, now_ms: float) -> None:
        """A packet with `ms` of bot audio arrived at `now_ms`."""
        self._clock = max(self._clock, now_ms)
        if not self._talking:
            self._talking = True
            start = max(now_ms + self.delay_ms, self._end)
            if self._turn_open and start > self._end + EPSILON_MS and self.spans:
                self.underruns.append(Underrun(self._end, start))
        elif now_ms > self._end + EPSILON_MS:  # late for its slot: the caller heard a gap
            self.underruns.append(Underrun(self._end, now_ms))
            start = now_ms
        else:
            start = self._end
        self._turn_open = True
        last = self.spans[-1] if self.spans else None
        if last is not None and abs(last.end_ms - start) <= EPSILON_MS:
            last.ms += ms
        else:
            self.spans.append(PlayedSpan(start, self.received_ms, ms))
        self.received_ms += ms
        self._end = start + ms

    def silence(self, now_ms: float) -> None:
        """A packet without bot audio arrived: the talkspurt (if any) is over."""
        self._clock = max(self._clock, now_ms)
        self._talking = False

    def new_turn(self) -> None:
        """The caller spoke: bot audio from now on is a new turn (a gap before it is no underrun)."""
        self._turn_open = False

    def flushed(self) -> None:
        """The gateway cut the bot off (barge-in): the turn is over."""
        self._turn_open = False
        self._talking = False

    def played_ms_at(self, now_ms: float) -> float:
        """Bot audio played by `now_ms`."""
        for span in reversed(self.spans):
            if span.start_ms <= now_ms:
                return span.position_ms + min(span.ms, now_ms - span.start_ms)
        return 0.0

    def queued_ms_at(self, now_ms: float) -> float:
        """Bot audio received and not yet played at `now_ms`."""
        return self.received_ms - self.played_ms_at(now_ms)

    def advance(self, now_ms: float) -> None:
        """Move the playback clock to `now_ms` (the `played_ms` figure reads it)."""
        self._clock = max(self._clock, now_ms)

    @property
    def played_ms(self) -> float:
        """Bot audio played by the last time seen (`advance`, or the last packet)."""
        return self.played_ms_at(self._clock)
