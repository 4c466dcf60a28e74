"""The SignalWire dialect and checks: Twilio's wire with SignalWire's formats, signatures and bearer token."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError
from gateway.telephony import signalwire
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    ProtocolViolation,
    StreamConnected,
)
from gateway.telephony.provider import HttpRequest, Refusal
from gateway.telephony.signalwire import SignalWireDialect, answer, check_answer, check_media, media_format
from gateway.telephony.signature import compute_signature
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER, issue_stream_token
from gateway.telephony.twilio import StreamState
from telcodec import WireFormat
from tests.unit.test_sans_io import FORBIDDEN, _imports

SID = "7d56cc11-536d-4a45-b4fb-ed3d55be843b"
CALL = "76ac3c36-56da-4a3e-a0d6-b5f8df6da9ad"
ACCOUNT = "b08dacad-2f6c-4de1-93d6-cc732e0c69c5"
ULAW = bytes(range(160))  # 20 ms of mu-law
L16 = bytes(range(256)) * 5  # 1,280 bytes of L16, the size in SignalWire's example


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _start(media_format: object = None, **extra: Any) -> dict[str, Any]:
    start: dict[str, Any] = {"streamSid": SID, "accountSid": ACCOUNT, "callSid": CALL, "tracks": ["inbound"]}
    if media_format is not None:
        start["mediaFormat"] = media_format
    return {"event": "start", "sequenceNumber": "1", "start": start | extra}


def _media(payload: bytes, chunk: int = 1) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(20 * chunk), "payload": _b64(payload)}
    return {"event": "media", "sequenceNumber": str(chunk + 1), "streamSid": SID, "media": media}


L16_24K = {"encoding": "audio/x-L16", "sampleRate": 24000, "channels": 1}
# A call as SignalWire's <Stream> page documents it (version 0.2.0, a dtmf with its duration), L16@24000h.
TRANSCRIPT: list[dict[str, Any]] = [
    {"event": "connected", "protocol": "Call", "version": "0.2.0"},
    _start(L16_24K, customParameters={"gatewayToken": "t"}),
    _media(L16, 1),
    {"event": "dtmf", "streamSid": SID, "dtmf": {"duration": 2700, "digit": "8"}},
    {"event": "mark", "streamSid": SID, "mark": {"name": "43500"}},
    {"event": "stop", "sequenceNumber": "1002", "streamSid": SID},
]
EXPECTED = [
    StreamConnected(protocol="Call", version="0.2.0"),
    CallStarted(
        stream_id=SID,
        call_id=CALL,
        account_id=ACCOUNT,
        tracks=("inbound",),
        custom_parameters={"gatewayToken": "t"},
        encoding="audio/x-L16",
        sample_rate=24000,
        channels=1,
        format=WireFormat.of("l16", 24000),
    ),
    MediaReceived(payload=L16, timestamp_ms=20, chunk=1, track="inbound"),
    DtmfReceived(digit="8"),
    PlayedTo(position=43500),
    CallStopped(),
]


def _streaming(media_format: dict[str, Any] | None = None) -> SignalWireDialect:
    dialect = SignalWireDialect()
    assert isinstance(dialect.receive_text(json.dumps(_start(media_format))), CallStarted)
    return dialect


def test_transcript_yields_the_right_events() -> None:
    """A documented L16@24000h call fed message by message yields exactly the expected events."""
    dialect = SignalWireDialect()
    assert [dialect.receive_text(json.dumps(message)) for message in TRANSCRIPT] == EXPECTED
    assert dialect.state is StreamState.STOPPED
    assert dialect.call == EXPECTED[1]


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        (None, WireFormat.of("ulaw", 8000)),  # no mediaFormat: PCMU, the default codec
        ({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, WireFormat.of("ulaw", 8000)),
        ({"encoding": "audio/x-mulaw"}, WireFormat.of("ulaw", 8000)),
        ({"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1}, WireFormat.of("alaw", 8000)),
        ({"encoding": "audio/x-L16", "sampleRate": 16000, "channels": 1}, WireFormat.of("l16", 16000)),
        ({"encoding": "audio/x-L16", "sampleRate": "24000", "channels": "1"}, WireFormat.of("l16", 24000)),
        ({"encoding": "audio/x-l16", "sampleRate": 8000}, WireFormat.of("l16", 8000)),
    ],
)
def test_every_start_format_is_read(announced: dict[str, Any] | None, expected: WireFormat) -> None:
    """Each codec SignalWire can announce sets the call's format, rate and encoding from the start."""
    call = _streaming(announced).call
    assert call is not None
    assert call.format == expected
    assert call.sample_rate == expected.rate
    assert call.encoding == (announced or {"encoding": "audio/x-mulaw"})["encoding"]


