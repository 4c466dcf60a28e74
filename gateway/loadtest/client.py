"""A provider's media-stream client: plays a call against a gateway exactly as the provider would.

`PhoneCall` speaks any provider the gateway serves through that provider's `ProviderWire`
(`gateway.loadtest.wires`, the one definition of what each provider sends): Twilio by default, with
`connected`, `start` (customParameters; signed with X-Twilio-Signature when given an auth token), 20 ms
`media` frames at real-time pace (or as fast as wanted), `dtmf` and `stop`. It plays the gateway's audio
through a `TwilioPlayout` in real time, confirming marks (checkpoints, notifies) only when the audio
before them has played, and flushing on clear (confirming the pending ones at once where the provider
does). Used by the tests and by the load generator.

Built to be cheap, so one process can drive hundreds of calls: caller frames are pre-encoded once per
recording and format (`WireFrame`); Twilio's `media` messages are formatted without json.dumps and the
gateway's are recognised by their prefix, their payload sliced out (no json.loads); and every call's
playout is advanced by ONE shared ticker task per event loop (`SharedTicker`), not a timer per call.
The client records what the measurements need (marks with their audio positions and confirmation
times, clears, response and barge-in latencies) as it goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway.loadtest.playout import BYTES_PER_MS, PlayoutTicker, TwilioPlayout
from gateway.loadtest.recordings import FRAME_BYTES, FRAME_MS
from gateway.loadtest.wires import BotAudio, Flush, PlayedRequest, ProviderWire, Strange, WireFrame, make_wire
from gateway.telephony.signature import SIGNATURE_HEADER, compute_signature
from telcodec import WireFormat

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "PLAYOUT_TICK_S",
    "MarkRecord",
    "PhoneCall",
    "ReceivedClear",
    "SharedTicker",
    "TwilioCall",
    "monotonic_ms",
]

PLAYOUT_TICK_S = 0.005  # how often the simulated phones play audio and echo marks
LAG_SAMPLES_KEPT = 200_000  # ticker lateness samples kept for the loop-lag figure (~17 min of ticks)


def monotonic_ms() -> float:
    """The client's clock: monotonic milliseconds (the same clock as the event loop's)."""
    return time.monotonic() * 1000


@dataclass(slots=True)
class ReceivedClear:
    """A `clear` the gateway sent: when, and how much caller and bot audio had gone by then."""

    at_ms: float
    caller_audio_sent_ms: float
    played_ms: float  # bot audio the caller had heard when the clear arrived
    turn_played_ms: float = 0.0  # of which in the bot turn the clear cut (what the caller heard of it)
    flushed_marks: int = 0


@dataclass(slots=True)
class MarkRecord:
    """A mark the gateway sent: where it sits in the played audio and when it came back."""

    name: str
    position_ms: float  # bot audio before it, not counting audio thrown away by earlier clears
    received_ms: float
    echoed_ms: float | None = None
    flushed: bool = False  # echoed by a clear, its audio never played


class SharedTicker:
    """Advances the playout of every open call in this event loop, every `PLAYOUT_TICK_S`, from ONE task.

    Ticks follow an absolute schedule; how late each tick wakes up is the event loop's lag, kept in
    `lag_ms` (the load generator reports it: a lagging loop means the generator itself is overloaded).
    """

    _by_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SharedTicker]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, period_s: float = PLAYOUT_TICK_S) -> None:
        self.period_s = period_s
        self.core: PlayoutTicker[PhoneCall] = PlayoutTicker()
        self.lag_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_running_loop(cls) -> SharedTicker:
        """The ticker of the running event loop (created on first use)."""
        loop = asyncio.get_running_loop()
        ticker = cls._by_loop.get(loop)
        if ticker is None:
            ticker = cls._by_loop[loop] = cls()
        return ticker

    def register(self, call: PhoneCall) -> None:
        """Play `call`'s audio from now on; starts the ticking task if it is not running."""
        self.core.register(call, call.playout)
        if self._task is None or self._task.done() or self._task.cancelling():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unregister(self, call: PhoneCall) -> None:
        """Stop playing `call`'s audio; the task ends by itself when no call is left."""
        self.core.unregister(call)

    async def release(self, call: PhoneCall) -> None:
        """Unregister `call`; when it was the last one, stop the ticking task before returning."""
        self.core.unregister(call)
        task = self._task
        if not len(self.core) and task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if self._task is task:
                self._task = None

    async def _run(self) -> None:
        due = time.monotonic()
        while len(self.core):
            now = time.monotonic()
            if len(self.lag_ms) < LAG_SAMPLES_KEPT:
                self.lag_ms.append(max(0.0, (now - due) * 1000))
            now_ms = now * 1000
            ready = self.core.tick(now_ms)
            for call, echoes in ready:  # stamp every echo first: a slow send must not delay the records
                call.record_echoes(echoes, now_ms)
            for call, echoes in ready:
                await call.send_echoes(echoes)
            due += self.period_s
            if due < now:  # fell behind by more than a tick: do not try to catch up with a burst
                due = now + self.period_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))


