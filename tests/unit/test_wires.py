"""The load generator's provider wires against the gateway's own dialects, sans-I/O.

Each wire's opening, media, DTMF and confirmations are fed to the real dialect of its provider, and
what the dialect sends (audio, confirmation requests, clear) is read back by the wire: the two sides of
every provider agree on every message the load generator uses.
"""

from __future__ import annotations

import pytest

from gateway.loadtest.wires import (
    FLUSH,
    PROVIDERS,
    BotAudio,
    PlayedRequest,
    ProviderWire,
    Strange,
    WireFrame,
    make_wire,
)
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    ProtocolViolation,
    TelephonyEvent,
)
from gateway.telephony.provider import Dialect, HttpRequest
from gateway.telephony.providers import PROVIDERS as GATEWAY_PROVIDERS
from telcodec import WireFormat


def _dialect(wire: ProviderWire) -> Dialect:
    provider = GATEWAY_PROVIDERS[wire.provider]
    if provider.dialect_for is not None:
        headers = {k.lower(): v for k, v in wire.upgrade_headers().items()}
        return provider.dialect_for(HttpRequest("GET", "ws://gw" + wire.path, headers))
    return provider.dialect()


def _feed(dialect: Dialect, message: str | bytes) -> TelephonyEvent:
    return dialect.receive_bytes(message) if isinstance(message, bytes) else dialect.receive_text(message)


def _cases() -> list[tuple[str, WireFormat]]:
    return [(name, fmt) for name in PROVIDERS for fmt in make_wire(name, "x").formats]


@pytest.mark.parametrize(("provider", "fmt"), _cases(), ids=lambda v: str(v))
def test_wire_and_dialect_agree(provider: str, fmt: WireFormat) -> None:
    wire = make_wire(provider, "CA" + "1" * 32, {"Greeting": "hi"}, fmt)
    dialect = _dialect(wire)
    events = [_feed(dialect, message) for message in wire.opening()]
    started = [e for e in events if isinstance(e, CallStarted)]
    assert len(started) == 1, events
    assert started[0].call_id == wire.call_id
    assert started[0].format == fmt
    if provider != "acs":  # ACS streams carry no parameters: the answer keeps the call's context
        assert started[0].custom_parameters.get("Greeting") == "hi"

    audio = bytes(i % 251 for i in range(fmt.frame_bytes(20)))
    media = _feed(dialect, wire.media(WireFrame.of(audio)))
    assert isinstance(media, MediaReceived)
    assert media.payload == audio
    assert wire.caller_ms == 20

    assert _feed(dialect, wire.dtmf("7")) == DtmfReceived("7")

    # Bot audio of one rule-sized piece comes back as the same bytes.
    rule = dialect.playout
    size = max(rule.min_bytes, fmt.frame_bytes(20))
    size -= size % rule.multiple_bytes
    bot = bytes([0x55]) * size
    frames = dialect.send(PlayAudio(bot, size))
    read = [wire.read(frame) for frame in frames]
    assert read[0] == BotAudio(bot), read
    requests = [r for r in read if isinstance(r, PlayedRequest)]
    assert all(not isinstance(r, Strange) for r in read), read
    if requests:  # a provider that confirms playback: the wire's confirmation moves the gateway on
        assert _feed(dialect, wire.played(requests[0].name)) == PlayedTo(size)
    else:
        assert wire.provider == "acs"

    assert [wire.read(frame) for frame in dialect.send(ClearPlayback())] == [FLUSH]
    for reply in wire.flushed():
        assert not isinstance(_feed(dialect, reply), ProtocolViolation)
    for message in wire.stop():
        assert isinstance(_feed(dialect, message), CallStopped)


def test_a_wire_reports_what_its_provider_would_refuse() -> None:
    wire = make_wire("twilio", "CA" + "2" * 32)
    assert isinstance(wire.read('{"event":"media","streamSid":"MZother","media":{"payload":""}}'), Strange)
    assert isinstance(wire.read("not json"), Strange)
    assert isinstance(wire.read(b"\x00"), Strange)
    vonage = make_wire("vonage", "call-1")
    assert isinstance(vonage.read(b"\x00" * 10), Strange)  # not a 20 ms frame
    assert isinstance(make_wire("acs", "c").read('{"Kind":"Other"}'), Strange)


def test_unknown_provider_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown provider"):
        make_wire("nope", "x")
    with pytest.raises(ValueError, match="streams"):
        make_wire("twilio", "x", fmt=WireFormat.of("l16", 16000))


def test_plivo_call_ids_survive_the_gateways_hex_decoding() -> None:
    """The gateway hex-decodes CallUUID (its answer hex-encodes it): an id that is itself valid hex, as
    the load generator's `CA<hex>` ones often are, must still come back unchanged."""
    for call_id in ("CA975936000000000000000000000000", "CAffff", "9f1c2d3e-aaaa-bbbb-cccc-0123456789ab"):
        wire = make_wire("plivo", call_id)
        dialect = _dialect(wire)
        started = [e for e in map(lambda m: _feed(dialect, m), wire.opening()) if isinstance(e, CallStarted)]
        assert started[0].call_id == call_id
