"""A lean realtime-API stub (GA protocol) for the capacity bench: hundreds of sessions for little CPU.

`RealtimeStub` accepts the gateway's upstream WebSocket upgrades (asyncio Protocol, `bench.wsframes`),
answers `session.created` / `session.updated` in the GA shapes, and drives conversation turns by
timing alone (no audio decoding, no energy): on a cycle of `StubConfig.cycle_appends` appends it sends
`input_audio_buffer.speech_started`, later `speech_stopped` + `committed` + `response.created`, then
pre-encoded `response.output_audio.delta` messages (`delta_ms` each, `realtime_factor` x real time),
`response.output_audio.done`, the transcript and `response.done`. It also honours `response.cancel`,
`conversation.item.truncate`, `response.create` and answers pings.

Appends are recognised by a prefix check of their first unmasked bytes: no base64 decode, no json.
Each session records what the added-latency figures need: when each append arrived (`append_at`,
time.monotonic) and, per delta, when it was sent and where its audio sits (`DeltaRecord`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, cast

from bench.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    HandshakeError,
    apply_mask,
    close_payload,
    parse_client_handshake,
    read_frame_header,
    server_frame,
    server_handshake_response,
    split_http_head,
    unmask_prefix,
)
from gateway.emulator.voice import reply_audio
from gateway.realtime.session import AudioFormat
from gateway.realtime.upstream import PROBE_HEADER

__all__ = ["DeltaRecord", "RealtimeStub", "StubConfig", "StubSession"]

_APPEND: Final = b'{"type":"input_audio_buffer.append"'
_AUDIO_KEY: Final = b'"audio":"'
_PEEK: Final = 80  # unmasked bytes enough to find where an append's audio starts


@dataclass(frozen=True, slots=True)
class StubConfig:
    """How the stub talks. The defaults make a 5 s turn cycle: 2.5 s of caller turn, then a 2 s reply."""

    output_format: AudioFormat = AudioFormat.PCM16
    cycle_appends: int = 250  # one turn per this many appends (20 ms each: 5 s)
    speech_start_append: int = 10  # speech_started at this append of a cycle
    speech_stop_append: int = 125  # speech_stopped and the response at this one
    reply_ms: int = 2000
    delta_ms: int = 100
    realtime_factor: float = 4.0
    session_expires_s: int = 3600

    def __post_init__(self) -> None:
        if not 0 < self.speech_start_append < self.speech_stop_append < self.cycle_appends:
            raise ValueError("need 0 < speech_start_append < speech_stop_append < cycle_appends")
        if self.reply_ms % self.delta_ms or self.realtime_factor <= 0:
            raise ValueError("reply_ms must be a multiple of delta_ms; realtime_factor positive")


@dataclass(frozen=True, slots=True)
class DeltaRecord:
    """One audio delta sent: when, and where its audio starts (ms into its item; the item's own offset
    in the session's bot audio, ms, counting every earlier item whole)."""

    sent_at: float
    item_offset_ms: int
    start_ms: int
    size_ms: int


class _Reply:
    """The reply voice pre-encoded as base64 deltas (shared by every session)."""

    def __init__(self, config: StubConfig) -> None:
        audio = reply_audio(config.reply_ms, config.output_format)
        step = config.delta_ms * config.output_format.bytes_per_ms
        self.deltas = [base64.b64encode(audio[i : i + step]) for i in range(0, len(audio), step)]


class StubSession(asyncio.Protocol):
    """One upstream connection of the gateway (one call)."""

    def __init__(self, stub: RealtimeStub, number: int) -> None:
        self.stub = stub
        self.config = stub.config
        self.number = number
        self.path = ""
        self.headers: dict[str, str] = {}
        self.append_at = array("d")
        self.append_bytes = 0
        self.deltas: list[DeltaRecord] = []
        self.events: Counter[str] = Counter()  # client events other than appends, by type
        self.responses = 0
        self.cancelled = 0
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._open = False
        self._ids = 0
        self._item_offset_ms = 0
        self._item_sent_ms = 0  # audio of the active response sent so far
        self._active: tuple[str, str] | None = None  # (response id, item id) while streaming
        self._timers: list[asyncio.TimerHandle] = []
        self._speech_item = ""

    @property
    def request_id(self) -> str | None:
        """The gateway's `x-ms-client-request-id` for this session (derived from the CallSid)."""
        return self.headers.get("x-ms-client-request-id")

    # -- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Wait for the upgrade request."""
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget pending deltas."""
        self.closed = True
        self._cancel_timers()

    def data_received(self, data: bytes) -> None:
        """Parse whatever frames are complete; count appends by prefix."""
        now = time.monotonic()
        buffer = self._buffer
        buffer += data
        if not self._open and not self._upgrade():
            return
        pos = 0
        while (header := read_frame_header(buffer, pos)) is not None:
            opcode, start, end, key, _fin = header
            pos = end
            if opcode == OP_TEXT:
                head = unmask_prefix(buffer, start, end, key, _PEEK)
                if head.startswith(_APPEND):
                    self._on_append(head, _padding(buffer, start, end, key), end - start, now)
                else:
                    self._on_event(apply_mask(buffer[start:end], key) if key else bytes(buffer[start:end]))
            elif opcode in (OP_PING, OP_CLOSE):
                self._on_control(
                    opcode, apply_mask(buffer[start:end], key) if key else bytes(buffer[start:end])
                )
        if pos:
            del buffer[:pos]

    # -- handshake ---------------------------------------------------------------------------------------

    def _upgrade(self) -> bool:
        assert self._transport is not None
        try:
            split = split_http_head(self._buffer)
            if split is None:
                return False
            head, used = split
            self.path, self.headers = parse_client_handshake(head)
        except HandshakeError as exc:
            self._transport.write(f"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n{exc}".encode())
            self._transport.close()
            return False
        del self._buffer[:used]
        self._transport.write(server_handshake_response(self.headers["sec-websocket-key"]))
        self._open = True
        if PROBE_HEADER in self.headers:  # a gateway's readiness probe: answered, never counted as a call
            self.stub.probes += 1
        else:
            self.stub.sessions.append(self)
        self._send("session.created", session=self._session())
        return True

    def _session(self) -> dict[str, Any]:
        fmt = self.config.output_format.ga_format()
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_stub{self.number:06d}",
            "model": "stub",
            "expires_at": int(time.time()) + self.config.session_expires_s,
            "output_modalities": ["audio"],
            "audio": {"input": {"format": fmt}, "output": {"format": dict(fmt), "voice": "alloy"}},
        }

    # -- sending -------------------------------------------------------------------------------------------

    def _write(self, payload: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(server_frame(payload))

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}_{self.number:06d}_{self._ids:06d}"

    def _send(self, kind: str, **fields: Any) -> None:
        self._write(json.dumps({"type": kind, "event_id": self._new_id("event"), **fields}).encode())

    # -- caller audio and turns --------------------------------------------------------------------------

    def _on_append(self, head: bytes, padding: int, size: int, now: float) -> None:
        self.append_at.append(now)
        at = head.find(_AUDIO_KEY)
        if at > 0:
            digits = size - at - len(_AUDIO_KEY) - 2
            self.append_bytes += digits // 4 * 3 - padding
        config = self.config
        count = len(self.append_at)
        phase = count % config.cycle_appends
        if phase == config.speech_start_append:
            self._speech_item = self._new_id("item")
            start_ms = (count - phase) * 20
            self._send(
                "input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self._speech_item
            )
        elif phase == config.speech_stop_append:
            item = self._speech_item or self._new_id("item")
            self._send("input_audio_buffer.speech_stopped", audio_end_ms=count * 20, item_id=item)
            self._send("input_audio_buffer.committed", previous_item_id=None, item_id=item)
            self._start_response(now)

    def _start_response(self, now: float) -> None:
        if self._active is not None:
            return
        response_id, item_id = self._new_id("resp"), self._new_id("item")
        self._active = (response_id, item_id)
        self.responses += 1
        self._send("response.created", response=_response(response_id, "in_progress", None))
        loop = asyncio.get_running_loop()
        config = self.config
        interval = config.delta_ms / 1000 / config.realtime_factor
        reply = self.stub.reply
        base = loop.time()
        for index in range(len(reply.deltas)):
            self._timers.append(loop.call_at(base + index * interval, self._send_delta, index))
        self._timers.append(
            loop.call_at(base + len(reply.deltas) * interval, self._finish, "completed", None)
        )

    def _send_delta(self, index: int) -> None:
        assert self._active is not None
        response_id, item_id = self._active
        config = self.config
        self.deltas.append(
            DeltaRecord(time.monotonic(), self._item_offset_ms, index * config.delta_ms, config.delta_ms)
        )
        self._item_sent_ms += config.delta_ms
        head = (
            f'{{"type":"response.output_audio.delta","event_id":"{self._new_id("event")}",'
            f'"response_id":"{response_id}","item_id":"{item_id}","output_index":0,"content_index":0,'
            f'"delta":"'
        ).encode()
        self._write(b"".join((head, self.stub.reply.deltas[index], b'"}')))

    def _finish(self, status: str, reason: str | None) -> None:
        assert self._active is not None
        response_id, item_id = self._active
        self._active = None
        self._cancel_timers()
        self._item_offset_ms += self._item_sent_ms
        self._item_sent_ms = 0
        part = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        self._send("response.output_audio.done", **part)
        self._send("response.output_audio_transcript.done", **part, transcript="Here is your answer.")
        self._send("response.done", response=_response(response_id, status, reason))

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    # -- other client events ---------------------------------------------------------------------------

    def _on_event(self, payload: bytes) -> None:
        try:
            event = json.loads(payload)
            kind = str(event["type"])
        except (ValueError, KeyError, TypeError):
            self.events["<malformed>"] += 1
            return
        self.events[kind] += 1
        if kind == "session.update":
            self._send("session.updated", session=self._session())
        elif kind == "response.cancel":
            if self._active is None:
                self._send(
                    "error",
                    error={
                        "type": "invalid_request_error",
                        "code": "response_cancel_not_active",
                        "message": "Cancellation failed: no active response found",
                        "param": None,
                        "event_id": event.get("event_id"),
                    },
                )
            else:
                self.cancelled += 1
                self._finish("cancelled", "client_cancelled")
        elif kind == "conversation.item.truncate":
            self._send(
                "conversation.item.truncated",
                item_id=event.get("item_id"),
                content_index=event.get("content_index", 0),
                audio_end_ms=event.get("audio_end_ms", 0),
            )
        elif kind == "response.create":
            self._start_response(time.monotonic())

    def _on_control(self, opcode: int, payload: bytes) -> None:
        if self._transport is None:
            return
        if opcode == OP_PING:
            self._transport.write(server_frame(payload, OP_PONG))
        else:
            self._transport.write(server_frame(payload[:2] or close_payload(1000), OP_CLOSE))
            self._transport.close()


def _padding(buffer: bytearray, start: int, end: int, key: bytes) -> int:
    """How many '=' end the base64 audio of an append whose payload is buffer[start:end] (it ends '"}')."""
    at = max(start, end - 4)
    tail = buffer[at:end]
    if key:
        shift = (at - start) % 4
        tail = bytearray(apply_mask(tail, key[shift:] + key[:shift]))
    return tail[:2].count(b"=")


def _response(response_id: str, status: str, reason: str | None) -> dict[str, Any]:
    details = None if reason is None else {"type": status, "reason": reason}
    return {
        "object": "realtime.response",
        "id": response_id,
        "status": status,
        "status_details": details,
        "output": [],
        "usage": None,
    }


class RealtimeStub:
    """The stub server on `host:port` (0: a free port). `await start()` / `await stop()`, or `async with`."""

    def __init__(self, config: StubConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config if config is not None else StubConfig()
        self.host, self.port = host, port
        self.reply = _Reply(self.config)
        self.sessions: list[StubSession] = []
        self.probes = 0  # readiness probes answered (not in `sessions`)
        self._server: asyncio.Server | None = None
        self._count = 0

    @property
    def url(self) -> str:
        """The GA endpoint URL to give the gateway as REALTIME_URL."""
        return f"ws://{self.host}:{self.port}/openai/v1/realtime?model=stub"

    def _session(self) -> StubSession:
        self._count += 1
        return StubSession(self, self._count)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._session, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting and close every connection."""
        if self._server is not None:
            self._server.close()
            for session in self.sessions:
                if session._transport is not None and not session.closed:
                    session._transport.write(server_frame(close_payload(1001), OP_CLOSE))
                    session._transport.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RealtimeStub:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()