@dataclass(slots=True, eq=False)
class PhoneCall:
    """One simulated call. `await open()`, `await send_audio(...)`, `await hang_up()`; or `async with`.

    `provider` names the provider it plays (Twilio by default) and `media_format` the stream's format
    (default: the provider's own default); every message goes through that provider's `ProviderWire`.
    `keep_audio=False` keeps lengths and timings only (long load runs); the default keeps every byte
    received and played, for exact comparisons in tests.
    """

    url: str
    auth_token: str | None = None
    signed_url: str | None = None  # the public wss:// URL the signature covers; default: `url`
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    call_sid: str = field(default_factory=lambda: "CA" + uuid.uuid4().hex)
    stream_sid: str = field(default_factory=lambda: "MZ" + uuid.uuid4().hex)
    account_sid: str = "AC" + "0" * 32
    keep_audio: bool = True
    open_timeout_s: float = 10.0
    provider: str = "twilio"
    media_format: WireFormat | None = None
    playout: TwilioPlayout = field(default_factory=TwilioPlayout)
    received_media: bytearray = field(default_factory=bytearray)  # everything sent to us, played or not
    marks_sent: list[str] = field(default_factory=list)  # mark names the gateway sent, in order
    marks_echoed: list[tuple[str, float]] = field(default_factory=list)
    marks: list[MarkRecord] = field(default_factory=list)
    clears: list[ReceivedClear] = field(default_factory=list)
    media_times_ms: list[float] = field(default_factory=list)  # arrival time of each media message
    protocol_errors: list[str] = field(default_factory=list)
    response_latencies: list[tuple[float, float]] = field(default_factory=list)  # (at_ms, latency_ms)
    barge_in_latencies: list[tuple[float, float]] = field(default_factory=list)  # (at_ms, latency_ms)
    caller_audio_sent_ms: float = 0.0
    frames_sent: int = 0
    dtmf_sent: str = ""
    connect_started_ms: float | None = None
    opened_ms: float | None = None  # the WebSocket upgrade completed
    first_media_ms: float | None = None
    hung_up_ms: float | None = None
    close_code: int | None = None
    close_reason: str = ""  # the gateway's close reason: the call's outcome label (bot_hangup, ...)
    closed_by_gateway: bool = False
    gateway_ended_ms: float | None = None  # the gateway's close arrived
    last_dtmf_ms: float | None = None  # the last key press went out
    wire: ProviderWire = field(init=False)  # built from the fields above in __post_init__
    _ws: ClientConnection | None = None
    _ticker: SharedTicker | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _hanging_up: bool = False
    _held_start: str | bytes | None = None  # the opening's last message, when open() held it back
    _pending_marks: dict[str, MarkRecord] = field(default_factory=dict)
    _voice_end_ms: float | None = None  # the last voiced frame went out; the bot's answer not yet here
    _interrupt_ms: float | None = None  # the caller started talking over the bot; no clear yet
    _turn_open: bool = False
    _turn_start_ms: float = 0.0  # played-audio position where the current bot turn began

    def __post_init__(self) -> None:
        self.playout.keep_audio = self.keep_audio
        self.wire = make_wire(
            self.provider, self.call_sid, self.custom_parameters, self.media_format, self.stream_sid
        )

    async def __aenter__(self) -> PhoneCall:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

    @property
    def format(self) -> WireFormat:
        """The stream's audio format."""
        return self.wire.format

    # -- what the caller script observes (gateway.loadtest.caller.PhoneView) ------------------------

    @property
    def played_ms(self) -> float:
        """Bot audio played by now (the model itself advances only when a mark is due)."""
        return self.playout.played_ms_at(monotonic_ms())

    @property
    def queued_ms(self) -> float:
        """Bot audio waiting to be played now."""
        return self.playout.queued_ms_at(monotonic_ms())

    @property
    def media_count(self) -> int:
        """Bot media messages received."""
        return len(self.media_times_ms)

    @property
    def last_media_ms(self) -> float:
        """When the last bot media message arrived (0 if none)."""
        return self.media_times_ms[-1] if self.media_times_ms else 0.0

    @property
    def closed(self) -> bool:
        """Whether the socket is closed (by either side)."""
        return self._closed.is_set()

    @property
    def end_outcome(self) -> str | None:
        """How the gateway ended the call: its close reason, which is the outcome label (bot_hangup,
        transferred, ...), or `closed:CODE` without one; None while the call is up or when we hung up."""
        if not self.closed_by_gateway:
            return None
        return self.close_reason or f"closed:{self.close_code}"

    # -- connecting ----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        headers = self.wire.upgrade_headers()
        if self.auth_token is not None:
            headers[SIGNATURE_HEADER] = compute_signature(self.auth_token, self.signed_url or self.url, {})
        return headers

    async def open(self, *, send_start: bool = True) -> None:
        """Connect, send the provider's opening (`connected`, `start`, ...; without its last message
        unless `send_start`), and begin playing what comes back."""
        self.wire.call_id, self.wire.parameters = self.call_sid, dict(self.custom_parameters)
        self.connect_started_ms = monotonic_ms()
        self._ws = await connect(
            self.url, additional_headers=self._headers(), open_timeout=self.open_timeout_s, compression=None
        )
        self.opened_ms = monotonic_ms()
        *first, last = self.wire.opening()
        for message in first:
            await self._ws.send(message)
        self._held_start = last
        if send_start:
            await self.start()
        self._ticker = SharedTicker.for_running_loop()
        self._ticker.register(self)
        self._tasks = [asyncio.create_task(self._receive_loop())]

    async def start(self) -> None:
        """Send the opening's last message (`start`, or the provider's only one) if open() held it."""
        assert self._ws is not None, "open() first"
        if self._held_start is not None:
            message, self._held_start = self._held_start, None
            await self._ws.send(message)

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send one JSON text frame."""
        await self.send_text(json.dumps(message))

    async def send_text(self, text: str) -> None:
        """Send one text frame as it is."""
        assert self._ws is not None, "open() first"
        await self._ws.send(text)

    # -- caller audio --------------------------------------------------------------------------------

    async def send_caller_frame(
        self,
        frame: WireFrame,
        *,
        voiced: bool = False,
        voice_end: bool = False,
        interrupt_start: bool = False,
    ) -> None:
        """Send one frame of caller audio (in the stream's format).

        The flags say what the frame is for the measurements: caller speech, its last voiced frame
        (response latency starts), the first frame talking over the bot (barge-in latency starts).
        """
        assert self._ws is not None, "open() first"
        self.caller_audio_sent_ms += self.wire.format.duration_ms(len(frame.audio))
        self.frames_sent += 1
        await self._ws.send(self.wire.media(frame))
        if voiced:
            now = monotonic_ms()
            self._voice_end_ms = now if voice_end else None
            if interrupt_start:
                self._interrupt_ms = now
            self._caller_turn(now)

    def _caller_turn(self, now: float) -> None:
        """The caller spoke or pressed a key: while the bot is silent, its next audio is a new turn."""
        if not self.playout.queued_ms_at(now):
            self._turn_open = False
            self.playout.new_turn()

    async def send_frame(self, frame: bytes) -> None:
        """Send one frame of caller audio (normally 20 ms: 160 bytes of mu-law)."""
        await self.send_caller_frame(WireFrame.of(frame))

    async def send_audio(self, audio: bytes, *, realtime: bool = True, speed: float = 1.0) -> None:
        """Send audio in the stream's format as 20 ms frames, paced at `speed` x real time (unpaced if
        not `realtime`)."""
        size = self.wire.format.frame_bytes(FRAME_MS)
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(audio), size)):
            if realtime:
                due = start + index * FRAME_MS / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.send_frame(audio[offset : offset + size])

    async def send_dtmf(self, digit: str) -> None:
        """Press a key."""
        self.dtmf_sent += digit
        self.last_dtmf_ms = monotonic_ms()
        self._caller_turn(self.last_dtmf_ms)
        await self.send_text(self.wire.dtmf(digit))

    # -- bot audio -----------------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                await self._on_message(message)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self._ws.close_code
            self.closed_by_gateway = not self._hanging_up
            if self.closed_by_gateway:
                self.gateway_ended_ms = monotonic_ms()
                self.close_reason = self._ws.close_reason or ""
            self._closed.set()
            if self._ticker is not None:
                self._ticker.unregister(self)

    async def _on_message(self, message: str | bytes) -> None:
        now = monotonic_ms()
        match self.wire.read(message):
            case BotAudio(audio=audio):
                await self._on_media(audio, now)
            case PlayedRequest(name=name):
                await self._on_mark(name, now)
            case Flush():
                await self._on_clear(now)
            case Strange(problem=problem):
                self.protocol_errors.append(problem)

    async def _on_media(self, audio: bytes, now: float) -> None:
        if self.keep_audio:
            self.received_media += audio
        self.media_times_ms.append(now)
        if self.first_media_ms is None:
            self.first_media_ms = now
        if self._voice_end_ms is not None:
            self.response_latencies.append((now, now - self._voice_end_ms))
            self._voice_end_ms = None
        echoes = self.playout.advance(now)
        if not self._turn_open:
            self._turn_open = True
            self._turn_start_ms = self.playout.played_ms + self.playout.queued_ms
        per_ms = self.wire.format.bytes_per_ms
        # The playout model counts mu-law bytes (BYTES_PER_MS a millisecond): other formats by duration.
        self.playout.media(
            audio if per_ms == BYTES_PER_MS else bytes(len(audio) * BYTES_PER_MS // per_ms), now
        )
        self._reschedule()
        await self.echo_marks(echoes, now)

    async def _on_mark(self, name: str, now: float) -> None:
        self.marks_sent.append(name)
        echoes = self.playout.advance(now)
        position = self.playout.received_ms - self.playout.cleared_ms
        record = MarkRecord(name, position, now)
        self.marks.append(record)
        self._pending_marks[name] = record
        echoes += self.playout.mark(name, now)
        self._reschedule()
        await self.echo_marks(echoes, now)

    async def _on_clear(self, now: float) -> None:
        echoes = self.playout.advance(now)
        flushed = self.playout.clear(now)
        for name in flushed:
            if name in self._pending_marks:
                self._pending_marks[name].flushed = True
        heard = max(0.0, self.playout.played_ms - self._turn_start_ms)
        self.clears.append(
            ReceivedClear(now, self.caller_audio_sent_ms, self.playout.played_ms, heard, len(flushed))
        )
        if self._interrupt_ms is not None:
            self.barge_in_latencies.append((now, now - self._interrupt_ms))
            self._interrupt_ms = None
        self._turn_open = False
        self._reschedule()
        if self.wire.flush_confirms_pending:
            echoes += flushed
        else:  # the provider forgets them: they will never be confirmed
            for name in flushed:
                self._pending_marks.pop(name, None)
        await self.echo_marks(echoes, now)
        for reply in self.wire.flushed():
            await self._send_unless_closed(reply)

    def _reschedule(self) -> None:
        if self._ticker is not None:
            self._ticker.core.reschedule(self)

    async def echo_marks(self, names: Sequence[str], now: float) -> None:
        """Confirm these marks, in order (called when their audio has played, or on clear)."""
        self.record_echoes(names, now)
        await self.send_echoes(names)

    def record_echoes(self, names: Iterable[str], now: float) -> None:
        """Record that these marks are confirmed at `now` (then `send_echoes` sends them)."""
        for name in names:
            self.marks_echoed.append((name, now))
            record = self._pending_marks.pop(name, None)
            if record is not None:
                record.echoed_ms = now

    async def send_echoes(self, names: Iterable[str]) -> None:
        """Send the provider's confirmation of each name (nothing once the socket is closed)."""
        for name in names:
            if not await self._send_unless_closed(self.wire.played(name)):
                return

    async def _send_unless_closed(self, message: str | bytes) -> bool:
        """Send `message` unless the socket is closed; whether it went."""
        if self._closed.is_set() or self._ws is None:
            return False
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            return False
        return True

    async def wait_until_quiet(self, quiet_ms: float = 300, timeout_s: float = 10) -> None:
        """Wait until the bot has sent nothing for `quiet_ms` and everything queued has played."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now = monotonic_ms()
            if self.playout.queued_ms_at(now) == 0 and now - self.last_media_ms >= quiet_ms:
                await self.echo_marks(self.playout.advance(now), now)  # bring the model up to date
                return
            await asyncio.sleep(0.02)
        raise TimeoutError("the bot kept talking")

    async def wait_closed(self, timeout_s: float = 10) -> int | None:
        """Wait for the gateway to close the socket; returns the close code."""
        await asyncio.wait_for(self._closed.wait(), timeout_s)
        return self.close_code

    # -- ending --------------------------------------------------------------------------------------

    async def hang_up(self, *, send_stop: bool = True) -> None:
        """Send the provider's stop messages (as it does when the caller hangs up), close the socket,
        stop the tasks."""
        self._hanging_up = True
        if self.hung_up_ms is None:
            self.hung_up_ms = monotonic_ms()
            if not self._closed.is_set():  # marks due by now go back before the stop, as on a phone
                await self.echo_marks(self.playout.advance(self.hung_up_ms), self.hung_up_ms)
        if self._ws is not None and send_stop:
            for message in self.wire.stop():
                await self._send_unless_closed(message)
        if self._ws is not None:
            await self._ws.close()
        self._closed.set()
        if self._ticker is not None:
            await self._ticker.release(self)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


TwilioCall = PhoneCall  # the default provider; the name most tests know it by
