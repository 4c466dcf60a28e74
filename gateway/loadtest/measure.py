"""Per-call measurements and their aggregation (sans-I/O: plain data in, plain data out).

Definitions (all times on the load generator's monotonic clock, in ms):

- `connect_ms`: WebSocket connect started -> upgrade answered (TCP + HTTP upgrade; with signatures, the
  /twiml webhook before it is `twiml_ms`).
- `setup_ms`: only for scenarios whose first step is `wait_for_bot` (the bot speaks first): socket open
  -> first bot media frame received. That spans `start` sent, the gateway dialling the realtime
  session, `session.update`, the greeting's response and the first audio. Scenarios where the caller
  speaks first have no setup figure (their first bot audio is a response latency).
- `response_ms`: the caller's last voiced frame sent (a recording's last frame above -40 dBFS) -> the
  first bot media frame received after it. It includes the server VAD's silence window (500 ms by
  default), the service's response time and both hops.
- `barge_in_ms`: the first frame talking over the bot sent -> `clear` received. It includes the
  detector's attack (server VAD's frames, or the gateway's local VAD).
- `truncation_error_ms` (embedded): the `audio_end_ms` the emulator accepted for the interrupted item
  minus what the simulated phone had played of that item when the clear arrived (negative: the gateway
  kept less than the caller heard).
- `underruns`: gaps while a bot turn was playing: the phone's queue ran dry and more audio of the same
  turn arrived later (a turn ends when the caller speaks while nothing is queued, or on a clear).
- `caller_frames_lost` (embedded): 20 ms frames sent that the emulator never received, beyond what the
  gateway holds back by design (its append size plus the resampler's 2.5 ms delay). When the gateway
  ended the call, the last `END_GRACE_MS` of caller audio are not counted either: the gateway stops
  reading the caller when it decides to end the call, and closes the realtime session before the
  caller's leg, so the frames the phone sent meanwhile were never meant to reach the model.
- `bot_audio_lost_ms` (embedded): audio of the emulator's completed, uninterrupted items that did not
  reach the phone byte for byte (the expected bytes are the items' audio through the gateway's codec).
- SIP calls (`--sip`, `gateway.loadtest.sip_call` says precisely how each is taken): `connect_ms` is the
  answer time, INVITE sent -> 200 OK received; a "clear" is the end of the bot's talkspurt after the
  caller started talking over it (RTP has no clear message), and what the caller had heard is what a
  phone playing each talkspurt SIP_JITTER_MS after its first packet had played then;
  `rtp_gap_deviation_ms` is |gap - 20 ms| between consecutive RTP packets of the gateway (its pacing
  jitter), `rtp_lost` / `rtp_reordered` its packets lost and reordered by sequence number.
- `outcome`: how the call ended. `caller_hangup`: the caller hung up (its script's end, or a failure);
  `bot_hangup` / `transferred`: the gateway ended it so (a provider stream's close reason; on SIP, the
  gateway's BYE, after the REFER the phone accepted for a transfer); any other close reason the gateway
  gave (`completed`, `upstream_failed`, ..., `closed:CODE` without one); `not_connected`. The summary's
  `outcomes` counts the calls that passed by how they ended, and the failed ones as `failed`.
- `key_to_end_ms`: for a call the bot ended (`bot_hangup`, `transferred`), the caller's last key press
  sent -> the gateway's end received (its close, or its BYE). It spans the key's way to the model, the
  model's reply (its goodbye, or the words before the transfer) played out at the phone, and, for a
  transfer, the REFER and its NOTIFYs.
- `marks_early`: marks echoed before the audio in front of them had finished playing (must be 0);
  `marks_unanswered`: marks whose audio had played that were never echoed (must be 0); a mark still
  queued when the caller hung up is neither (Twilio never echoes those).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from gateway.loadtest.client import MarkRecord, ReceivedClear
from gateway.loadtest.playout import PlayedSpan, Underrun
from gateway.loadtest.script import TOOL_ENDS
from gateway.stats import percentile

__all__ = [
    "METRICS",
    "OUTCOMES",
    "CallResult",
    "EmulatorFigures",
    "MeasuredCall",
    "Stats",
    "Summary",
    "active_calls_timeline",
    "aggregate",
    "check_marks",
    "count_outcomes",
    "measure_call",
    "stats",
]

FRAME_MS = 20
RESAMPLER_DELAY_MS = 2.5
EPSILON_MS = 1e-6
END_GRACE_MS = 200  # a call the gateway ended: caller audio it did not read while ending it (see above)
# Per-call lists aggregated into percentiles; the key is the CallResult field.
METRICS: Mapping[str, str] = {
    "connect_ms": "connect",
    "setup_ms": "setup",
    "response_ms": "response latency",
    "barge_in_ms": "barge-in latency",
    "truncation_error_ms": "truncation error",
    "underrun_gap_ms": "underrun gap",
    "rtp_gap_deviation_ms": "RTP gap deviation",
    "key_to_end_ms": "key press to end",
}
CALLER_HANGUP, NOT_CONNECTED, FAILED = "caller_hangup", "not_connected", "failed"
OUTCOMES = (*TOOL_ENDS, CALLER_HANGUP, FAILED)  # the summary's outcome counts, always all four


class _Playback(Protocol):
    """What the measurements read of a phone's playback model (`TwilioPlayout`, `RtpPlayout`)."""

    @property
    def spans(self) -> Sequence[PlayedSpan]: ...
    @property
    def underruns(self) -> Sequence[Underrun]: ...
    @property
    def received_ms(self) -> float: ...
    @property
    def played_ms(self) -> float: ...


