"""The Exotel Voicebot dialect and checks: transcripts in, events out; commands in, JSON out; garbage
tolerated; basic auth and the allow-list as pure functions."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.call.core import CallConfig, CallCore
from gateway.errors import LocalProtocolError
from gateway.realtime.session import AudioFormat
from gateway.telephony import exotel
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
from gateway.telephony.exotel import (
    EXOTEL_PLAYOUT,
    ExotelDialect,
    StreamState,
    answer,
    check_basic_auth,
    check_peer,
    media_format,
)
from gateway.telephony.provider import HttpRequest, Refusal
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from telcodec import WireFormat
from tests.unit.test_sans_io import FORBIDDEN, _imports
from tests.unit.test_signalwire import JSON_VALUES

SID = "MZ6a9b8c7d6e5f4a3b2c1d0e9f8a7b"
CALL = "CA0e9d8c7b6a5f4e3d2c1b0a9f8e7d"
ACCOUNT = "AC1a2b3c4d5e6f7a8b9c0d1e2f3a4b"
CHUNK = bytes(range(256)) * 12 + bytes(128)  # 3,200 bytes: 100 ms of 16 kHz, 200 ms of 8 kHz PCM16
RAW_8K = {"encoding": "audio/x-raw", "sample_rate": "8000", "bit_rate": "16"}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _start(media_format: object = RAW_8K, **extra: Any) -> dict[str, Any]:
    start: dict[str, Any] = {
        "stream_sid": SID,
        "call_sid": CALL,
        "account_sid": ACCOUNT,
        "from": "+919876543210",
        "to": "+918047491899",
        "custom_parameters": {"key1": "value1"},
    }
    if media_format is not None:
        start["media_format"] = media_format
    return {"event": "start", "sequence_number": "1", "stream_sid": SID, "start": start | extra}


def _media(chunk: int | str, payload: bytes = CHUNK, **media: Any) -> dict[str, Any]:
    body = {"chunk": chunk, "timestamp": str(100 * int(chunk)), "payload": _b64(payload)}
    return {"event": "media", "sequence_number": "3", "stream_sid": SID, "media": body | media}


# A call as Exotel's WebSocket protocol page documents it (counters as strings or numbers).
TRANSCRIPT: list[dict[str, Any]] = [
    {"event": "connected"},
    _start(),
    _media("1"),
    _media(2),
    {"event": "dtmf", "sequence_number": "7", "stream_sid": SID, "dtmf": {"digit": "5", "duration": "100"}},
    {"event": "mark", "sequence_number": 15, "stream_sid": SID, "mark": {"name": "1600"}},
    {
        "event": "stop",
        "sequence_number": "20",
        "stream_sid": SID,
        "stop": {"call_sid": CALL, "account_sid": ACCOUNT, "reason": "callended"},
    },
]
EXPECTED = [
    StreamConnected(protocol="exotel", version=""),
    CallStarted(
        stream_id=SID,
        call_id=CALL,
        account_id=ACCOUNT,
        tracks=("inbound",),
        custom_parameters={"From": "+919876543210", "To": "+918047491899", "key1": "value1"},
        encoding="audio/x-raw",
        sample_rate=8000,
        channels=1,
        format=WireFormat.of("l16", 8000),
    ),
    MediaReceived(payload=CHUNK, timestamp_ms=100, chunk=1),
    MediaReceived(payload=CHUNK, timestamp_ms=200, chunk=2),
    DtmfReceived(digit="5"),
    PlayedTo(position=1600),
    CallStopped(reason="callended"),
]


def _streaming(media_format: object = RAW_8K) -> ExotelDialect:
    dialect = ExotelDialect()
    assert isinstance(dialect.receive_text(json.dumps(_start(media_format))), CallStarted)
    return dialect


def test_transcript_yields_the_right_events() -> None:
    """A documented call fed message by message yields exactly the expected events, in order."""
    dialect = ExotelDialect()
    assert [dialect.receive_text(json.dumps(message)) for message in TRANSCRIPT] == EXPECTED
    assert dialect.state is StreamState.STOPPED


def test_states_follow_the_stream_life() -> None:
    """AWAITING_CONNECTED -> AWAITING_START -> STREAMING -> STOPPED, and send only while streaming."""
    dialect = ExotelDialect()
    seen = [(dialect.state, dialect.can_send)]
    for message in (TRANSCRIPT[0], TRANSCRIPT[1], TRANSCRIPT[2], TRANSCRIPT[-1]):
        dialect.receive_text(json.dumps(message))
        seen.append((dialect.state, dialect.can_send))
    s = StreamState
    assert seen == [
        (s.AWAITING_CONNECTED, False),
        (s.AWAITING_START, False),
        (s.STREAMING, True),
        (s.STREAMING, True),
        (s.STOPPED, False),
    ]


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        (RAW_8K, WireFormat.of("l16", 8000)),  # the protocol page
        ({"encoding": "raw", "sample_rate": "8000", "bit_rate": "128"}, WireFormat.of("l16", 8000)),
        ({"encoding": "audio/x-raw", "sample_rate": 16000}, WireFormat.of("l16", 16000)),
        ({"encoding": "audio/x-raw", "sample_rate": "24000"}, WireFormat.of("l16", 24000)),
        ({"encoding": "slin", "sample_rate": "8000"}, WireFormat.of("l16", 8000)),
        ({"encoding": "audio/L16;rate=16000"}, WireFormat.of("l16", 16000)),  # the extension guide
        ({"encoding": "audio/x-mulaw;rate=8000"}, WireFormat.of("ulaw", 8000)),
        ({"encoding": "audio/x-mulaw", "sample_rate": "8000"}, WireFormat.of("ulaw", 8000)),
        ({"encoding": "audio/x-raw"}, WireFormat.of("l16", 8000)),  # the documented default rate
        (None, WireFormat.of("l16", 8000)),  # no media_format: the main guide's raw/slin at 8 kHz
    ],
)
def test_every_start_format_is_read(announced: object, expected: WireFormat) -> None:
    """Each format variant Exotel's docs show sets the call's format and rate from the start."""
    call = _streaming(announced).call
    assert call is not None
    assert (call.format, call.sample_rate, call.channels) == (expected, expected.rate, 1)


@pytest.mark.parametrize(
    "announced",
    [
        {"encoding": "audio/x-raw", "sample_rate": "44100"},
        {"encoding": "audio/x-raw", "sample_rate": "8k"},
        {"encoding": "audio/x-mulaw", "sample_rate": "16000"},
        {"encoding": "audio/opus", "sample_rate": "48000"},
        {"encoding": "audio/x-raw", "sample_rate": "8000", "channels": 2},
        {"encoding": None},
        "audio/x-raw",
    ],
)
def test_unsupported_formats_are_refused(announced: object) -> None:
    """A start announcing a format telcodec does not carry is a fatal violation saying what is wrong."""
    event = ExotelDialect().receive_text(json.dumps(_start(announced)))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    with pytest.raises(ValueError, match=r"\S"):
        media_format(announced)


def test_connected_parameters_join_the_starts() -> None:
    """Custom parameters in `connected` (the extension guide) join the start's, which win on a clash."""
    dialect = ExotelDialect()
    dialect.receive_text(json.dumps({"event": "connected", "custom_parameters": {"a": "1", "key1": "old"}}))
    call = dialect.receive_text(json.dumps(_start()))
    assert isinstance(call, CallStarted)
    assert call.custom_parameters == {
        "From": "+919876543210",
        "To": "+918047491899",
        "a": "1",
        "key1": "value1",
    }


