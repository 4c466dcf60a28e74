"""A lean load for any provider the gateway serves: hundreds of calls from ONE process, driven by wires.

`ProviderLoad` does for every provider what `bench.lean_twilio.TwilioLoad` does for Twilio, with one
`gateway.loadtest.wires.ProviderWire` per call building every message it sends and reading every message
it gets, so no provider layout is written here. Each call is an asyncio Protocol speaking WebSocket by
hand (`bench.wsframes`) and behaves like the provider:

* the upgrade on the provider's route (`wire.path`, `wire.upgrade_headers()`), then `wire.opening()`;
* caller audio as 20 ms frames at real time on an absolute schedule, in the stream's format: the caller
  script (`bench.lean_twilio.CallerScript`, mu-law 8 kHz) is converted to the wire's format once per
  load (`WireScript`), and each frame is one `wire.media(frame)` (text or binary);
* bot audio played out in real time, in order: a `PlayedRequest` (mark, checkpoint, notify) is confirmed
  with `wire.played(name)` once the audio queued before it has played; a `FLUSH` drops the queue,
  confirms the pending requests at once if `wire.flush_confirms_pending` (else drops them) and sends
  `wire.flushed()`;
* `wire.stop()` and a close frame on hang-up.

What keeps it cheap: ONE ticker task for all calls ticking every millisecond, each call on a phase (its
frames go out on ticks `phase + 20k`, so the gateway sees frames spread over each 20 ms as from real,
unsynchronised calls); the script's frames and their base64 are built once; frames are masked with the
fixed key. Per frame the wire's json is built and masked (a few microseconds): simpler than Twilio's
pre-masked templates and cheap enough for a couple hundred calls on one core.

Each call records what the added-latency figures need, as `LeanCall` does: when each caller frame was
written (`sent_at`), when each bot media message arrived and its first byte's offset in the call's bot
audio (`media_at`, `media_offset`, bytes of the stream's format), and the first clear. The load's
`lag_s` holds how late each tick ran: the load side's own event-loop lag.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import os
import time
import uuid
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

import numpy as np
import numpy.typing as npt

from bench.lean_twilio import CallerScript, CallState
from bench.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    client_frame,
    client_handshake,
    close_payload,
    read_frame_header,
    split_http_head,
    verify_server_handshake,
)
from gateway.loadtest.wires import (
    FLUSH,
    BotAudio,
    PlayedRequest,
    ProviderWire,
    Strange,
    WireFrame,
    make_wire,
)
from gateway.telephony.events import PlayoutRule
from gateway.telephony.provider import HttpRequest
from gateway.telephony.providers import PROVIDERS as GATEWAY_PROVIDERS
from telcodec import Encoding, Resampler, WireFormat, alaw_encode, ulaw_decode, ulaw_encode

__all__ = [
    "FRAME_MS",
    "PARAMETERS",
    "PHASES",
    "TICK_S",
    "ProviderCall",
    "ProviderLoad",
    "WireScript",
    "playout_rule",
]

FRAME_MS: Final = 20
TICK_S: Final = 0.001
PHASES: Final = 20  # ticks per frame period: calls are spread over them
SCRIPT_RATE: Final = 8000  # the caller script is mu-law at 8 kHz
PARAMETERS: Final[Mapping[str, str]] = {"From": "+15550100", "To": "+15550199"}
CALL_SID_PROVIDERS: Final = frozenset({"twilio", "signalwire"})  # their calls are named by a CallSid
STRANGE_KEPT: Final = 5  # problems kept per call (all are counted)
_CLOSE_WAIT_S: Final = 5.0


def _encode(pcm: npt.NDArray[np.int16], encoding: Encoding) -> bytes:
    if encoding is Encoding.ULAW:
        return ulaw_encode(pcm)
    if encoding is Encoding.ALAW:
        return alaw_encode(pcm)
    return pcm.astype("<i2").tobytes()


@dataclass(frozen=True, slots=True)
class WireScript:
    """The caller script in one wire format: 20 ms frames with their base64, shared by every call."""

    format: WireFormat
    frames: tuple[WireFrame, ...]

    @classmethod
    def convert(cls, script: CallerScript, fmt: WireFormat) -> WireScript:
        """Decode the mu-law script, resample it whole to the format's rate and encode it (mu-law 8 kHz:
        the script's own bytes)."""
        audio = b"".join(script.frames)
        if fmt != WireFormat(Encoding.ULAW, SCRIPT_RATE):
            pcm = ulaw_decode(audio)
            if fmt.rate != SCRIPT_RATE:
                resampler = Resampler(SCRIPT_RATE, fmt.rate)
                pcm = np.concatenate((resampler.process(pcm), resampler.flush()))
            audio = _encode(pcm, fmt.encoding)
        size = fmt.frame_bytes(FRAME_MS)
        return cls(fmt, tuple(WireFrame.of(audio[i : i + size]) for i in range(0, len(audio), size)))


