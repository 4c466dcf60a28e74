"""The Vonage WebSocket dialect, the NCCO answer and the signed-JWT check, all sans-I/O."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError
from gateway.loadtest.legs.vonage import signed_bearer
from gateway.telephony.events import (
    CallStarted,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    PlayoutRule,
    ProtocolViolation,
    ProviderNotice,
)
from gateway.telephony.provider import Answer, HttpRequest, Refusal
from gateway.telephony.providers import PROVIDERS
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.vonage import (
    CLEAR,
    ISSUED_AT_TOLERANCE_S,
    PROVIDER,
    StreamState,
    VonageDialect,
    answer,
    notify,
    verify_signature,
)
from telcodec import Encoding, WireFormat

UUID = "aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
CONVERSATION = "CON-aaaaaaaa-bbbb-cccc-dddd-0123456789ab"
MEDIA_URL = "wss://gw.example.com/vonage/media"
SECRET = "vonage-signature-secret-for-the-tests-0123456789"
NOW = 1_700_000_000.0
FRAME_24K = bytes(range(256)) * 3 + bytes(192)  # 960 bytes: one 20 ms frame at 24 kHz


def _connected(content_type: str = "audio/l16;rate=24000", **headers: Any) -> str:
    echoed = {"uuid": UUID, "conversation_uuid": CONVERSATION, "from": "447700900000", "to": "447700900001"}
    return json.dumps({"event": "websocket:connected", "content-type": content_type, **echoed, **headers})


def _streaming(content_type: str = "audio/l16;rate=24000") -> VonageDialect:
    dialect = VonageDialect()
    assert isinstance(dialect.receive_text(_connected(content_type)), CallStarted)
    return dialect


# -- inbound: a recorded call ---------------------------------------------------------------------------


def test_transcript_gives_the_documented_events() -> None:
    """A call as Vonage sends it (connected, audio, DTMF, notify echo, clear ack) gives its events."""
    dialect = VonageDialect()
    transcript: list[str | bytes] = [
        _connected(gatewayToken="tok-1"),
        FRAME_24K,
        FRAME_24K,
        json.dumps({"event": "websocket:dtmf", "digit": "5", "duration": 260}),
        json.dumps({"event": "websocket:notify", "payload": {"mark": "4800"}}),
        json.dumps({"event": "websocket:cleared"}),
        FRAME_24K,
    ]
    events = [dialect.receive_text(m) if isinstance(m, str) else dialect.receive_bytes(m) for m in transcript]
    start = events[0]
    assert start == CallStarted(
        stream_id=UUID,
        call_id=UUID,
        account_id="",
        tracks=("inbound",),
        custom_parameters={
            "uuid": UUID,
            "conversation_uuid": CONVERSATION,
            "from": "447700900000",
            "to": "447700900001",
            "gatewayToken": "tok-1",
        },
        encoding="audio/l16",
        sample_rate=24000,
        channels=1,
        format=WireFormat(Encoding.L16, 24000),
    )
    assert events[1:] == [
        MediaReceived(payload=FRAME_24K, timestamp_ms=0, chunk=1),
        MediaReceived(payload=FRAME_24K, timestamp_ms=20, chunk=2),
        DtmfReceived("5"),
        PlayedTo(4800),
        ProviderNotice("websocket:cleared"),
        MediaReceived(payload=FRAME_24K, timestamp_ms=40, chunk=3),
    ]
    assert dialect.call == start
    assert dialect.state is StreamState.STREAMING


@pytest.mark.parametrize(
    ("content_type", "rate"),
    [
        ("audio/l16;rate=8000", 8000),
        ("audio/l16;rate=16000", 16000),
        ("audio/l16;rate=24000", 24000),
        ("Audio/L16; rate=16000", 16000),
        ("audio/l16;channels=1;rate=8000", 8000),
    ],
)
def test_format_is_read_from_the_content_type(content_type: str, rate: int) -> None:
    """Every rate Vonage offers, in any spelling, sets the stream's format and its 20 ms playout frames."""
    dialect = VonageDialect()
    start = dialect.receive_text(_connected(content_type))
    assert isinstance(start, CallStarted)
    assert start.format == WireFormat(Encoding.L16, rate)
    assert (start.sample_rate, start.channels) == (rate, 1)
    frame = rate // 50 * 2
    assert dialect.playout == PlayoutRule(
        chunk_ms=20, min_bytes=frame, multiple_bytes=frame, max_ahead_ms=10_000
    )