class MeasuredCall(Protocol):
    """What `measure_call` reads of a finished call: a provider's `PhoneCall` or a `SipPhone`."""

    @property
    def call_sid(self) -> str: ...
    @property
    def connect_started_ms(self) -> float | None: ...
    @property
    def opened_ms(self) -> float | None: ...
    @property
    def first_media_ms(self) -> float | None: ...
    @property
    def marks(self) -> Sequence[MarkRecord]: ...
    @property
    def clears(self) -> Sequence[ReceivedClear]: ...
    @property
    def playout(self) -> _Playback: ...
    @property
    def response_latencies(self) -> Sequence[tuple[float, float]]: ...
    @property
    def barge_in_latencies(self) -> Sequence[tuple[float, float]]: ...
    @property
    def caller_audio_sent_ms(self) -> float: ...
    @property
    def frames_sent(self) -> int: ...
    @property
    def dtmf_sent(self) -> str: ...
    @property
    def last_dtmf_ms(self) -> float | None: ...
    @property
    def end_outcome(self) -> str | None: ...
    @property
    def gateway_ended_ms(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class EmulatorFigures:
    """What the emulator recorded of one call (embedded mode only)."""

    caller_audio_received_ms: float
    bot_audio_sent_ms: float
    bot_audio_lost_ms: float
    truncations_ms: tuple[int, ...]  # accepted audio_end_ms, in order


@dataclass(frozen=True, slots=True)
class CallResult:
    """One call's measurements. Times `*_s` are seconds since the run started."""

    index: int
    scenario: str
    call_sid: str
    started_s: float
    ended_s: float
    ok: bool
    error: str | None = (
        None  # kind: handshake_refused:403, closed_by_gateway:1011, timeout, protocol_error, ...
    )
    error_detail: str = ""
    outcome: str = CALLER_HANGUP  # how the call ended (see the module docstring)
    twiml_ms: float | None = None
    connect_ms: tuple[float, ...] = ()
    setup_ms: tuple[float, ...] = ()
    response_ms: tuple[float, ...] = ()
    response_at_s: tuple[float, ...] = ()
    barge_in_ms: tuple[float, ...] = ()
    barge_in_at_s: tuple[float, ...] = ()
    truncation_error_ms: tuple[float, ...] = ()
    underrun_gap_ms: tuple[float, ...] = ()
    rtp_gap_deviation_ms: tuple[float, ...] = ()  # SIP
    key_to_end_ms: tuple[float, ...] = ()  # the bot ended the call: last key sent -> the end received
    rtp_lost: int | None = None  # SIP
    rtp_reordered: int | None = None  # SIP
    frames_sent: int = 0
    caller_audio_sent_ms: float = 0.0
    bot_audio_received_ms: float = 0.0
    bot_audio_played_ms: float = 0.0
    clears: int = 0
    marks: int = 0
    marks_flushed: int = 0
    marks_early: int = 0
    marks_unanswered: int = 0
    dtmf_sent: str = ""
    caller_audio_received_ms: float | None = None  # embedded
    caller_frames_lost: int | None = None  # embedded
    bot_audio_sent_ms: float | None = None  # embedded
    bot_audio_lost_ms: float | None = None  # embedded
    mark_log: tuple[
        tuple[str, float, float, float | None, bool], ...
    ] = ()  # (name, pos, recv, echo, flushed)
    spans: tuple[tuple[float, float, float], ...] = ()  # (start_ms, position_ms, ms) of played audio
    clear_log: tuple[tuple[float, int], ...] = ()  # (at_ms, marks flushed) of each clear

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists), without the logs kept for tests (marks, spans, clears)."""
        skip = ("mark_log", "spans", "clear_log")
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self) if f.name not in skip}


def _jsonable(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def finish_time(spans: Sequence[PlayedSpan], position_ms: float) -> float | None:
    """Wall time at which the played audio reached `position_ms`, or None if it never did."""
    for span in spans:
        if span.position_ms + span.ms >= position_ms - EPSILON_MS:
            return span.start_ms + max(0.0, position_ms - span.position_ms)
    return None


def check_marks(marks: Iterable[MarkRecord], spans: Sequence[PlayedSpan]) -> tuple[int, int]:
    """(marks echoed before their audio finished playing, marks whose audio played but never echoed).

    A mark still pending when the caller hung up, its audio not yet played, is neither: real Twilio
    never echoes it either.
    """
    early = unanswered = 0
    played_ms = spans[-1].position_ms + spans[-1].ms if spans else 0.0
    for mark in marks:
        if mark.flushed:  # a clear dropped its audio: confirmed at once, or never (as the provider does)
            continue
        if mark.echoed_ms is None:
            unanswered += mark.position_ms <= played_ms + EPSILON_MS
            continue
        done = finish_time(spans, mark.position_ms) if mark.position_ms > EPSILON_MS else mark.received_ms
        if done is None or mark.echoed_ms < max(done, mark.received_ms) - EPSILON_MS:
            early += 1
    return early, unanswered


def caller_frames_lost(sent_ms: float, received_ms: float, append_ms: int = 20) -> int:
    """Frames that did not arrive beyond the gateway's by-design hold-back (< append_ms + 2.5 ms)."""
    excess = sent_ms - received_ms - append_ms - RESAMPLER_DELAY_MS
    return max(0, math.ceil(excess / FRAME_MS - EPSILON_MS))


