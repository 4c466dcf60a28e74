"""A lean Twilio Media Streams load: hundreds of calls from ONE process, cheap enough to measure a gateway.

`TwilioLoad` opens calls on one event loop, each an asyncio Protocol speaking WebSocket by hand
(`bench.wsframes`), and behaves like Twilio: `connected`, `start` (streamSid, callSid,
customParameters), then 20 ms `media` frames at real time on an absolute schedule, `mark` echoes when
the audio queued before a mark has played at real time, `clear` flushing the queue (pending marks echoed
at once), and `stop` at the end.

What keeps it cheap:

* ONE ticker task for all calls, ticking every millisecond. Each call gets a phase (its frames go out
  on ticks `phase + 20k`), so the gateway sees frames spread over each 20 ms as with real, unsynchronised
  calls, not one burst per period.
* Media frames are pre-built: the mask key is fixed and every per-frame field has a fixed width, so the
  masked audio part of each frame of the caller's (repeating) script is computed once for all calls;
  per frame only the ~110-byte counter prefix is formatted and masked. That is why media frames keep
  their own template (the layout of `twilio_wire.caller_media` with zero-padded counters): building
  each frame with the shared function means masking all of its ~400 bytes again, about 4.4 us a frame
  instead of 3 us. Every other message (`connected`, `start`, mark echoes, `stop`) is built by
  `gateway.telephony.twilio_wire`.
* Server frames are recognised by prefix (`media`, `mark`, `clear`, from `twilio_wire`); no json.loads,
  no base64 decode.

It records what the added-latency figures need: when each caller frame was written (`sent_at`) and
when each bot `media` message arrived with its byte offset in the call's bot audio (`media_at`,
`media_offset`). `lag_s` holds how late each tick ran: the load side's own event-loop lag.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import os
import time
from array import array
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, auto
from typing import Any, Final, Generic, Protocol, TypeVar, cast

from bench.wsframes import (
    MASK_KEY,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    apply_mask,
    client_frame,
    client_frame_header,
    client_handshake,
    close_payload,
    read_frame_header,
    split_http_head,
    verify_server_handshake,
)
from gateway.loadtest.scenarios import speech_ulaw
from gateway.telephony import twilio_wire

__all__ = [
    "FRAME_BYTES",
    "FRAME_S",
    "PHASES",
    "TICK_S",
    "CallState",
    "CallerScript",
    "LeanCall",
    "MediaTemplates",
    "TwilioLoad",
]

FRAME_BYTES: Final = 160  # 20 ms of mu-law at 8 kHz
FRAME_S: Final = 0.020
TICK_S: Final = 0.001
PHASES: Final = 20  # ticks per frame period: calls are spread over them
BYTES_PER_S: Final = 8000
SILENCE: Final = b"\xff" * FRAME_BYTES
_ACCOUNT_SID: Final = "AC" + "0" * 32
_CUSTOM_PARAMETERS: Final[Mapping[str, str]] = {"From": "+15550100", "To": "+15550199"}
# The layout of `twilio_wire.caller_media` with fixed-width counters (tests/unit/test_bench_measure.py
# checks that both parse to the same event).
_PREFIX: Final = (
    '{"event":"media","sequenceNumber":"%010d","media":{"track":"inbound",'
    '"chunk":"%010d","timestamp":"%010d","payload":"'
)
_PREFIX_LEN: Final = len(_PREFIX % (0, 0, 0))
_B64_LEN: Final = len(base64.b64encode(SILENCE))
_SUFFIX: Final = '"},"streamSid":"%s"}'
_SID_LEN: Final = 34  # "MZ" / "CA" + 32 hex digits
_PAYLOAD_LEN: Final = _PREFIX_LEN + _B64_LEN + len(_SUFFIX % ("x" * _SID_LEN))
_MEDIA_HEADER: Final = client_frame_header(OP_TEXT, _PAYLOAD_LEN)
_CLOSE_WAIT_S: Final = 5.0
_END: Final = len(twilio_wire.MESSAGE_SUFFIX)  # the bytes after a media payload or a mark name


def _rotated_key(offset: int) -> bytes:
    """The mask key as seen from payload byte `offset` (masking repeats every 4 bytes)."""
    shift = offset % 4
    return MASK_KEY[shift:] + MASK_KEY[:shift]


@dataclass(frozen=True, slots=True)
class CallerScript:
    """What every caller says, repeated for the whole call: 20 ms mu-law frames of one cycle."""

    frames: tuple[bytes, ...]

    @classmethod
    def speech_then_silence(cls, speech_ms: int = 2000, cycle_ms: int = 5000) -> CallerScript:
        """`speech_ms` of speech-like audio, then silence up to `cycle_ms` (both multiples of 20 ms)."""
        speech = speech_ulaw(speech_ms)
        frames = [speech[i : i + FRAME_BYTES] for i in range(0, len(speech), FRAME_BYTES)]
        frames += [SILENCE] * ((cycle_ms - speech_ms) // 20)
        return cls(tuple(frames))


class MediaTemplates:
    """The masked, shared parts of every `media` frame of a script (see the module doc)."""

    __slots__ = ("bodies",)

    def __init__(self, script: CallerScript) -> None:
        key = _rotated_key(_PREFIX_LEN)
        self.bodies = tuple(apply_mask(base64.b64encode(frame), key) for frame in script.frames)
        if any(len(frame) != FRAME_BYTES for frame in script.frames):
            raise ValueError("every frame of a caller script must be 160 bytes")

    @staticmethod
    def masked_suffix(stream_sid: str) -> bytes:
        """The masked end of this stream's media frames (it carries the streamSid)."""
        if len(stream_sid) != _SID_LEN:
            raise ValueError("streamSid must be 34 characters")
        return apply_mask((_SUFFIX % stream_sid).encode("ascii"), _rotated_key(_PREFIX_LEN + _B64_LEN))

    def frame(self, index: int, suffix: bytes) -> bytes:
        """The whole client frame of media frame `index` (0-based) of a call."""
        prefix = (_PREFIX % (index + 2, index + 1, index * 20)).encode("ascii")
        return b"".join((_MEDIA_HEADER, apply_mask(prefix), self.bodies[index % len(self.bodies)], suffix))