def playout_rule(provider: str, fmt: WireFormat | None = None) -> PlayoutRule:
    """How the gateway's own dialect for `provider` cuts bot audio in `fmt` (its default: None): a wire's
    opening is fed to the dialect, which knows the format from then on."""
    wire = make_wire(provider, "CA" + "0" * 32, PARAMETERS, fmt)
    gateway_side = GATEWAY_PROVIDERS[provider]
    if gateway_side.dialect_for is not None:
        headers = {k.lower(): v for k, v in wire.upgrade_headers().items()}
        dialect = gateway_side.dialect_for(HttpRequest("GET", "ws://gateway" + wire.path, headers))
    else:
        dialect = gateway_side.dialect()
    for message in wire.opening():
        if isinstance(message, bytes):
            dialect.receive_bytes(message)
        else:
            dialect.receive_text(message)
    return dialect.playout


class ProviderCall(asyncio.Protocol):
    """One simulated call; created and driven by `ProviderLoad` (use `ProviderLoad.open_call`)."""

    def __init__(self, load: ProviderLoad, number: int, wire: ProviderWire) -> None:
        self.load = load
        self.number = number
        self.wire = wire
        self.call_id = wire.call_id
        self.state = CallState.CONNECTING
        self.sent_at = array("d")  # when caller frame k was written (time.monotonic)
        self.media_at = array("d")  # when each bot media message arrived
        self.media_offset = array("q")  # its first byte's offset in the call's bot audio
        self.received_bytes = 0
        self.marks_received = 0  # the gateway's requests to confirm playback (marks, checkpoints, notifies)
        self.marks_echoed = 0  # confirmations sent
        self.marks_dropped = 0  # requests a clear dropped unconfirmed (providers that confirm none then)
        self.clears = 0
        self.first_clear_at: float | None = None
        self.strange = 0  # messages the provider would not accept
        self.problems: list[str] = []  # the first STRANGE_KEPT of them
        self.close_code: int | None = None
        self.next_tick = 0  # the ticker tick on which the next frame is due
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._play_end = 0.0  # when the audio queued so far finishes playing
        self._pending: deque[tuple[float, str]] = deque()  # requests waiting for their audio to play

    @property
    def call_sid(self) -> str:
        """The call id (the name `LeanCall` gives it): the realtime session's request id derives from it."""
        return self.call_id

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request on the provider's route, with its headers."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        load = self.load
        headers = self.wire.upgrade_headers()
        self._transport.write(client_handshake(load.host, load.port, self.wire.path, self._key, headers))

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: stop sending, resolve the waiters."""
        self.state = CallState.CLOSED
        self.load.forget(self)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Parse whatever frames are complete and act on what the wire reads in them."""
        now = time.monotonic()
        buffer = self._buffer
        buffer += data
        if self.state is CallState.CONNECTING and not self._finish_upgrade():
            return
        pos = 0
        while (header := read_frame_header(buffer, pos)) is not None:
            opcode, start, end, _key, _fin = header
            if opcode == OP_TEXT:
                self._on_message(bytes(buffer[start:end]).decode("utf-8", "replace"), now)
            elif opcode == OP_BINARY:
                self._on_message(bytes(buffer[start:end]), now)
            else:
                self._on_control(opcode, bytes(buffer[start:end]))
            pos = end
        if pos:
            del buffer[:pos]

    # -- upgrade and set-up ------------------------------------------------------------------------------

    def _finish_upgrade(self) -> bool:
        split = split_http_head(self._buffer)
        if split is None:
            return False
        head, used = split
        del self._buffer[:used]
        try:
            verify_server_handshake(head, self._key)
        except HandshakeError as exc:
            self.opened.set_exception(exc)
            assert self._transport is not None
            self._transport.close()
            return False
        self.state = CallState.OPEN
        for message in self.wire.opening():
            self._send(message)
        self.opened.set_result(None)
        return True

    def _send(self, message: str | bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if isinstance(message, str):
                self._transport.write(client_frame(message.encode()))
            else:
                self._transport.write(client_frame(message, OP_BINARY))

    # -- caller audio --------------------------------------------------------------------------------------

    def send_due_frames(self, tick: int, now: float) -> None:
        """Write every frame due by `tick` (one, unless the loop fell behind)."""
        if self._transport is None or self.state is not CallState.OPEN:
            return
        frames, sent_at = self.load.script.frames, self.sent_at
        while self.next_tick <= tick:
            self._send(self.wire.media(frames[len(sent_at) % len(frames)]))
            sent_at.append(now)
            self.next_tick += PHASES

    def send_frame(self) -> None:
        """Write the next frame now, off the schedule (for an unpaced `ProviderLoad`)."""
        if self._transport is not None and self.state is CallState.OPEN:
            frames = self.load.script.frames
            self._send(self.wire.media(frames[len(self.sent_at) % len(frames)]))
            self.sent_at.append(time.monotonic())

    # -- bot audio and confirmations -----------------------------------------------------------------------

    def _on_message(self, message: str | bytes, now: float) -> None:
        read = self.wire.read(message)
        if isinstance(read, BotAudio):
            size = len(read.audio)
            self.media_at.append(now)
            self.media_offset.append(self.received_bytes)
            self.received_bytes += size
            self._play_end = max(now, self._play_end) + self.wire.format.duration_ms(size) / 1000
        elif isinstance(read, PlayedRequest):
            self.marks_received += 1
            if self._play_end <= now and not self._pending:
                self._confirm(read.name)
            else:
                self._pending.append((self._play_end, read.name))
                if len(self._pending) == 1:
                    self.load.due(self._play_end, self)
        elif read is FLUSH:
            self._flush(now)
        else:
            assert isinstance(read, Strange)
            self.strange += 1
            if len(self.problems) < STRANGE_KEPT:
                self.problems.append(read.problem)

    def _flush(self, now: float) -> None:
        self.clears += 1
        if self.first_clear_at is None:
            self.first_clear_at = now
        self._play_end = now
        if self.wire.flush_confirms_pending:
            while self._pending:
                self._confirm(self._pending.popleft()[1])
        else:
            self.marks_dropped += len(self._pending)
            self._pending.clear()
        for message in self.wire.flushed():
            self._send(message)

    def confirm_due(self, now: float) -> None:
        """Confirm the requests whose audio has played by `now`; the ticker calls this when one is due."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            self._confirm(pending.popleft()[1])
        if pending:
            self.load.due(pending[0][0], self)

    def _confirm(self, name: str) -> None:
        self.marks_echoed += 1
        self._send(self.wire.played(name))

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING and self._transport is not None:
            self._transport.write(client_frame(payload, OP_PONG))
        elif opcode == OP_CLOSE:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            if self.state is not CallState.CLOSING and self._transport is not None:
                self._transport.write(client_frame(payload[:2], OP_CLOSE))
            self.state = CallState.CLOSING
            if self._transport is not None:
                self._transport.close()
        elif opcode != OP_PONG:
            self.strange += 1
            if len(self.problems) < STRANGE_KEPT:
                self.problems.append(f"frame with opcode {opcode}")

    # -- ending ----------------------------------------------------------------------------------------------

    async def hang_up(self) -> None:
        """Send the wire's `stop` and a close frame, then wait (bounded) for the gateway to close."""
        if self.state is CallState.OPEN and self._transport is not None:
            for message in self.wire.stop():
                self._send(message)
            self._transport.write(client_frame(close_payload(1000), OP_CLOSE))
            self.state = CallState.CLOSING
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), _CLOSE_WAIT_S)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()


