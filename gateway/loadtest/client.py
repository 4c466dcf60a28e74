"""A Twilio Media Streams client: plays a call against a gateway exactly as Twilio would.

It sends `connected`, `start` (with customParameters; signed with X-Twilio-Signature when given an auth
token), 20 ms mu-law `media` frames at real-time pace (or as fast as wanted), `dtmf`, and `stop`; and it
plays the gateway's audio through a `TwilioPlayout` in real time, echoing marks only when the audio
before them has played and flushing on `clear`. Used by the tests and by the load generator.

Every message it sends is built by `gateway.telephony.twilio_wire`, the one definition of Twilio's
layouts. Built to be cheap, so one process can drive hundreds of calls: outgoing `media` messages are
formatted from pre-encoded payloads (no json.dumps per frame); an incoming `media` message in the
gateway's own layout is recognised by its prefix and its payload sliced out (no json.loads); and
every call's playout is advanced by ONE shared ticker task per event loop (`SharedTicker`), not a
timer per call.
The client records what the measurements need (marks with their audio positions and echo times,
clears, response and barge-in latencies) as it goes.
"""

from __future__ import annotations

import asyncio
import base64
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

from gateway.loadtest.playout import PlayoutTicker, TwilioPlayout
from gateway.loadtest.recordings import FRAME_BYTES, FRAME_MS
from gateway.telephony import twilio_wire
from gateway.telephony.signature import SIGNATURE_HEADER, compute_signature

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "PLAYOUT_TICK_S",
    "MarkRecord",
    "ReceivedClear",
    "SharedTicker",
    "TwilioCall",
    "monotonic_ms",
]

