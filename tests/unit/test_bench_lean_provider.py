"""The capacity bench's lean provider client against each provider's real dialect, over a fake transport.

The client's upgrade and opening are fed to the gateway's own dialect for the provider; what the dialect
sends back (audio with its playback requests, a clear) is fed to the client as server frames. No socket
and no clock wait: the client must play audio out in order, hold each confirmation until the audio
before it has played, and on a clear confirm or drop what is pending as the provider does.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.latency import ULAW_8K
from bench.lean_provider import PARAMETERS, ProviderCall, ProviderLoad, WireScript, playout_rule
from bench.lean_twilio import CallerScript
from bench.wsframes import (
    OP_BINARY,
    OP_TEXT,
    apply_mask,
    parse_client_handshake,
    read_frame_header,
    server_frame,
    server_handshake_response,
    split_http_head,
)
from gateway.loadtest.wires import PROVIDERS, make_wire
from gateway.telephony.events import (
    CallStarted,
    ClearPlayback,
    PlayAudio,
    PlayedTo,
    ProtocolViolation,
    TelephonyEvent,
)
from gateway.telephony.provider import Dialect, HttpRequest
from gateway.telephony.providers import PROVIDERS as GATEWAY_PROVIDERS
from telcodec import WireFormat

CHUNKS = 25  # audio messages sent before the clear (at least 0.5 s of audio)


class _Transport(asyncio.Transport):
    """Records what the client writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.read_to = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def sent(self) -> list[str | bytes]:
        """The messages written since the last call, unmasked."""
        out: list[str | bytes] = []
        while (header := read_frame_header(self.written, self.read_to)) is not None:
            opcode, start, end, key, _fin = header
            payload = apply_mask(self.written[start:end], key)
            out.append(payload.decode() if opcode == OP_TEXT else payload)
            self.read_to = end
        return out


def _feed(dialect: Dialect, message: str | bytes) -> TelephonyEvent:
    return dialect.receive_bytes(message) if isinstance(message, bytes) else dialect.receive_text(message)


def _to_client(call: ProviderCall, messages: tuple[str | bytes, ...]) -> None:
    frames = [
        server_frame(m, OP_BINARY) if isinstance(m, bytes) else server_frame(m.encode()) for m in messages
    ]
    call.data_received(b"".join(frames))


async def _open(provider: str) -> tuple[ProviderCall, _Transport, Dialect]:
    """A call upgraded and started: its opening went to the provider's dialect, which started the call."""
    load = ProviderLoad("127.0.0.1", 8080, provider, paced=False)
    call = ProviderCall(load, 0, make_wire(provider, load.call_id(0), PARAMETERS, load.format))
    transport = _Transport()
    call.connection_made(transport)
    split = split_http_head(transport.written)
    assert split is not None
    path, headers = parse_client_handshake(split[0])
    assert path == f"/{provider}/media"
    del transport.written[: split[1]]
    call.data_received(server_handshake_response(headers["sec-websocket-key"]))
    gateway = GATEWAY_PROVIDERS[provider]
    request = HttpRequest("GET", "ws://gateway" + path, headers)
    dialect = gateway.dialect_for(request) if gateway.dialect_for is not None else gateway.dialect()
    events = [_feed(dialect, message) for message in transport.sent()]
    assert [e.call_id for e in events if isinstance(e, CallStarted)] == [call.call_id]
    return call, transport, dialect


@pytest.mark.parametrize("provider", PROVIDERS)
async def test_confirmations_wait_for_playout_and_a_clear_confirms_or_drops_them(provider: str) -> None:
    """Audio queues in order and its requests stay pending while it plays; a clear confirms them at once
    (Twilio, SignalWire, Telnyx) or drops them (the others) and sends the provider's answer to a clear;
    after that, a request is confirmed once its audio has played, and the dialect reads it as such."""
    call, transport, dialect = await _open(provider)
    rule = playout_rule(provider, call.wire.format)
    size = max(rule.min_bytes, call.wire.format.frame_bytes(20))
    size -= size % rule.multiple_bytes
    for k in range(1, CHUNKS + 1):
        _to_client(call, dialect.send(PlayAudio(bytes(size), k * size // call.wire.format.bytes_per_sample)))
    confirms = provider != "acs"
    assert (call.received_bytes, list(call.media_offset)) == (
        CHUNKS * size,
        [k * size for k in range(CHUNKS)],
    )
    assert (call.marks_received, call.marks_echoed, call.strange) == (CHUNKS if confirms else 0, 0, 0)
    assert transport.sent() == []

    _to_client(call, dialect.send(ClearPlayback()))
    confirmed_at_clear = CHUNKS if call.wire.flush_confirms_pending and confirms else 0
    assert (call.clears, call.marks_echoed) == (1, confirmed_at_clear)
    assert call.marks_dropped == (CHUNKS if confirms else 0) - confirmed_at_clear
    replies = transport.sent()
    assert len(replies) == confirmed_at_clear + len(call.wire.flushed())
    assert not any(isinstance(_feed(dialect, reply), ProtocolViolation) for reply in replies)

    _to_client(
        call, dialect.send(PlayAudio(bytes(size), (CHUNKS + 1) * size // call.wire.format.bytes_per_sample))
    )
    call.confirm_due(time.monotonic() + 1.0)
    if confirms:
        (confirmation,) = transport.sent()
        assert isinstance(_feed(dialect, confirmation), PlayedTo)


def test_call_ids_survive_every_dialect_even_when_hex_would_decode() -> None:
    """Call ids are CallSids for Twilio and SignalWire and UUIDs for the others, and every dialect reads
    them back unchanged, including Plivo's, which un-hexes its CallUUID header: a run id whose "CA" + hex
    id would decode to valid UTF-8 there (0xCA 0x97 ...) must not reach the gateway mangled."""
    for provider in PROVIDERS:
        load = ProviderLoad("127.0.0.1", 8080, provider, paced=False, run_id="97593600")
        call_id = load.call_id(3)
        assert call_id.startswith("CA") is (provider in ("twilio", "signalwire"))
        wire = make_wire(provider, call_id, PARAMETERS)
        gateway = GATEWAY_PROVIDERS[provider]
        headers = {k.lower(): v for k, v in wire.upgrade_headers().items()}
        request = HttpRequest("GET", "ws://gateway" + wire.path, headers)
        dialect = gateway.dialect_for(request) if gateway.dialect_for is not None else gateway.dialect()
        events = [_feed(dialect, message) for message in wire.opening()]
        assert [e.call_id for e in events if isinstance(e, CallStarted)] == [call_id], provider


@pytest.mark.parametrize("fmt", [ULAW_8K, WireFormat.of("alaw", 8000), WireFormat.of("l16", 16000)], ids=str)
def test_wire_script_is_the_caller_script_in_the_wire_format(fmt: WireFormat) -> None:
    """The caller script converts once into 20 ms frames of the wire's format, as many as the script has;
    mu-law 8 kHz keeps the script's own bytes and silence stays silence."""
    script = CallerScript.speech_then_silence(speech_ms=100, cycle_ms=200)
    wire = WireScript.convert(script, fmt)
    assert len(wire.frames) == len(script.frames)
    assert {len(frame.audio) for frame in wire.frames} == {fmt.frame_bytes(20)}
    if fmt == ULAW_8K:
        assert tuple(frame.audio for frame in wire.frames) == script.frames
    assert wire.frames[-1].audio == fmt.silence(20)
    assert wire.frames[1].audio != fmt.silence(20)