class ProviderLoad:
    """Many lean calls of one provider on the running event loop, driven by one ticker; `await aclose()`.

    `fmt` picks one of the provider's formats (default: its first). A call's id is made of a random run
    id and the call's number (see `call_id`); `gateway.realtime.upstream.client_request_id` maps it to
    the realtime session's request id. Unpaced
    (`paced=False`), no ticker runs: the owner sends frames with `ProviderCall.send_frame` and
    confirmations are not sent (tests that step a call frame by frame).
    """

    def __init__(
        self,
        host: str,
        port: int,
        provider: str,
        fmt: WireFormat | None = None,
        script: CallerScript | None = None,
        *,
        paced: bool = True,
        run_id: str | None = None,
    ) -> None:
        self.host, self.port, self.provider = host, port, provider
        self.format = make_wire(provider, "CA" + "0" * 32, fmt=fmt).format  # ValueError if unknown
        self.paced = paced
        self.script = WireScript.convert(script or CallerScript.speech_then_silence(), self.format)
        self.calls: list[ProviderCall] = []
        self.lag_at = array("d")  # when each tick was due
        self.lag_s = array("d")  # how late it ran
        self._run_id = run_id if run_id is not None else os.urandom(4).hex()  # 8 hex digits
        self._phases: list[list[ProviderCall]] = [[] for _ in range(PHASES)]
        self._heap: list[tuple[float, int, ProviderCall]] = []
        self._order = itertools.count()
        self._numbers = itertools.count()
        self._base = time.monotonic()
        self._tick = 0
        self._task: asyncio.Task[None] | None = None

    def call_id(self, number: int) -> str:
        """Call `number`'s id: a CallSid ("CA" + 32 hex digits) for Twilio and SignalWire, a UUID (as
        Plivo, Vonage and ACS name calls) for the others.

        A UUID also keeps the id clear of Plivo's hex encoding: the gateway's Plivo dialect un-hexes the
        CallUUID extra header (its answer hex-encodes it), while `PlivoWire` sends the id as it is, so a
        "CA" + hex id whose bytes happen to be valid UTF-8 would reach the gateway mangled."""
        digits = f"{self._run_id}{number:024x}"
        return "CA" + digits if self.provider in CALL_SID_PROVIDERS else str(uuid.UUID(digits))

    async def open_call(self, timeout_s: float = 10.0) -> ProviderCall:
        """Connect one call, upgrade, send the wire's opening; its frames start on its next phase."""
        loop = asyncio.get_running_loop()
        number = next(self._numbers)
        wire = make_wire(self.provider, self.call_id(number), PARAMETERS, self.format)
        call = ProviderCall(self, number, wire)
        await asyncio.wait_for(loop.create_connection(lambda: call, self.host, self.port), timeout_s)
        await asyncio.wait_for(asyncio.shield(call.opened), timeout_s)
        phase = number % PHASES
        tick = self._tick + 1
        call.next_tick = tick + (phase - tick) % PHASES
        self._phases[phase].append(call)
        self.calls.append(call)
        if self._task is None and self.paced:
            self._task = loop.create_task(self._run())
        return call

    def forget(self, call: ProviderCall) -> None:
        """Stop sending for `call` (its socket closed)."""
        bucket = self._phases[call.number % PHASES]
        if call in bucket:
            bucket.remove(call)

    def due(self, at: float, call: ProviderCall) -> None:
        """`call` has a confirmation due at `at`: the ticker will call its `confirm_due`."""
        heapq.heappush(self._heap, (at, next(self._order), call))

    async def hang_up(self, calls: Sequence[ProviderCall]) -> None:
        """Hang up these calls, concurrently."""
        await asyncio.gather(*(call.hang_up() for call in calls))

    async def aclose(self) -> None:
        """Hang up every call still open and stop the ticker."""
        await self.hang_up([c for c in self.calls if c.state is not CallState.CLOSED])
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        base, phases, heap = self._base, self._phases, self._heap
        while True:
            now = time.monotonic()
            while base + self._tick * TICK_S <= now:  # every tick due by now, in order (catch-up)
                tick = self._tick
                self.lag_at.append(base + tick * TICK_S)
                self.lag_s.append(now - base - tick * TICK_S)
                for call in phases[tick % PHASES]:
                    call.send_due_frames(tick, now)
                self._tick += 1
            while heap and heap[0][0] <= now:
                heapq.heappop(heap)[2].confirm_due(now)
            await asyncio.sleep(max(0.0, base + self._tick * TICK_S - time.monotonic()))