@pytest.mark.parametrize(
    ("announced", "expected"),
    [
        ({"key1": "value1", "n": 3}, {"key1": "value1", "n": "3"}),
        ("sessionId=abc123, agentId=agent_007", {"sessionId": "abc123", "agentId": "agent_007"}),
        (None, {}),
    ],
)
def test_custom_parameter_notations(announced: object, expected: dict[str, str]) -> None:
    """Custom parameters arrive as an object (numbers too) or as the extension guide's `k=v,k=v`."""
    call = ExotelDialect().receive_text(json.dumps(_start(custom_parameters=announced)))
    assert isinstance(call, CallStarted)
    assert call.custom_parameters == {"From": "+919876543210", "To": "+918047491899", **expected}


def test_nested_custom_parameters_refuse_the_start() -> None:
    """Custom parameters that are neither an object of scalars nor `k=v` text leave no usable start."""
    event = ExotelDialect().receive_text(json.dumps(_start(custom_parameters={"a": {"b": 1}})))
    assert event == ProtocolViolation("custom_parameters must map names to strings", fatal=True)


def test_dtmf_digit_at_the_top_level() -> None:
    """The extension guide's `{"event":"dtmf","digit":"5"}` is a key press too."""
    assert _streaming().receive_text('{"event":"dtmf","digit":"#"}') == DtmfReceived("#")