PLAYOUT_TICK_S = 0.005  # how often the simulated phones play audio and echo marks
LAG_SAMPLES_KEPT = 200_000  # ticker lateness samples kept for the loop-lag figure (~17 min of ticks)
_SUFFIX_LEN = len(twilio_wire.MESSAGE_SUFFIX)


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
        self.core: PlayoutTicker[TwilioCall] = PlayoutTicker()
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

    def register(self, call: TwilioCall) -> None:
        """Play `call`'s audio from now on; starts the ticking task if it is not running."""
        self.core.register(call, call.playout)
        if self._task is None or self._task.done() or self._task.cancelling():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unregister(self, call: TwilioCall) -> None:
        """Stop playing `call`'s audio; the task ends by itself when no call is left."""
        self.core.unregister(call)

    async def release(self, call: TwilioCall) -> None:
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
class TwilioCall:
    """One simulated call. `await open()`, `await send_audio(...)`, `await hang_up()`; or `async with`.

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
    closed_by_gateway: bool = False
    _ws: ClientConnection | None = None
    _ticker: SharedTicker | None = None
    _seq: int = 0
    _chunk: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _closed: asyncio.Event = field(default_factory=asyncio.Event)
    _hanging_up: bool = False
    _sid_json: twilio_wire.QuotedSid = field(init=False)  # set from stream_sid in __post_init__
    _media_prefix: str = ""
    _pending_marks: dict[str, MarkRecord] = field(default_factory=dict)
    _voice_end_ms: float | None = None  # the last voiced frame went out; the bot's answer not yet here
    _interrupt_ms: float | None = None  # the caller started talking over the bot; no clear yet
    _turn_open: bool = False
    _turn_start_ms: float = 0.0  # played-audio position where the current bot turn began

    def __post_init__(self) -> None:
        self.playout.keep_audio = self.keep_audio
        self._sid_json = twilio_wire.quote_sid(self.stream_sid)
        self._media_prefix = twilio_wire.bot_media_prefix(self._sid_json)

    async def __aenter__(self) -> TwilioCall:
        await self.open()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.hang_up()

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

    # -- connecting ----------------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self.auth_token is None:
            return {}
        return {SIGNATURE_HEADER: compute_signature(self.auth_token, self.signed_url or self.url, {})}

    async def open(self, *, send_start: bool = True) -> None:
        """Connect, send `connected` and (by default) `start`, and begin playing what comes back."""
        self.connect_started_ms = monotonic_ms()
        self._ws = await connect(
            self.url, additional_headers=self._headers(), open_timeout=self.open_timeout_s, compression=None
        )
        self.opened_ms = monotonic_ms()
        await self.send_text(twilio_wire.connected())
        if send_start:
            await self.start()
        self._ticker = SharedTicker.for_running_loop()
        self._ticker.register(self)
        self._tasks = [asyncio.create_task(self._receive_loop())]

    async def start(self) -> None:
        """Send `start` with this call's ids and custom parameters."""
        await self.send_text(
            twilio_wire.start(
                self._sid_json,
                call_sid=self.call_sid,
                account_sid=self.account_sid,
                custom_parameters=self.custom_parameters,
                sequence=self._next_seq(),
            )
        )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def send_json(self, message: Mapping[str, Any]) -> None:
        """Send one JSON text frame."""
        await self.send_text(json.dumps(message))

    async def send_text(self, text: str) -> None:
        """Send one text frame as it is."""
        assert self._ws is not None, "open() first"
        await self._ws.send(text)

    # -- caller audio --------------------------------------------------------------------------------

    async def send_payload(
        self,
        payload: str,
        *,
        voiced: bool = False,
        voice_end: bool = False,
        interrupt_start: bool = False,
        n_bytes: int = FRAME_BYTES,
    ) -> None:
        """Send one `media` frame whose base64 `payload` is pre-encoded (`n_bytes` of mu-law).

        The flags say what the frame is for the measurements: caller speech, its last voiced frame
        (response latency starts), the first frame talking over the bot (barge-in latency starts).
        """
        self._chunk += 1
        self._seq += 1
        timestamp = int(self.caller_audio_sent_ms)
        self.caller_audio_sent_ms += n_bytes / 8
        self.frames_sent += 1
        await self.send_text(
            twilio_wire.caller_media(
                self._sid_json, payload, sequence=self._seq, chunk=self._chunk, timestamp_ms=timestamp
            )
        )
        if voiced:
            now = monotonic_ms()
            self._voice_end_ms = now if voice_end else None
            if interrupt_start:
                self._interrupt_ms = now
            if not self.playout.queued_ms_at(now):  # the caller spoke while the bot was silent: a new turn
                self._turn_open = False
                self.playout.new_turn()

    async def send_frame(self, frame: bytes) -> None:
        """Send one `media` frame (normally 160 bytes of mu-law)."""
        await self.send_payload(base64.b64encode(frame).decode("ascii"), n_bytes=len(frame))

    async def send_audio(self, ulaw: bytes, *, realtime: bool = True, speed: float = 1.0) -> None:
        """Send mu-law audio as 20 ms frames, paced at `speed` x real time (unpaced if not `realtime`)."""
        start = time.monotonic()
        for index, offset in enumerate(range(0, len(ulaw), FRAME_BYTES)):
            if realtime:
                due = start + index * FRAME_MS / 1000 / speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.send_frame(ulaw[offset : offset + FRAME_BYTES])

    async def send_dtmf(self, digit: str) -> None:
        """Send a `dtmf` event."""
        self.dtmf_sent += digit
        await self.send_text(twilio_wire.dtmf(self._sid_json, digit, sequence=self._next_seq()))

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
            self._closed.set()
            if self._ticker is not None:
                self._ticker.unregister(self)

    async def _on_message(self, message: str | bytes) -> None:
        now = monotonic_ms()
        if (
            isinstance(message, str)
            and message.startswith(self._media_prefix)
            and message.endswith(twilio_wire.MESSAGE_SUFFIX)
        ):
            await self._on_media(message[len(self._media_prefix) : -_SUFFIX_LEN], now)
            return
        try:
            data = json.loads(message)
            event = data["event"]
            if data.get("streamSid") != self.stream_sid:
                self.protocol_errors.append(f"wrong streamSid in {event}")
            if event == "media":
                await self._on_media(data["media"]["payload"], now)
            elif event == "mark":
                await self._on_mark(data["mark"]["name"], now)
            elif event == "clear":
                await self._on_clear(now)
            else:
                self.protocol_errors.append(f"unexpected event {event!r}")  # Twilio answers 31924
        except (ValueError, KeyError, TypeError):
            self.protocol_errors.append(f"unparseable message: {message!r:.80}")

    async def _on_media(self, payload: str, now: float) -> None:
        audio = base64.b64decode(payload)
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
        self.playout.media(audio, now)
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
        await self.echo_marks(echoes + flushed, now)

    def _reschedule(self) -> None:
        if self._ticker is not None:
            self._ticker.core.reschedule(self)

    async def echo_marks(self, names: Sequence[str], now: float) -> None:
        """Echo these marks, in order (called when their audio has played, or on clear)."""
        self.record_echoes(names, now)
        await self.send_echoes(names)

    def record_echoes(self, names: Iterable[str], now: float) -> None:
        """Record that these marks are echoed at `now` (then `send_echoes` sends them)."""
        for name in names:
            self.marks_echoed.append((name, now))
            record = self._pending_marks.pop(name, None)
            if record is not None:
                record.echoed_ms = now

    async def send_echoes(self, names: Iterable[str]) -> None:
        """Send a `mark` message for each name (nothing once the socket is closed)."""
        for name in names:
            if self._closed.is_set():
                return
            with contextlib.suppress(ConnectionClosed):
                await self.send_text(twilio_wire.mark_echo(self._sid_json, name, sequence=self._next_seq()))

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
        """Send `stop` (as Twilio does when the caller hangs up), close the socket, stop the tasks."""
        self._hanging_up = True
        if self.hung_up_ms is None:
            self.hung_up_ms = monotonic_ms()
            if not self._closed.is_set():  # marks due by now go back before the stop, as on a phone
                await self.echo_marks(self.playout.advance(self.hung_up_ms), self.hung_up_ms)
        if self._ws is not None and send_stop and not self._closed.is_set():
            with contextlib.suppress(ConnectionClosed):
                await self.send_text(
                    twilio_wire.stop(
                        self._sid_json,
                        call_sid=self.call_sid,
                        account_sid=self.account_sid,
                        sequence=self._next_seq(),
                    )
                )
        if self._ws is not None:
            await self._ws.close()
        self._closed.set()
        if self._ticker is not None:
            await self._ticker.release(self)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