@pytest.mark.parametrize(
    "announced",
    [
        {"encoding": "audio/x-L16", "sampleRate": 44100, "channels": 1},
        {"encoding": "audio/x-L16", "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
        {"encoding": "audio/opus", "sampleRate": 48000, "channels": 1},
        {"encoding": 7, "sampleRate": 8000},
        {"encoding": "audio/x-L16", "sampleRate": True},
    ],
)
def test_unsupported_formats_are_refused(announced: dict[str, Any]) -> None:
    """A start announcing a format telcodec does not carry is a fatal violation naming what is supported."""
    event = SignalWireDialect().receive_text(json.dumps(_start(announced)))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert "l16" in event.reason.lower() or "mulaw" in event.reason


def test_media_format_not_an_object_is_refused() -> None:
    """A mediaFormat that is not an object cannot be judged: the stream is refused."""
    with pytest.raises(ValueError, match="must be an object"):
        media_format(["audio/x-mulaw"])
    event = SignalWireDialect().receive_text(json.dumps(_start(5)))
    assert event == ProtocolViolation("start.mediaFormat must be an object", fatal=True)


def test_l16_media_must_be_whole_samples() -> None:
    """On an L16 stream an odd payload is dropped as a violation; on mu-law any length is whole samples."""
    assert _streaming(L16_24K).receive_text(json.dumps(_media(b"\x00" * 961))) == ProtocolViolation(
        "media.payload of 961 bytes is not whole samples"
    )
    assert isinstance(_streaming().receive_text(json.dumps(_media(b"\x00" * 161))), MediaReceived)


def test_send_is_twilios_json() -> None:
    """PlayAudio is a `media` and a `mark` named after its end position, clear a `clear`: Twilio's JSON."""
    dialect = _streaming(L16_24K)
    media, mark = dialect.send(PlayAudio(b"\x01\x00" * 3, end_position=4803))
    assert json.loads(media) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": _b64(b"\x01\x00" * 3)},
    }
    assert json.loads(mark) == {"event": "mark", "streamSid": SID, "mark": {"name": "4803"}}
    assert [json.loads(text) for text in dialect.send(ClearPlayback())] == [
        {"event": "clear", "streamSid": SID}
    ]


def test_send_refuses_half_samples_and_sending_before_start() -> None:
    """Odd L16 audio or a send before start is our bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        _streaming(L16_24K).send(PlayAudio(b"\x00" * 3, end_position=1))
    with pytest.raises(LocalProtocolError):
        SignalWireDialect().send(ClearPlayback())


def test_mark_round_trip() -> None:
    """The mark sent with audio, echoed back by SignalWire, is PlayedTo of the audio's end position."""
    dialect = _streaming()
    _, mark = dialect.send(PlayAudio(ULAW, end_position=160))
    echo = json.loads(mark) | {"sequenceNumber": "9"}
    assert dialect.receive_text(json.dumps(echo)) == PlayedTo(position=160)
    foreign = {"event": "mark", "streamSid": SID, "mark": {"name": "my label"}}
    assert dialect.receive_text(json.dumps(foreign)).fatal is False  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "fatal"),
    [
        ("{not json", True),
        ("[]", True),
        (json.dumps({"event": "media", "media": {}}), True),
        ('{"event": 5}', False),
    ],
)
def test_garbage_before_start_is_judged_as_twilio_judges_it(text: str, fatal: bool) -> None:
    """Before start, garbage gets the Twilio dialect's verdict (a violation, fatal when nothing can go on)."""
    event = SignalWireDialect().receive_text(text)
    assert isinstance(event, ProtocolViolation)
    assert event.fatal is fatal


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), JSON_VALUES)
def test_garbage_never_raises(text: str, value: object) -> None:
    """Any text, or any JSON where a start, a media format or a media body belongs, yields an event
    (a violation), never an exception, before and after start."""
    frames = [
        text,
        json.dumps(value),
        json.dumps({"event": "start", "start": value}),
        json.dumps(_start(value)),
        json.dumps({"event": "media", "streamSid": SID, "media": value}),
        json.dumps({"event": "mark", "streamSid": SID, "mark": value}),
    ]
    for dialect in (SignalWireDialect(), _streaming(L16_24K)):
        for frame in frames:
            dialect.receive_text(frame)


# -- the answer and the checks ------------------------------------------------------------------------

KEY = "signing-key"
ANSWER_URL = "https://gw.example.com/signalwire/answer"
MEDIA_URL = "wss://gw.example.com/signalwire/media"
FORM = {
    "CallSid": CALL,
    "From": "+15550001111",
    "To": "+15550002222",
    "Direction": "inbound",
    "AccountSid": ACCOUNT,
}


def _issue(call_id: str) -> str:
    return issue_stream_token(KEY, call_id, 1_000_000.0)