def bot_audio_lost_ms(
    received: bytes,
    items: Sequence[tuple[bytes, bool]],
    bytes_per_ms: int = 8,
    *,
    silence: bytes = b"\xff",
    max_padding: int = 0,
) -> float:
    """Walk the phone's received audio through the expected bytes of each item, in order.

    `items` are (expected bytes in the stream's format, required in full). An item not required in full
    (interrupted or still streaming when the call ended) may have reached the phone as any prefix.
    Providers whose messages have a minimum size get each reply's end padded with silence (`silence`
    bytes, at most `max_padding` of them): that padding is skipped, never counted as audio.
    """
    position = lost = 0
    for expected, required in items:
        if max_padding and position:
            position += _padding(received, position, expected, silence, max_padding)
        got = received[position : position + len(expected)]
        same = _common_prefix(got, expected)
        position += same
        if required:
            lost += len(expected) - same
    return lost / bytes_per_ms


def _padding(received: bytes, position: int, expected: bytes, silence: bytes, limit: int) -> int:
    """How many silence bytes at `position` come before `expected` starts (0 if it never does)."""
    run = 0
    while run < limit and received[position + run : position + run + 1] == silence:
        run += 1
    head = expected[:8]
    for skip in range(run + 1):
        if received[position + skip : position + skip + len(head)] == head:
            return skip
    return 0


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # binary search on equal prefixes
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def measure_call(
    call: MeasuredCall,
    *,
    index: int,
    scenario: str,
    run_started_ms: float,
    ended_ms: float,
    error: str | None,
    error_detail: str = "",
    bot_speaks_first: bool = False,
    twiml_ms: float | None = None,
    emulator: EmulatorFigures | None = None,
    append_ms: int = 20,
    keep_logs: bool = False,
    rtp: tuple[Sequence[float], int, int] | None = None,
) -> CallResult:
    """Turn what a finished call recorded into its `CallResult`; `rtp` (SIP calls): the gateway's packet
    gap deviations (ms), packets lost and reordered."""
    started = call.connect_started_ms if call.connect_started_ms is not None else ended_ms

    def rel(t: float) -> float:
        return round((t - run_started_ms) / 1000, 4)

    connect = () if call.opened_ms is None else (round(call.opened_ms - started, 3),)
    outcome = call.end_outcome or (NOT_CONNECTED if call.opened_ms is None else CALLER_HANGUP)
    key_to_end: tuple[float, ...] = ()
    pressed, ended = call.last_dtmf_ms, call.gateway_ended_ms
    if outcome in TOOL_ENDS and pressed is not None and ended is not None and ended >= pressed:
        key_to_end = (round(ended - pressed, 3),)
    setup: tuple[float, ...] = ()
    if bot_speaks_first and call.opened_ms is not None and call.first_media_ms is not None:
        setup = (round(call.first_media_ms - call.opened_ms, 3),)
    early, unanswered = check_marks(call.marks, call.playout.spans)
    truncation: tuple[float, ...] = ()
    lost_frames = None
    if emulator is not None:
        pairs = zip(emulator.truncations_ms, call.clears, strict=False)
        truncation = tuple(round(end - clear.turn_played_ms, 3) for end, clear in pairs)
        grace = END_GRACE_MS if call.end_outcome is not None else 0
        lost_frames = caller_frames_lost(
            call.caller_audio_sent_ms, emulator.caller_audio_received_ms, append_ms + grace
        )
    return CallResult(
        index=index,
        scenario=scenario,
        call_sid=call.call_sid,
        started_s=rel(started),
        ended_s=rel(ended_ms),
        ok=error is None,
        error=error,
        error_detail=error_detail,
        outcome=outcome,
        twiml_ms=None if twiml_ms is None else round(twiml_ms, 3),
        connect_ms=connect,
        setup_ms=setup,
        response_ms=tuple(round(v, 3) for _, v in call.response_latencies),
        response_at_s=tuple(rel(t) for t, _ in call.response_latencies),
        barge_in_ms=tuple(round(v, 3) for _, v in call.barge_in_latencies),
        barge_in_at_s=tuple(rel(t) for t, _ in call.barge_in_latencies),
        truncation_error_ms=truncation,
        underrun_gap_ms=tuple(round(u.gap_ms, 3) for u in call.playout.underruns),
        rtp_gap_deviation_ms=() if rtp is None else tuple(round(v, 3) for v in rtp[0]),
        rtp_lost=None if rtp is None else rtp[1],
        rtp_reordered=None if rtp is None else rtp[2],
        key_to_end_ms=key_to_end,
        frames_sent=call.frames_sent,
        caller_audio_sent_ms=call.caller_audio_sent_ms,
        bot_audio_received_ms=call.playout.received_ms,
        bot_audio_played_ms=call.playout.played_ms,
        clears=len(call.clears),
        marks=len(call.marks),
        marks_flushed=sum(1 for m in call.marks if m.flushed),
        marks_early=early,
        marks_unanswered=unanswered,
        dtmf_sent=call.dtmf_sent,
        caller_audio_received_ms=None if emulator is None else emulator.caller_audio_received_ms,
        caller_frames_lost=lost_frames,
        bot_audio_sent_ms=None if emulator is None else emulator.bot_audio_sent_ms,
        bot_audio_lost_ms=None if emulator is None else emulator.bot_audio_lost_ms,
        mark_log=tuple((m.name, m.position_ms, m.received_ms, m.echoed_ms, m.flushed) for m in call.marks)
        if keep_logs
        else (),
        spans=tuple((s.start_ms, s.position_ms, s.ms) for s in call.playout.spans) if keep_logs else (),
        clear_log=tuple((c.at_ms, c.flushed_marks) for c in call.clears) if keep_logs else (),
    )