class CallState(Enum):
    """Where a lean call is: upgrading, streaming, hanging up, or closed."""

    CONNECTING = auto()
    OPEN = auto()
    CLOSING = auto()
    CLOSED = auto()


class LeanSocket(asyncio.Protocol):
    """One simulated call's WebSocket, hand-rolled on an asyncio Protocol: the upgrade, frames in and
    out, ping and close, the real-time playout clock and the confirmations (mark echoes, checkpoints,
    notifies) held until the audio before them has played. A subclass speaks one provider: `_on_open`
    (its opening messages), `_on_data` (a text or binary frame), `_confirm` (one confirmation) and
    `_goodbye` (what it sends when the caller hangs up)."""

    def __init__(
        self, load: PhasedLoad[Any], number: int, path: str, headers: dict[str, str] | None = None
    ) -> None:
        self.load = load
        self.number = number
        self.state = CallState.CONNECTING
        self.sent_at = array("d")  # when caller frame k was written (time.monotonic)
        self.media_at = array("d")  # when each bot media message arrived
        self.media_offset = array("q")  # its first byte's offset in the call's bot audio
        self.received_bytes = 0
        self.marks_received = 0  # the gateway's requests to confirm playback (marks, checkpoints, notifies)
        self.marks_echoed = 0  # confirmations sent
        self.clears = 0
        self.first_clear_at: float | None = None
        self.close_code: int | None = None
        self.next_tick = 0  # the ticker tick on which the next frame is due
        self.opened = asyncio.get_running_loop().create_future()
        self.closed = asyncio.get_running_loop().create_future()
        self._path, self._headers = path, headers
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._play_end = 0.0  # when the audio queued so far finishes playing
        self._pending: deque[tuple[float, str]] = deque()  # confirmations waiting for their audio to play

    # -- what a provider defines --------------------------------------------------------------------------

    def _on_open(self) -> None:
        """The upgrade completed: send the provider's opening messages."""
        raise NotImplementedError

    def _on_data(self, opcode: int, buffer: bytearray, start: int, end: int, now: float) -> None:
        """One text or binary frame from the gateway, its payload at `buffer[start:end]`."""
        raise NotImplementedError

    def _confirm(self, name: str) -> None:
        """Send the confirmation of the gateway's request `name` (its audio has played)."""
        raise NotImplementedError

    def _goodbye(self) -> None:
        """Send what the provider sends when the caller hangs up, before the close frame."""

    def _on_other_control(self, opcode: int) -> None:
        """A control frame other than ping, pong and close."""

    # -- asyncio.Protocol ------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        load = self.load
        self._transport.write(client_handshake(load.host, load.port, self._path, self._key, self._headers))

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: stop sending, resolve the waiters."""
        self.state = CallState.CLOSED
        self.load.forget(self)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the upgrade: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        """Parse whatever frames are complete."""
        now = time.monotonic()
        buffer = self._buffer
        buffer += data
        if self.state is CallState.CONNECTING and not self._finish_upgrade():
            return
        pos = 0
        while (header := read_frame_header(buffer, pos)) is not None:
            opcode, start, end, _key, _fin = header
            if opcode in (OP_TEXT, OP_BINARY):
                self._on_data(opcode, buffer, start, end, now)
            else:
                self._on_control(opcode, bytes(buffer[start:end]))
            pos = end
        if pos:
            del buffer[:pos]

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
        self._on_open()
        self.opened.set_result(None)
        return True

    def _send_frame(self, payload: bytes, opcode: int = OP_TEXT) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(client_frame(payload, opcode))

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
            self._on_other_control(opcode)

    # -- bot audio and confirmations, at real time ---------------------------------------------------------

    def _played(self, size: int, seconds: float, now: float) -> None:
        """Bot audio of `size` bytes and `seconds` arrived: it plays after what is queued."""
        self.media_at.append(now)
        self.media_offset.append(self.received_bytes)
        self.received_bytes += size
        self._play_end = max(now, self._play_end) + seconds

    def _requested(self, name: str, now: float) -> None:
        """The gateway asks for a confirmation once the audio queued before it has played."""
        self.marks_received += 1
        if self._play_end <= now and not self._pending:
            self._confirm(name)
        else:
            self._pending.append((self._play_end, name))
            if len(self._pending) == 1:
                self.load.due(self._play_end, self)

    def _cleared(self, now: float, *, confirm_pending: bool) -> int:
        """The gateway's clear: the queue is dropped; the pending requests are confirmed at once, or
        dropped (returns how many were dropped)."""
        self.clears += 1
        if self.first_clear_at is None:
            self.first_clear_at = now
        self._play_end = now
        dropped = 0
        if confirm_pending:
            while self._pending:
                self._confirm(self._pending.popleft()[1])
        else:
            dropped = len(self._pending)
            self._pending.clear()
        return dropped

    def confirm_due(self, now: float) -> None:
        """Confirm the requests whose audio has played by `now`; the ticker calls this when one is due."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            self._confirm(pending.popleft()[1])
        if pending:
            self.load.due(pending[0][0], self)

    # -- ending ----------------------------------------------------------------------------------------------

    async def hang_up(self) -> None:
        """Send the provider's goodbye and a close frame, then wait (bounded) for the gateway to close."""
        if self.state is CallState.OPEN and self._transport is not None:
            self._goodbye()
            self._transport.write(client_frame(close_payload(1000), OP_CLOSE))
            self.state = CallState.CLOSING
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), _CLOSE_WAIT_S)
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()