@pytest.mark.parametrize(
    "content_type",
    ["audio/l16;rate=44100", "audio/l16", "audio/pcmu;rate=8000", "audio/l16;rate=16000;channels=2", 16000],
)
def test_unsupported_format_is_refused(content_type: Any) -> None:
    """A content-type other than mono L16 at 8, 16 or 24 kHz is fatal; the reason names what is supported."""
    dialect = VonageDialect()
    event = dialect.receive_text(_connected(content_type))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    if isinstance(content_type, str):
        assert "audio/l16;rate=8000, audio/l16;rate=16000, audio/l16;rate=24000" in event.reason
    assert dialect.state is StreamState.AWAITING_CONNECTED
    assert not dialect.can_send


def test_missing_content_type_is_refused() -> None:
    """A websocket:connected without a content-type cannot say the format: fatal."""
    event = VonageDialect().receive_text(json.dumps({"event": "websocket:connected", "uuid": UUID}))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal


def test_echoed_headers_become_custom_parameters() -> None:
    """Non-string header values come back as compact JSON, and no uuid header means no call id."""
    text = json.dumps(
        {"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "age": 40, "tags": ["a"]}
    )
    start = VonageDialect().receive_text(text)
    assert isinstance(start, CallStarted)
    assert start.custom_parameters == {"age": "40", "tags": '["a"]'}
    assert (start.call_id, start.stream_id) == ("", "")


@pytest.mark.parametrize(
    "message",
    [
        {"event": "websocket:dtmf", "digit": "#", "duration": 260},
        {"event": "websocket:dtmf", "dtmf": {"digit": "#", "duration": 260}},
    ],
)
def test_dtmf_digit_at_either_place(message: dict[str, Any]) -> None:
    """The digit is read at `digit` (documented) or `dtmf.digit` (seen in other integrations)."""
    assert _streaming().receive_text(json.dumps(message)) == DtmfReceived("#")


def test_dtmf_numeric_digit_and_garbage() -> None:
    """A numeric digit is accepted as its character; a missing or multi-key digit is dropped, not fatal."""
    dialect = _streaming()
    assert dialect.receive_text('{"event":"websocket:dtmf","digit":7}') == DtmfReceived("7")
    for bad in ('{"event":"websocket:dtmf"}', '{"event":"websocket:dtmf","digit":"12"}'):
        event = dialect.receive_text(bad)
        assert isinstance(event, ProtocolViolation)
        assert not event.fatal


@pytest.mark.parametrize(
    "payload",
    [{"mark": "item_abc:17"}, {"mark": ""}, {"mark": "9" * 19}, {"name": "17"}, None, "17"],
)
def test_notify_not_ours_is_dropped(payload: Any) -> None:
    """A notify whose payload is not a decimal position the gateway sent is a non-fatal violation."""
    event = _streaming().receive_text(json.dumps({"event": "websocket:notify", "payload": payload}))
    assert isinstance(event, ProtocolViolation)
    assert not event.fatal


# -- inbound: garbage and order ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        b"\x00\x00",
        '{"event":"websocket:dtmf","digit":"1"}',
        '{"event":"websocket:notify","payload":{"mark":"1"}}',
    ],
)
def test_anything_before_connected_is_fatal(first: str | bytes) -> None:
    """Audio or an event before websocket:connected has no stream to belong to: fatal."""
    dialect = VonageDialect()
    event = dialect.receive_bytes(first) if isinstance(first, bytes) else dialect.receive_text(first)
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert "before websocket:connected" in event.reason