# --- aggregation ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Count, mean and percentiles of one measurement over all calls."""

    count: int
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    min: float | None = None


def stats(values: Iterable[float]) -> Stats:
    """Summarise values (any order); all None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return Stats(0)

    def r(v: float) -> float:
        return round(v, 3)

    return Stats(
        count=len(ordered),
        mean=r(sum(ordered) / len(ordered)),
        p50=r(percentile(ordered, 50)),
        p95=r(percentile(ordered, 95)),
        p99=r(percentile(ordered, 99)),
        max=r(ordered[-1]),
        min=r(ordered[0]),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """The whole run: counts, per-measurement statistics, errors by kind, the generator's own health."""

    calls: int
    completed: int
    failed: int
    duration_s: float
    metrics: dict[str, Stats]
    errors: dict[str, int]
    underruns: int
    caller_frames_lost: int | None
    bot_audio_lost_ms: float | None
    marks: int
    marks_early: int
    marks_unanswered: int
    loop_lag_ms: Stats
    max_active: int
    scenarios: dict[str, int] = field(default_factory=dict)
    rtp_lost: int | None = None  # SIP runs
    rtp_reordered: int | None = None
    outcomes: dict[str, int] = field(default_factory=dict)  # how calls ended (OUTCOMES, then any other)