class LeanCall(LeanSocket):
    """One simulated Twilio call; created and driven by `TwilioLoad` (use `TwilioLoad.open_call`)."""

    def __init__(self, load: TwilioLoad, number: int, path: str) -> None:
        super().__init__(load, number, path)
        self.templates = load.templates
        tag = f"{os.getpid():08x}{number:024x}"
        self.call_sid = "CA" + tag
        self.stream_sid = "MZ" + tag
        self.other_messages = 0
        self._suffix = MediaTemplates.masked_suffix(self.stream_sid)
        self._sid = twilio_wire.quote_sid(self.stream_sid)
        self._media_prefix = twilio_wire.bot_media_prefix(self._sid).encode()
        self._mark_prefix = twilio_wire.mark_prefix(self._sid).encode()
        self._clear = twilio_wire.clear(self._sid).encode()
        self._seq = itertools.count(1_000_000_000)  # sequence numbers of non-media events

    def _on_open(self) -> None:
        self._send_frame(twilio_wire.connected().encode())
        start = twilio_wire.start(
            self._sid, call_sid=self.call_sid, account_sid=_ACCOUNT_SID, custom_parameters=_CUSTOM_PARAMETERS
        )
        self._send_frame(start.encode())

    # -- caller audio --------------------------------------------------------------------------------------

    def send_due_frames(self, tick: int, now: float) -> None:
        """Write every frame due by `tick` (one, unless the loop fell behind)."""
        transport = self._transport
        if transport is None or self.state is not CallState.OPEN:
            return
        templates, sent_at, suffix = self.templates, self.sent_at, self._suffix
        while self.next_tick <= tick:
            transport.write(templates.frame(len(sent_at), suffix))
            sent_at.append(now)
            self.next_tick += PHASES

    def send_frame(self) -> None:
        """Write the next frame now, off the schedule (for an unpaced `TwilioLoad`)."""
        if self._transport is not None and self.state is CallState.OPEN:
            self._transport.write(self.templates.frame(len(self.sent_at), self._suffix))
            self.sent_at.append(time.monotonic())

    # -- bot audio and marks, recognised by their prefix ----------------------------------------------------

    def _on_data(self, opcode: int, buffer: bytearray, start: int, end: int, now: float) -> None:
        if opcode != OP_TEXT:
            self.other_messages += 1
        elif buffer.startswith(self._media_prefix, start):
            tail = end - _END  # just past the payload
            digits = tail - start - len(self._media_prefix)
            size = digits // 4 * 3 - (buffer[tail - 1] == 61) - (buffer[tail - 2] == 61)
            self._played(size, size / BYTES_PER_S, now)
        elif buffer.startswith(self._mark_prefix, start):
            # The gateway names marks with digits: nothing to unescape.
            self._requested(buffer[start + len(self._mark_prefix) : end - _END].decode(), now)
        elif buffer.startswith(self._clear, start):
            self._cleared(now, confirm_pending=True)
        else:
            self.other_messages += 1

    def _confirm(self, name: str) -> None:
        self.marks_echoed += 1
        self._send_frame(twilio_wire.mark_echo(self._sid, name, sequence=next(self._seq)).encode())

    def _goodbye(self) -> None:
        stop = twilio_wire.stop(
            self._sid, call_sid=self.call_sid, account_sid=_ACCOUNT_SID, sequence=next(self._seq)
        )
        self._send_frame(stop.encode())