def test_start_without_connected_and_stop_before_start() -> None:
    """A start may come first; a stop before start (hung up during set-up) ends the stream normally."""
    assert isinstance(ExotelDialect().receive_text(json.dumps(_start())), CallStarted)
    dialect = ExotelDialect()
    assert dialect.receive_text('{"event":"stop","stop":{"reason":"stopped"}}') == CallStopped("stopped")
    assert dialect.state is StreamState.STOPPED


def test_send_is_the_documented_json() -> None:
    """PlayAudio is `media` then a `mark` named after its end position; ClearPlayback is `clear`."""
    dialect = _streaming()
    media, mark = dialect.send(PlayAudio(CHUNK, end_position=1600))
    assert json.loads(media) == {"event": "media", "stream_sid": SID, "media": {"payload": _b64(CHUNK)}}
    assert json.loads(mark) == {"event": "mark", "stream_sid": SID, "mark": {"name": "1600"}}
    (clear,) = dialect.send(ClearPlayback())
    assert json.loads(clear) == {"event": "clear", "stream_sid": SID}


def test_send_refuses_half_samples_and_sending_when_not_streaming() -> None:
    """Odd L16 audio, or a send before start or after stop, is our bug: LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        _streaming().send(PlayAudio(b"\x00" * 3, end_position=1))
    with pytest.raises(LocalProtocolError):
        ExotelDialect().send(ClearPlayback())
    dialect = _streaming()
    dialect.receive_text('{"event":"stop"}')
    with pytest.raises(LocalProtocolError):
        dialect.send(ClearPlayback())


def test_mark_round_trip() -> None:
    """The mark sent with audio, echoed back by Exotel, is PlayedTo of the audio's end position; a mark
    the gateway did not send is dropped, not fatal."""
    dialect = _streaming()
    _, mark = dialect.send(PlayAudio(CHUNK, end_position=3200))
    echo = json.loads(mark) | {"sequence_number": "15"}
    assert dialect.receive_text(json.dumps(echo)) == PlayedTo(position=3200)
    foreign = dialect.receive_text(json.dumps(echo | {"mark": {"name": "turn-3-end"}}))
    assert isinstance(foreign, ProtocolViolation)
    assert not foreign.fatal


def test_playout_rule_makes_chunks_exotel_accepts() -> None:
    """The call core cuts bot audio by the dialect's rule into chunks of >= 3,200 bytes, multiples of
    320, at every rate Exotel streams (100 ms, or 3,200 bytes where that is longer)."""
    assert _streaming().playout == EXOTEL_PLAYOUT
    for rate, chunk in ((8000, 3200), (16000, 3200), (24000, 4800)):
        core = CallCore(CallConfig(), AudioFormat.PCM16, WireFormat.of("l16", rate), EXOTEL_PLAYOUT)
        assert core._chunk_bytes == chunk
        assert chunk % 320 == 0


# (name, message, fatal): each arrives while the stream is STREAMING.
GARBAGE: list[tuple[str, Any, bool]] = [
    ("not json", "{not json", True),
    ("json array", "[1]", True),
    ("deeply nested", "[" * 100_000, True),
    ("missing event", {"stream_sid": SID}, False),
    ("unknown event", {"event": "silence", "stream_sid": SID}, False),
    ("other stream_sid", _media(1) | {"stream_sid": "MZother"}, False),
    ("media not an object", {"event": "media", "media": "x"}, False),
    ("payload not a string", _media(1) | {"media": {"payload": 5}}, False),
    ("invalid base64", _media(1) | {"media": {"payload": "!!!"}}, False),
    ("half a sample", _media(1, b"\x00" * 3), False),
    ("chunk not digits", _media(1) | {"media": _media(1)["media"] | {"chunk": "abc"}}, False),
    ("timestamp negative", _media(1, timestamp=-5), False),
    ("timestamp huge", _media(1, timestamp="9" * 500), False),
    ("mark without name", {"event": "mark", "mark": {}}, False),
    ("dtmf without digit", {"event": "dtmf", "dtmf": {"duration": "100"}}, False),
    ("duplicate connected", {"event": "connected"}, False),
    ("second start", _start(), True),
]


@pytest.mark.parametrize(("name", "message", "fatal"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_a_violation(name: str, message: Any, fatal: bool) -> None:
    """Each kind of garbage is a ProtocolViolation with the documented fatality, and the stream goes on
    unless it is fatal."""
    dialect = _streaming()
    event = dialect.receive_text(message if isinstance(message, str) else json.dumps(message))
    assert isinstance(event, ProtocolViolation), name
    assert event.fatal is fatal
    if not fatal:
        assert dialect.receive_text(json.dumps(_media(3))) == MediaReceived(CHUNK, 300, 3)


def test_media_before_start_and_binary_frames_are_fatal() -> None:
    """Media before start has no stream to belong to, and Exotel sends no binary frames: both fatal."""
    assert ExotelDialect().receive_text(json.dumps(_media(1))) == ProtocolViolation(
        "'media' before start", True
    )
    assert ExotelDialect().receive_bytes(b"\x00").fatal


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), JSON_VALUES)
def test_garbage_never_raises(text: str, value: object) -> None:
    """Any text, or any JSON where a start, a media format, a media body or a mark belongs, yields an
    event, never an exception, before and after start."""
    frames = [
        text,
        json.dumps(value),
        json.dumps({"event": "start", "start": value}),
        json.dumps(_start(value)),
        json.dumps({"event": "media", "media": value}),
        json.dumps({"event": "mark", "mark": value}),
        json.dumps({"event": "dtmf", "dtmf": value, "digit": value}),
        json.dumps({"event": "stop", "stop": value}),
    ]
    for dialect in (ExotelDialect(), _streaming()):
        for frame in frames:
            dialect.receive_text(frame)


# -- the dynamic URL and the checks --------------------------------------------------------------------

MEDIA_URL = "wss://gw.example.com/exotel/media"
CREDENTIALS = "api-key:api/token"


def _issue(call_id: str) -> str:
    return f"100.{call_id}"


def _basic(credentials: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_answer_is_the_dynamic_url_with_the_token() -> None:
    """GET with the call's id answers {"url": ...}: the media URL with the stream token and the
    configured sample rate in its query (custom parameters), and the request's basic auth as userinfo."""
    request = HttpRequest(
        "GET",
        "https://gw.example.com/exotel/answer?CallSid=c1&CallFrom=%2B91&sample-rate=16000",
        _basic(CREDENTIALS),
    )
    answered = answer(request, MEDIA_URL, _issue)
    assert not isinstance(answered, Refusal)
    assert (answered.content_type, answered.call_id) == ("application/json", "c1")
    url = urlsplit(json.loads(answered.body)["url"])
    assert url._replace(query="").geturl() == "wss://api-key:api%2Ftoken@gw.example.com/exotel/media"
    assert dict(parse_qsl(url.query)) == {"sample-rate": "16000", STREAM_TOKEN_PARAMETER: "100.c1"}


