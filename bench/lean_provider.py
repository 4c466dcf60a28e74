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

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from bench.lean_twilio import CallerScript, CallState, LeanSocket, PhasedLoad
from bench.wsframes import (
    OP_BINARY,
    OP_TEXT,
)
from gateway.loadtest.recordings import ulaw_in, wire_frames
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
from telcodec import WireFormat

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
PARAMETERS: Final[Mapping[str, str]] = {"From": "+15550100", "To": "+15550199"}
CALL_SID_PROVIDERS: Final = frozenset({"twilio", "signalwire"})  # their calls are named by a CallSid
STRANGE_KEPT: Final = 5  # problems kept per call (all are counted)
_CLOSE_WAIT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class WireScript:
    """The caller script in one wire format: 20 ms frames with their base64, shared by every call."""

    format: WireFormat
    frames: tuple[WireFrame, ...]

    @classmethod
    def convert(cls, script: CallerScript, fmt: WireFormat) -> WireScript:
        """The mu-law script in `fmt`, converted whole (`gateway.loadtest.recordings.ulaw_in`)."""
        return cls(fmt, wire_frames(ulaw_in(b"".join(script.frames), fmt), fmt))


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


class ProviderCall(LeanSocket):
    """One simulated call of any provider, every message through its wire; created and driven by
    `ProviderLoad` (use `ProviderLoad.open_call`)."""

    def __init__(self, load: ProviderLoad, number: int, wire: ProviderWire) -> None:
        super().__init__(load, number, wire.path, wire.upgrade_headers())
        self.script = load.script
        self.wire = wire
        self.call_id = wire.call_id
        self.marks_dropped = 0  # requests a clear dropped unconfirmed (providers that confirm none then)
        self.strange = 0  # messages the provider would not accept
        self.problems: list[str] = []  # the first STRANGE_KEPT of them

    @property
    def call_sid(self) -> str:
        """The call id (the name `LeanCall` gives it): the realtime session's request id derives from it."""
        return self.call_id

    def _on_open(self) -> None:
        for message in self.wire.opening():
            self._send(message)

    def _send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self._send_frame(message.encode())
        else:
            self._send_frame(message, OP_BINARY)

    # -- caller audio --------------------------------------------------------------------------------------

    def send_due_frames(self, tick: int, now: float) -> None:
        """Write every frame due by `tick` (one, unless the loop fell behind)."""
        if self._transport is None or self.state is not CallState.OPEN:
            return
        frames, sent_at = self.script.frames, self.sent_at
        while self.next_tick <= tick:
            self._send(self.wire.media(frames[len(sent_at) % len(frames)]))
            sent_at.append(now)
            self.next_tick += PHASES

    def send_frame(self) -> None:
        """Write the next frame now, off the schedule (for an unpaced `ProviderLoad`)."""
        if self._transport is not None and self.state is CallState.OPEN:
            frames = self.script.frames
            self._send(self.wire.media(frames[len(self.sent_at) % len(frames)]))
            self.sent_at.append(time.monotonic())

    # -- bot audio and confirmations, as the wire reads them -------------------------------------------------

    def _on_data(self, opcode: int, buffer: bytearray, start: int, end: int, now: float) -> None:
        data = bytes(buffer[start:end])
        read = self.wire.read(data.decode("utf-8", "replace") if opcode == OP_TEXT else data)
        if isinstance(read, BotAudio):
            size = len(read.audio)
            self._played(size, self.wire.format.duration_ms(size) / 1000, now)
        elif isinstance(read, PlayedRequest):
            self._requested(read.name, now)
        elif read is FLUSH:
            self.marks_dropped += self._cleared(now, confirm_pending=self.wire.flush_confirms_pending)
            for message in self.wire.flushed():
                self._send(message)
        else:
            assert isinstance(read, Strange)
            self._strange(read.problem)

    def _strange(self, problem: str) -> None:
        self.strange += 1
        if len(self.problems) < STRANGE_KEPT:
            self.problems.append(problem)

    def _confirm(self, name: str) -> None:
        self.marks_echoed += 1
        self._send(self.wire.played(name))

    def _on_other_control(self, opcode: int) -> None:
        self._strange(f"frame with opcode {opcode}")

    def _goodbye(self) -> None:
        for message in self.wire.stop():
            self._send(message)


class ProviderLoad(PhasedLoad["ProviderCall"]):
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
        super().__init__(host, port, paced=paced)
        self.provider = provider
        self.format = make_wire(provider, "CA" + "0" * 32, fmt=fmt).format  # ValueError if unknown
        self.script = WireScript.convert(script or CallerScript.speech_then_silence(), self.format)
        self._run_id = run_id if run_id is not None else os.urandom(4).hex()  # 8 hex digits

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
        number = next(self._numbers)
        wire = make_wire(self.provider, self.call_id(number), PARAMETERS, self.format)
        return await self._connect(ProviderCall(self, number, wire), timeout_s)