class LeanCallLike(Protocol):
    """What `PhasedLoad` drives: a call with a number, a phase slot and a state."""

    number: int
    next_tick: int
    state: CallState
    opened: asyncio.Future[None]

    def send_due_frames(self, tick: int, now: float) -> None: ...
    def confirm_due(self, now: float) -> None: ...
    async def hang_up(self) -> None: ...


C = TypeVar("C", bound=LeanCallLike)


class PhasedLoad(Generic[C]):
    """Many lean calls on the running event loop, driven by ONE ticker (every `TICK_S`): each call gets a
    phase (its frames go out on ticks `phase + 20k`), and confirmations (mark echoes, checkpoints,
    notifies) due at a time go out from one heap. `await aclose()` at the end.

    Unpaced (`paced=False`), no ticker runs: the owner sends frames itself and confirmations are not sent
    (tests that step a call frame by frame).
    """

    def __init__(self, host: str, port: int, *, paced: bool = True) -> None:
        self.host, self.port = host, port
        self.paced = paced  # False: no ticker (no frames, no confirmations) unless the owner sends them
        self.calls: list[C] = []
        self.lag_at = array("d")  # when each tick was due
        self.lag_s = array("d")  # how late it ran
        self._phases: list[list[C]] = [[] for _ in range(PHASES)]
        self._heap: list[tuple[float, int, C]] = []
        self._order = itertools.count()
        self._numbers = itertools.count()
        self._base = time.monotonic()
        self._tick = 0
        self._task: asyncio.Task[None] | None = None

    async def _connect(self, call: C, timeout_s: float) -> C:
        """Open `call`'s connection, wait for its upgrade, and give it its phase."""
        loop = asyncio.get_running_loop()
        protocol = cast(asyncio.Protocol, call)  # every lean call is an asyncio.Protocol
        await asyncio.wait_for(loop.create_connection(lambda: protocol, self.host, self.port), timeout_s)
        await asyncio.wait_for(asyncio.shield(call.opened), timeout_s)
        return self._admit(call)

    def _admit(self, call: C) -> C:
        """Give an opened call its phase (its frames start on it) and start the ticker if needed."""
        loop = asyncio.get_running_loop()
        phase = call.number % PHASES
        tick = self._tick + 1
        call.next_tick = tick + (phase - tick) % PHASES
        self._phases[phase].append(call)
        self.calls.append(call)
        if self._task is None and self.paced:
            self._task = loop.create_task(self._run())
        return call

    def forget(self, call: C) -> None:
        """Stop sending for `call` (its socket closed)."""
        bucket = self._phases[call.number % PHASES]
        if call in bucket:
            bucket.remove(call)

    def due(self, at: float, call: C) -> None:
        """`call` has a confirmation due at `at`: the ticker will call its `confirm_due`."""
        heapq.heappush(self._heap, (at, next(self._order), call))

    async def hang_up(self, calls: Sequence[C]) -> None:
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


class TwilioLoad(PhasedLoad["LeanCall"]):
    """Many lean Twilio calls on the running event loop, driven by one ticker (see `PhasedLoad`)."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str = "/media",
        script: CallerScript | None = None,
        *,
        paced: bool = True,
    ) -> None:
        super().__init__(host, port, paced=paced)
        self.path = path
        self.script = script if script is not None else CallerScript.speech_then_silence()
        self.templates = MediaTemplates(self.script)

    async def open_call(self, timeout_s: float = 10.0) -> LeanCall:
        """Connect one call, upgrade, send `connected` and `start`; its frames start on its next phase."""
        call = LeanCall(self, next(self._numbers), self.path)
        return await self._connect(call, timeout_s)