def test_answer_variants() -> None:
    """POSTed fields work too; without a secret the URL is bare; no call id or a bad rate is a 400."""
    posted = answer(HttpRequest("POST", "https://gw/exotel/answer", form={"callsid": "c2"}), MEDIA_URL, None)
    assert not isinstance(posted, Refusal)
    assert json.loads(posted.body) == {"url": MEDIA_URL}
    assert answer(HttpRequest("GET", "https://gw/exotel/answer"), MEDIA_URL, _issue) == Refusal(
        400, "no CallSid"
    )
    bad_rate = HttpRequest("GET", "https://gw/exotel/answer?CallSid=c&sample-rate=44100")
    assert isinstance(answer(bad_rate, MEDIA_URL, _issue), Refusal)


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        (_basic(CREDENTIALS), None),
        ({"authorization": "basic  " + base64.b64encode(CREDENTIALS.encode()).decode()}, None),
        (_basic("api-key:wrong"), "wrong basic auth"),
        (_basic(CREDENTIALS + " "), "wrong basic auth"),
        ({"authorization": "Basic !!!"}, "no basic auth"),
        ({"authorization": "Bearer " + CREDENTIALS}, "no basic auth"),
        ({}, "no basic auth"),
    ],
)
def test_basic_auth(headers: dict[str, str], problem: str | None) -> None:
    """Only `Authorization: Basic base64(EXOTEL_BASIC_AUTH)` passes (compared in constant time)."""
    assert check_basic_auth(HttpRequest("GET", MEDIA_URL, headers), CREDENTIALS) == problem