def test_second_connected_is_fatal() -> None:
    """A second websocket:connected on one socket is fatal and leaves the first start in place."""
    dialect = _streaming()
    event = dialect.receive_text(_connected("audio/l16;rate=8000"))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert dialect.call is not None
    assert dialect.call.sample_rate == 24000


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '"websocket:connected"'])
def test_text_that_is_not_a_json_object_is_fatal(text: str) -> None:
    """A text frame that is not a JSON object is fatal, before or after the start."""
    for dialect in (VonageDialect(), _streaming()):
        event = dialect.receive_text(text)
        assert isinstance(event, ProtocolViolation)
        assert event.fatal


@pytest.mark.parametrize(
    "text",
    ['{"event":"websocket:disconnected"}', '{"no":"event"}', '{"event":7}', '{"event":"binary audio"}'],
)
def test_unknown_or_missing_event_is_dropped(text: str) -> None:
    """An unknown or missing event name is a non-fatal violation that moves no state."""
    dialect = _streaming()
    event = dialect.receive_text(text)
    assert isinstance(event, ProtocolViolation)
    assert not event.fatal
    assert dialect.state is StreamState.STREAMING


@pytest.mark.parametrize("frame", [b"", b"\x01\x02\x03"])
def test_audio_frame_of_no_whole_samples_is_dropped(frame: bytes) -> None:
    """An empty or odd-length binary frame is dropped (non-fatal) and does not advance the audio clock."""
    dialect = _streaming()
    event = dialect.receive_bytes(frame)
    assert isinstance(event, ProtocolViolation)
    assert not event.fatal
    assert dialect.receive_bytes(FRAME_24K) == MediaReceived(FRAME_24K, timestamp_ms=0, chunk=1)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.text(max_size=64),
            st.dictionaries(
                st.sampled_from(["event", "content-type", "digit", "payload", "uuid", "dtmf"]),
                st.one_of(
                    st.sampled_from(
                        [
                            "websocket:connected",
                            "websocket:dtmf",
                            "websocket:notify",
                            "websocket:cleared",
                            "audio/l16;rate=16000",
                        ]
                    ),
                    st.integers(),
                    st.none(),
                    st.dictionaries(st.sampled_from(["mark", "digit"]), st.text(max_size=8), max_size=2),
                ),
                max_size=5,
            ).map(json.dumps),
        ),
        max_size=12,
    )
)
def test_garbage_never_raises(frames: list[str | bytes]) -> None:
    """Any sequence of text and binary frames gives events or violations, never an exception."""
    dialect = VonageDialect()
    for frame in frames:
        event = dialect.receive_bytes(frame) if isinstance(frame, bytes) else dialect.receive_text(frame)
        if isinstance(event, ProtocolViolation):
            assert event.reason


# -- outbound --------------------------------------------------------------------------------------------


def test_play_audio_is_binary_frames_then_a_notify() -> None:
    """PlayAudio becomes one binary frame per 20 ms, then exactly the documented notify action."""
    dialect = _streaming()
    frames = dialect.send(PlayAudio(FRAME_24K + FRAME_24K[::-1], end_position=960))
    assert frames[:2] == (FRAME_24K, FRAME_24K[::-1])
    assert frames[2] == '{"action":"notify","payload":{"mark":"960"}}'
    assert json.loads(frames[2]) == {"action": "notify", "payload": {"mark": "960"}}
    assert dialect.send(ClearPlayback()) == ('{"action":"clear"}',)
    assert json.loads(CLEAR) == {"action": "clear"}


def test_notify_round_trip() -> None:
    """The notify sent after audio comes back from Vonage as PlayedTo at the audio's end position."""
    dialect = _streaming("audio/l16;rate=16000")
    *_, request = dialect.send(PlayAudio(bytes(640), end_position=123_456))
    assert isinstance(request, str)
    echo = {"event": "websocket:notify", "payload": json.loads(request)["payload"]}
    assert dialect.receive_text(json.dumps(echo)) == PlayedTo(123_456)
    assert notify(7) == request.replace("123456", "7")