def aggregate(results: Sequence[CallResult], duration_s: float, loop_lag_ms: Iterable[float] = ()) -> Summary:
    """Combine per-call results into a `Summary`."""
    metrics = {key: stats(v for r in results for v in getattr(r, key)) for key in METRICS}
    embedded = [r for r in results if r.caller_frames_lost is not None]
    sip = [r for r in results if r.rtp_lost is not None]
    timeline = active_calls_timeline(results)
    return Summary(
        calls=len(results),
        completed=sum(1 for r in results if r.ok),
        failed=sum(1 for r in results if not r.ok),
        duration_s=round(duration_s, 3),
        metrics=metrics,
        errors=dict(Counter(r.error for r in results if r.error is not None).most_common()),
        underruns=sum(len(r.underrun_gap_ms) for r in results),
        caller_frames_lost=sum(r.caller_frames_lost or 0 for r in embedded) if embedded else None,
        bot_audio_lost_ms=sum(r.bot_audio_lost_ms or 0.0 for r in embedded) if embedded else None,
        marks=sum(r.marks for r in results),
        marks_early=sum(r.marks_early for r in results),
        marks_unanswered=sum(r.marks_unanswered for r in results),
        loop_lag_ms=stats(loop_lag_ms),
        max_active=max((n for _, n in timeline), default=0),
        scenarios=dict(Counter(r.scenario for r in results)),
        rtp_lost=sum(r.rtp_lost or 0 for r in sip) if sip else None,
        rtp_reordered=sum(r.rtp_reordered or 0 for r in sip) if sip else None,
        outcomes=count_outcomes(results),
    )


def count_outcomes(results: Iterable[CallResult]) -> dict[str, int]:
    """How the calls ended: bot hang-ups, transfers and caller hang-ups among the calls that passed,
    and the failed ones (whatever ended them); every key of OUTCOMES, then any other end that passed."""
    counts = Counter(r.outcome if r.ok else FAILED for r in results)
    return {key: counts.pop(key, 0) for key in OUTCOMES} | dict(sorted(counts.items()))


def active_calls_timeline(results: Iterable[CallResult]) -> list[tuple[float, int]]:
    """(time s, calls active from then on) at every start and end, in time order."""
    events = sorted(
        [(r.started_s, 1) for r in results] + [(r.ended_s, -1) for r in results], key=lambda e: (e[0], e[1])
    )
    active, out = 0, []
    for at, change in events:
        active += change
        out.append((at, active))
    return out