@pytest.mark.parametrize(
    ("peer", "allow_from", "problem"),
    [
        ("203.0.113.9", None, None),
        ("203.0.113.9", "", None),
        ("203.0.113.9", "203.0.113.0/24", None),
        ("203.0.113.9", " 198.51.100.0/24 , 203.0.113.9 ", None),
        ("::ffff:203.0.113.9", "203.0.113.0/24", None),
        ("2001:db8::1", "2001:db8::/32", None),
        ("fe80::1%eth0", "fe80::/10", None),
        ("198.51.100.7", "203.0.113.0/24", "peer not in EXOTEL_ALLOW_FROM"),
        ("2001:db8::1", "203.0.113.0/24", "peer not in EXOTEL_ALLOW_FROM"),
        (None, "203.0.113.0/24", "peer address unknown"),
        ("not-an-ip", "203.0.113.0/24", "peer address unknown"),
        (
            "203.0.113.9",
            "203.0.113.0/24,exotel.com",
            "EXOTEL_ALLOW_FROM: 'exotel.com' is not an address or CIDR",
        ),
    ],
)
def test_allow_list(peer: str | None, allow_from: str | None, problem: str | None) -> None:
    """The allow-list admits peers inside its CIDRs (IPv4, IPv6, v4-mapped), everyone when unset, and
    no one when it is malformed (saying why)."""
    assert check_peer(peer, allow_from) == problem


def test_provider_wiring() -> None:
    """Served as /exotel/*, answer on GET and POST, keyed by EXOTEL_BASIC_AUTH, basic auth both ways."""
    provider = exotel.PROVIDER
    assert (provider.name, provider.secret_setting, provider.answer_methods) == (
        "exotel",
        "EXOTEL_BASIC_AUTH",
        ("GET", "POST"),
    )
    assert provider.check_media is check_basic_auth
    assert provider.check_answer is check_basic_auth


def test_module_is_sans_io() -> None:
    """The module imports no I/O library and no clock (what tests/unit/test_sans_io.py asks of cores)."""
    roots = {name.split(".")[0] for name in _imports("gateway.telephony.exotel")}
    assert roots.isdisjoint(FORBIDDEN)