@pytest.mark.parametrize("payload", [b"", bytes(960 + 2), bytes(640)])
def test_audio_not_whole_frames_is_our_bug(payload: bytes) -> None:
    """Audio that is not whole 20 ms frames at the stream's rate is a LocalProtocolError (the core's rule)."""
    with pytest.raises(LocalProtocolError):
        _streaming().send(PlayAudio(payload, end_position=1))


def test_send_before_connected_is_our_bug() -> None:
    """Nothing can be sent before websocket:connected: there is no stream yet."""
    dialect = VonageDialect()
    assert not dialect.can_send
    with pytest.raises(LocalProtocolError):
        dialect.send(ClearPlayback())


# -- the answer webhook -----------------------------------------------------------------------------------


FIELDS = {"to": "447700900001", "from": "447700900000", "conversation_uuid": CONVERSATION, "uuid": UUID}


def _get(fields: dict[str, str], **headers: str) -> HttpRequest:
    url = f"https://gw.example.com/vonage/answer?{urlencode(fields)}"
    return HttpRequest("GET", url, headers, received_s=time.time())


def test_answer_get_is_the_ncco() -> None:
    """A GET answer webhook is answered with exactly the connect NCCO, L16 at 24 kHz, the call in headers."""
    answered = answer(_get(FIELDS), MEDIA_URL, None)
    assert isinstance(answered, Answer)
    assert answered.content_type == "application/json"
    assert answered.call_id == UUID
    assert json.loads(answered.body) == [
        {
            "action": "connect",
            "from": "447700900000",
            "endpoint": [
                {
                    "type": "websocket",
                    "uri": MEDIA_URL,
                    "content-type": "audio/l16;rate=24000",
                    "headers": {
                        "uuid": UUID,
                        "conversation_uuid": CONVERSATION,
                        "from": "447700900000",
                        "to": "447700900001",
                    },
                }
            ],
        }
    ]


def test_answer_post_json_with_token() -> None:
    """A POST answer webhook (JSON body) gets the same NCCO plus the stream token and a signed upgrade."""
    request = HttpRequest("POST", "https://gw.example.com/vonage/answer", {}, json.dumps(FIELDS).encode())
    issued: list[str] = []

    def issue(call_id: str) -> str:
        issued.append(call_id)
        return "tok-1"

    answered = answer(request, MEDIA_URL, issue)
    assert isinstance(answered, Answer)
    assert issued == [UUID]
    (endpoint,) = json.loads(answered.body)[0]["endpoint"]
    assert endpoint["headers"][STREAM_TOKEN_PARAMETER] == "tok-1"
    assert endpoint["authorization"] == {"type": "vonage"}


def test_answer_round_trips_through_the_dialect() -> None:
    """The NCCO's headers, echoed in websocket:connected, give the call id the token was bound to."""
    answered = answer(_get(FIELDS), MEDIA_URL, lambda call_id: f"token-for-{call_id}")
    assert isinstance(answered, Answer)
    (endpoint,) = json.loads(answered.body)[0]["endpoint"]
    connected = {
        "event": "websocket:connected",
        "content-type": endpoint["content-type"],
        **endpoint["headers"],
    }
    start = VonageDialect().receive_text(json.dumps(connected))
    assert isinstance(start, CallStarted)
    assert start.call_id == answered.call_id
    assert start.custom_parameters[STREAM_TOKEN_PARAMETER] == f"token-for-{UUID}"


def test_answer_without_uuid_is_refused() -> None:
    """A webhook without the call's uuid (or with a body that is not JSON) is not a call to answer: 400."""
    assert answer(_get({"from": "1"}), MEDIA_URL, None) == Refusal(400, "no uuid")
    garbage = HttpRequest("POST", "https://gw.example.com/vonage/answer", {}, b"{oops")
    assert answer(garbage, MEDIA_URL, None) == Refusal(400, "no uuid")


def test_answer_headers_fit_vonages_limit() -> None:
    """Long optional fields are dropped so the headers stay within 512 bytes; the uuid and token stay."""
    fields = {**FIELDS, "from": "sip:" + "x" * 300, "to": "y" * 300}
    answered = answer(_get(fields), MEDIA_URL, lambda _: "tok")
    assert isinstance(answered, Answer)
    action = json.loads(answered.body)[0]
    headers = action["endpoint"][0]["headers"]
    assert len(json.dumps(headers, separators=(",", ":"))) <= 512
    assert headers["uuid"] == UUID
    assert headers[STREAM_TOKEN_PARAMETER] == "tok"
    assert "from" not in action  # not a phone number