def _stream(body: str) -> tuple[dict[str, str], dict[str, str]]:
    stream = ET.fromstring(body).find("./Connect/Stream")
    assert stream is not None
    return dict(stream.attrib), {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


def test_answer_is_connect_stream_with_the_token_and_the_bearer() -> None:
    """The cXML streams to the media URL with the call's fields and the token as Parameters, and the
    bearer token `<CallSid>:<token>` that SignalWire presents on the upgrade; PCMU (no codec)."""
    answered = answer(HttpRequest("POST", ANSWER_URL, form=FORM), MEDIA_URL, _issue)
    assert not isinstance(answered, Refusal)
    assert (answered.content_type, answered.call_id) == ("text/xml", CALL)
    assert answered.body.startswith('<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream ')
    attributes, params = _stream(answered.body)
    assert attributes == {"url": MEDIA_URL, "authBearerToken": f"{CALL}:{_issue(CALL)}"}
    assert params == {k: FORM[k] for k in ("CallSid", "From", "To", "Direction")} | {
        STREAM_TOKEN_PARAMETER: _issue(CALL)
    }


def test_answer_without_tokens_and_with_a_codec() -> None:
    """Without a secret there is no token and no bearer; a codec, when asked for, is the attribute."""
    plain = answer(HttpRequest("POST", ANSWER_URL, form=FORM), MEDIA_URL, None)
    assert not isinstance(plain, Refusal)
    assert _stream(plain.body)[0] == {"url": MEDIA_URL}
    wide = answer(HttpRequest("POST", ANSWER_URL, form=FORM), MEDIA_URL, None, codec="L16@24000h")
    assert not isinstance(wide, Refusal)
    assert _stream(wide.body)[0] == {"url": MEDIA_URL, "codec": "L16@24000h"}


def test_answer_without_a_call_is_refused() -> None:
    """A webhook with no CallSid is not a call: 400."""
    assert answer(HttpRequest("POST", ANSWER_URL), MEDIA_URL, _issue) == Refusal(400, "no CallSid")


# SignalWire's canonical compatibility (cXML form) vector, from its SDKs' porting-sdk/webhooks.md.
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_FORM = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
VECTOR_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


@pytest.mark.parametrize("header", ["x-signalwire-signature", "x-twilio-signature"])
def test_signature_vector_in_either_header(header: str) -> None:
    """SignalWire's published vector validates in X-SignalWire-Signature and in its X-Twilio alias."""
    request = HttpRequest("POST", VECTOR_URL, {header: VECTOR_SIGNATURE}, form=VECTOR_FORM)
    assert check_answer(request, "12345") is None


def test_signature_failures() -> None:
    """A tampered field, another key, another URL or no header: invalid signature."""

    def check(url: str, form: dict[str, str], headers: dict[str, str], key: str = "12345") -> str | None:
        return check_answer(HttpRequest("POST", url, headers, form=form), key)

    signed = {"x-signalwire-signature": VECTOR_SIGNATURE}
    assert check(VECTOR_URL, VECTOR_FORM | {"Digits": "9"}, signed) == "invalid signature"
    assert check(VECTOR_URL, VECTOR_FORM, signed, key="other") == "invalid signature"
    assert check(VECTOR_URL + "&x=1", VECTOR_FORM, signed) == "invalid signature"
    assert check(VECTOR_URL, VECTOR_FORM, {}) == "invalid signature"
    ported = compute_signature("12345", "https://mycompany.com:443/myapp.php?foo=1&bar=2", VECTOR_FORM)
    assert check(VECTOR_URL, VECTOR_FORM, {"x-signalwire-signature": ported}) is None


def test_upgrade_needs_the_answers_bearer_token() -> None:
    """The upgrade passes with the answer's bearer token (or a signature of the stream URL), else not."""

    def check(headers: dict[str, str], key: str = KEY) -> str | None:
        return check_media(HttpRequest("GET", MEDIA_URL, headers), key)

    bearer = f"{CALL}:{_issue(CALL)}"
    assert check({"authorization": f"Bearer {bearer}"}) is None
    assert check({"authorization": f"bearer  {bearer} "}) is None
    assert check({"authorization": f"Bearer {bearer}"}, key="other") == "invalid bearer token"
    assert check({"authorization": f"Bearer other-call:{_issue(CALL)}"}) == "invalid bearer token"
    assert check({"authorization": f"Bearer {_issue(CALL)}"}) == "malformed bearer token"
    assert check({"authorization": f"Basic {bearer}"}) == "no bearer token"
    assert check({}) == "no bearer token"
    assert check({"x-signalwire-signature": compute_signature(KEY, MEDIA_URL)}) is None


def test_provider_wiring() -> None:
    """The provider is served as /signalwire/*, keyed by SIGNALWIRE_SIGNING_KEY, with a fresh dialect."""
    provider = signalwire.PROVIDER
    assert (provider.name, provider.secret_setting, provider.answer_methods) == (
        "signalwire",
        "SIGNALWIRE_SIGNING_KEY",
        ("POST",),
    )
    assert provider.dialect() is not provider.dialect()


def test_module_is_sans_io() -> None:
    """The module imports no I/O library and no clock (what tests/unit/test_sans_io.py asks of cores)."""
    roots = {name.split(".")[0] for name in _imports("gateway.telephony.signalwire")}
    assert roots.isdisjoint(FORBIDDEN)