def test_provider_is_registered_for_get_and_post() -> None:
    """The provider serves /vonage/answer for GET (Vonage's default) and POST, under its secret setting."""
    assert PROVIDERS["vonage"] is PROVIDER
    assert set(PROVIDER.answer_methods) == {"GET", "POST"}
    assert PROVIDER.secret_setting == "VONAGE_SIGNATURE_SECRET"


# -- the signed JWT -------------------------------------------------------------------------------------

# Vonage's own test vector (vonage-python-sdk, jwt/tests/test_verify_jwt.py): HS256 over these claims.
SDK_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJPbmxpbmUgSldUIEJ1aWxkZXIiLCJpYXQiOjE2OTc2MzQ2ODAsImV4cCI6"
    "MzMyNTQ1NDA4MjgsImF1ZCI6IiIsInN1YiI6IiJ9.88vJc3I2HhuqEDixHXVhc9R30tA6U_HQHZTC29y6CGM"
)
SDK_SECRET = "qwertyuiopasdfghjklzxcvbnm123456"
SDK_IAT = 1697634680


def _signed(body: bytes = b"", secret: str = SECRET, **claims: Any) -> str:
    """A bearer token as the docs describe Vonage's, issued at NOW."""
    return signed_bearer(secret, body, **{"iat": int(NOW), **claims})


def test_vonage_sdk_vector() -> None:
    """Vonage's published token verifies with its secret (at its issue time) and not with another."""
    assert verify_signature(f"Bearer {SDK_TOKEN}", SDK_SECRET, b"", SDK_IAT + 5) is None
    assert verify_signature(f"Bearer {SDK_TOKEN}", SDK_SECRET[::-1], b"", SDK_IAT + 5) == "invalid signature"


def test_body_hash_is_checked() -> None:
    """Over a body, payload_hash must be the body's SHA-256: a changed body or a missing hash is refused."""
    body = json.dumps(FIELDS).encode()
    assert verify_signature(_signed(body), SECRET, body, NOW) is None
    assert verify_signature(_signed(body), SECRET, body + b" ", NOW) == "payload_hash does not match the body"
    assert verify_signature(_signed(body, payload_hash=None), SECRET, body, NOW) is not None


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (None, "missing bearer token"),
        ("Basic dXNlcjpwYXNz", "missing bearer token"),
        ("Bearer ", "missing bearer token"),
        ("Bearer not.a.jwt", "invalid signature"),
        (_signed(secret="another-secret-of-the-same-length-0123456789"), "invalid signature"),
        ("Bearer " + jwt.encode({"iat": int(NOW)}, None, algorithm="none"), "invalid signature"),
        (_signed(iat=int(NOW) - ISSUED_AT_TOLERANCE_S - 1), "signed token expired or not yet valid"),
        (_signed(iat=int(NOW) + ISSUED_AT_TOLERANCE_S + 1), "signed token expired or not yet valid"),
        (_signed(exp=int(NOW) - ISSUED_AT_TOLERANCE_S - 1), "signed token expired or not yet valid"),
        (_signed(iat="now"), "signed token without a numeric iat"),
    ],
)
def test_bad_tokens_are_refused(authorization: str | None, reason: str) -> None:
    """Missing, forged, unsigned, stale, expired or malformed tokens are refused with a reason."""
    assert verify_signature(authorization, SECRET, b"", NOW) == reason


def test_check_reads_the_authorization_header() -> None:
    """The provider's check takes the JWT from the request's Authorization header, any case."""
    fresh = signed_bearer(SECRET)
    assert PROVIDER.check_answer is not None
    assert PROVIDER.check_answer(_get(FIELDS, authorization=fresh), SECRET) is None
    assert PROVIDER.check_answer(_get(FIELDS), SECRET) == "missing bearer token"
