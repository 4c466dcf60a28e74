"""The Telnyx dialect, TeXML answer and ed25519 webhook check: transcripts in, events out; commands in, JSON
out; garbage tolerated; signatures as pure functions."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding as KeyEncoding
from cryptography.hazmat.primitives.serialization import PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import LocalProtocolError
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    PlayoutRule,
    ProtocolViolation,
    StreamConnected,
)
from gateway.telephony.provider import Answer, HttpRequest, Refusal
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.telnyx import (
    PROVIDER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    StreamState,
    TelnyxDialect,
    answer,
    check_answer,
    texml,
    verify_signature,
)
from telcodec import Encoding, WireFormat

STREAM = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CONTROL = "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
CALL_SID = "v3:9X2vxPDFY2RHSJ1EdMS0RHRksMTg7ldNxdjWbVr9zBjbGjGsSe-aiQ"
FRAME = bytes(range(160))  # one 20 ms PCMU frame
FRAME_B64 = base64.b64encode(FRAME).decode()
PARAMS = {"CallSid": CALL_SID, "From": "+13122010094", STREAM_TOKEN_PARAMETER: "1700000060.abc"}


def _start(media_format: Any = None, **start_overrides: Any) -> dict[str, Any]:
    """A `start` as PROTOCOLS.md 2.1 shows it, with the TeXML parameters the answer sends."""
    start: dict[str, Any] = {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": CONTROL,
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": dict(PARAMS),
        "media_format": media_format or {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    }
    start.update(start_overrides)
    return {"event": "start", "sequence_number": "1", "stream_id": STREAM, "start": start}


def _media(seq: int, chunk: int, ts: int, payload: str = FRAME_B64) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts), "payload": payload}
    return {"event": "media", "sequence_number": str(seq), "stream_id": STREAM, "media": media}


CONNECTED = {"event": "connected", "version": "1.0.0"}
STOP = {"event": "stop", "sequence_number": "9", "stream_id": STREAM, "stop": {"call_control_id": CONTROL}}
TRANSCRIPT = [
    CONNECTED,
    _start(),
    _media(2, 1, 0),
    _media(4, 3, 40),  # out of order: Telnyx does not guarantee it; handed on as it comes
    _media(3, 2, 20),
    {"event": "dtmf", "sequence_number": "5", "stream_id": STREAM, "dtmf": {"digit": "1"}},
    {"event": "mark", "sequence_number": "6", "stream_id": STREAM, "mark": {"name": "160"}},
    STOP,
]


def _feed(dialect: TelnyxDialect, *messages: Any) -> list[Any]:
    return [dialect.receive_text(json.dumps(m)) for m in messages]


def _streaming(**start_kwargs: Any) -> TelnyxDialect:
    dialect = TelnyxDialect()
    _feed(dialect, CONNECTED, _start(**start_kwargs))
    return dialect


def test_full_transcript_yields_the_right_events() -> None:
    """A whole call as Telnyx sends it becomes connected, start, media (in arrival order), dtmf, a mark
    echo as PlayedTo and stop."""
    events = _feed(TelnyxDialect(), *TRANSCRIPT)
    assert events[0] == StreamConnected(protocol="Call", version="1.0.0")
    assert events[1] == CallStarted(
        stream_id=STREAM,
        call_id=CALL_SID,
        account_id="3E6F995F-85F7-4705-9741-53B116D28237",
        tracks=("inbound",),
        custom_parameters=PARAMS,
        encoding="PCMU",
        sample_rate=8000,
        channels=1,
        format=WireFormat(Encoding.ULAW, 8000),
    )
    assert [e.chunk for e in events[2:5]] == [1, 3, 2]
    assert events[2] == MediaReceived(payload=FRAME, timestamp_ms=0, chunk=1)
    assert events[5:] == [DtmfReceived("1"), PlayedTo(160), CallStopped()]


def test_states_follow_the_stream_life() -> None:
    """connected -> awaiting start -> streaming -> stopped, and sending is allowed only while streaming."""
    dialect = TelnyxDialect()
    states = [dialect.state]
    for message in (CONNECTED, _start(), STOP):
        _feed(dialect, message)
        states.append(dialect.state)
    assert states == [
        StreamState.AWAITING_CONNECTED,
        StreamState.AWAITING_START,
        StreamState.STREAMING,
        StreamState.STOPPED,
    ]
    assert not dialect.can_send


@pytest.mark.parametrize(
    ("media_format", "expected"),
    [
        ({"encoding": "PCMU", "sample_rate": 8000, "channels": 1}, WireFormat(Encoding.ULAW, 8000)),
        ({"encoding": "PCMA", "sample_rate": 8000, "channels": 1}, WireFormat(Encoding.ALAW, 8000)),
        ({"encoding": "pcma", "sample_rate": "8000"}, WireFormat(Encoding.ALAW, 8000)),
    ],
)
def test_the_format_comes_from_start_every_time(media_format: dict[str, Any], expected: WireFormat) -> None:
    """PCMU or PCMA at 8 kHz, mono, whatever the case or counter type, is the leg's format both ways."""
    (event,) = _feed(TelnyxDialect(), _start(media_format))
    assert isinstance(event, CallStarted)
    assert event.format == expected


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "L16", "sample_rate": 16000, "channels": 1},
        {"encoding": "L16", "sample_rate": 8000, "channels": 1},
        {"encoding": "PCMU", "sample_rate": 16000, "channels": 1},
        {"encoding": "PCMU", "sample_rate": 8000, "channels": 2},
        {"encoding": "OPUS", "sample_rate": 48000, "channels": 1},
        {"encoding": "G722", "sample_rate": 8000, "channels": 1},
    ],
)
def test_unsupported_formats_are_refused_with_what_is_supported(media_format: dict[str, Any]) -> None:
    """L16 (undocumented byte order), other rates, stereo or codecs end the stream, naming PCMU/PCMA."""
    (event,) = _feed(TelnyxDialect(), _start(media_format))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert "PCMU or PCMA at 8000 Hz, mono" in event.reason


def test_a_start_without_media_format_is_refused() -> None:
    """A start that does not say its format is refused rather than assumed to be PCMU."""
    message = _start()
    del message["start"]["media_format"]
    (event,) = _feed(TelnyxDialect(), message)
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert "media_format" in event.reason


def test_the_call_id_is_the_forwarded_call_sid_else_the_call_control_id() -> None:
    """The TeXML CallSid parameter (what the stream token is bound to) names the call; a stream started by
    Call Control, without it, is named by its call_control_id; custom parameters may come as a list."""
    (texml_call,) = _feed(TelnyxDialect(), _start())
    listed = [{"name": "tenant", "value": "acme"}]
    (control_call,) = _feed(TelnyxDialect(), _start(custom_parameters=listed))
    assert isinstance(texml_call, CallStarted)
    assert texml_call.call_id == CALL_SID
    assert isinstance(control_call, CallStarted)
    assert control_call.call_id == CONTROL
    assert control_call.custom_parameters == {"tenant": "acme"}


def test_a_start_with_no_call_id_at_all_is_refused() -> None:
    """Without a CallSid parameter or a call_control_id there is no call to bind the stream to."""
    (event,) = _feed(TelnyxDialect(), _start(custom_parameters={}, call_control_id=""))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal


@pytest.mark.parametrize(
    ("name", "message", "fatal"),
    [
        ("bad base64", _media(2, 1, 0, payload="***"), False),
        ("payload missing", {"event": "media", "stream_id": STREAM, "media": {}}, False),
        ("mark not ours", {"event": "mark", "stream_id": STREAM, "mark": {"name": "chunk-17"}}, False),
        ("dtmf without digit", {"event": "dtmf", "stream_id": STREAM, "dtmf": {}}, False),
        ("another stream", {**_media(2, 1, 0), "stream_id": "other"}, False),
        ("unknown event", {"event": "transcription"}, False),
        ("no event", {"media": {}}, False),
        ("duplicate connected", CONNECTED, False),
        ("second start", _start(), True),
        ("telnyx error", {"event": "error", "payload": {"code": 100003, "title": "Malformed frame"}}, False),
    ],
)
def test_garbage_while_streaming_is_a_violation(name: str, message: Any, fatal: bool) -> None:
    """Each kind of bad message while streaming is a violation, fatal only where the stream cannot go on."""
    dialect = _streaming()
    (event,) = _feed(dialect, message)
    assert isinstance(event, ProtocolViolation), name
    assert event.fatal is fatal, name
    assert dialect.can_send


def test_telnyx_error_frames_say_what_telnyx_said() -> None:
    """An `error` frame is reported with its code and title and does not end the call."""
    (event,) = _feed(
        _streaming(), {"event": "error", "payload": {"code": 100003, "title": "Malformed frame"}}
    )
    assert event == ProtocolViolation(reason="Telnyx reported an error: 100003 Malformed frame")


@pytest.mark.parametrize("message", [_media(2, 1, 0), {"event": "mark", "mark": {"name": "1"}}, STOP])
def test_media_and_marks_before_start_are_fatal_but_stop_ends_cleanly(message: dict[str, Any]) -> None:
    """Before `start` there is no stream to answer: media or marks end it; a stop is a normal end."""
    dialect = TelnyxDialect()
    (event,) = _feed(dialect, CONNECTED, message)[1:]
    if message is STOP:
        assert event == CallStopped()
    else:
        assert isinstance(event, ProtocolViolation)
        assert event.fatal


def test_text_that_is_not_a_json_object_and_binary_frames_are_fatal() -> None:
    """Non-JSON text, a JSON array and a binary frame end the stream; none of them raises."""
    dialect = _streaming()
    for event in (dialect.receive_text("not json"), dialect.receive_text("[]"), dialect.receive_bytes(b"\0")):
        assert isinstance(event, ProtocolViolation)
        assert event.fatal


def test_events_after_stop_are_non_fatal_violations() -> None:
    """Anything after stop is dropped: the call is over anyway."""
    dialect = _streaming()
    (event,) = _feed(dialect, STOP, _media(9, 9, 180))[1:]
    assert isinstance(event, ProtocolViolation)
    assert not event.fatal


def test_outbound_audio_is_media_then_a_mark_for_its_end() -> None:
    """PlayAudio is exactly `{"event":"media","media":{"payload"}}` (no stream id) and a mark named after
    the position the audio ends at."""
    frames = _streaming().send(PlayAudio(FRAME, end_position=480))
    assert [json.loads(f) for f in frames] == [
        {"event": "media", "media": {"payload": FRAME_B64}},
        {"event": "mark", "mark": {"name": "480"}},
    ]


def test_outbound_clear_is_the_documented_json() -> None:
    """ClearPlayback is exactly `{"event":"clear"}`."""
    assert _streaming().send(ClearPlayback()) == ('{"event":"clear"}',)


def test_mark_echo_round_trips_the_position() -> None:
    """The mark the dialect sends for a position comes back, echoed by Telnyx, as PlayedTo(position)."""
    dialect = _streaming()
    _, mark = dialect.send(PlayAudio(FRAME, end_position=123456))
    echo = {"event": "mark", "sequence_number": "7", "stream_id": STREAM, **json.loads(mark)}
    assert _feed(dialect, echo) == [PlayedTo(123456)]


def test_playout_is_whole_20_ms_frames() -> None:
    """Bot audio goes out in multiples of 20 ms, at least one frame per message (RTP mode's minimum)."""
    assert _streaming().playout == PlayoutRule(min_bytes=160, multiple_bytes=160)


def test_send_outside_streaming_is_a_local_error() -> None:
    """Sending before start or after stop is our bug, raised as LocalProtocolError."""
    dialect = TelnyxDialect()
    with pytest.raises(LocalProtocolError, match="AWAITING_CONNECTED"):
        dialect.send(ClearPlayback())
    _feed(dialect, _start(), STOP)
    with pytest.raises(LocalProtocolError, match="STOPPED"):
        dialect.send(PlayAudio(FRAME, 160))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "error", ""])},
        optional={
            "stream_id": json_values,
            "media": json_values,
            "payload": json_values,
            "mark": json_values,
        },
    ),
    st.fixed_dictionaries(
        {
            "event": st.just("start"),
            "stream_id": json_values,
            "start": st.dictionaries(st.sampled_from(list(_start()["start"])), json_values),
        }
    ),
)


@settings(max_examples=200, deadline=None)
@given(prefix=st.integers(min_value=0, max_value=3), garbage=st.lists(messages, max_size=6))
def test_arbitrary_json_never_raises(prefix: int, garbage: list[Any]) -> None:
    """Any sequence of JSON values, in any state, yields events and never an exception."""
    dialect = TelnyxDialect()
    for message in [CONNECTED, _start(), _media(2, 1, 0)][:prefix] + garbage:
        assert dialect.receive_text(json.dumps(message)) is not None


# -- the TeXML answer ------------------------------------------------------------------------------

FORM = {"CallSid": CALL_SID, "From": "+13122010094", "To": "+13122123456", "Direction": "inbound", "X": "y"}


def _request(
    form: dict[str, str], body: bytes = b"", headers: dict[str, str] | None = None, received_s: float = 0.0
) -> HttpRequest:
    url = "https://gw.example.com/telnyx/answer"
    return HttpRequest("POST", url, headers or {}, body, form, received_s=received_s)


def test_answer_is_connect_stream_in_pcmu_rtp_mode_with_the_call_and_its_token() -> None:
    """The answer is `<Connect><Stream>` to the media URL asking PCMU at 8 kHz both ways in RTP mode, with
    the call's fields and the stream token issued for its CallSid as `<Parameter>`s."""
    issued: list[str] = []
    result = answer(_request(FORM), "wss://gw.example.com/telnyx/media", lambda c: issued.append(c) or "tok")
    assert isinstance(result, Answer)
    assert result.call_id == CALL_SID
    assert result.content_type == "text/xml"
    stream = ET.fromstring(result.body).find("./Connect/Stream")
    assert stream is not None
    assert stream.attrib == {
        "url": "wss://gw.example.com/telnyx/media",
        "track": "inbound_track",
        "codec": "PCMU",
        "bidirectionalMode": "rtp",
        "bidirectionalCodec": "PCMU",
        "bidirectionalSamplingRate": "8000",
    }
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    assert params == {
        **{k: FORM[k] for k in ("CallSid", "From", "To", "Direction")},
        STREAM_TOKEN_PARAMETER: "tok",
    }
    assert issued == [CALL_SID]


def test_answer_without_a_call_sid_is_refused() -> None:
    """A webhook without CallSid is no call: 400, and no token is issued."""
    assert answer(_request({"From": "+1"}), "wss://gw/telnyx/media", None) == Refusal(400, "no CallSid")


def test_the_answer_round_trips_through_the_dialect() -> None:
    """The parameters the answer writes come back in `start.custom_parameters` as the call's id and token."""
    result = answer(_request(FORM), "wss://gw.example.com/telnyx/media", lambda c: f"token-for-{c}")
    assert isinstance(result, Answer)
    stream = ET.fromstring(result.body).find("./Connect/Stream")
    assert stream is not None
    params = {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
    (event,) = _feed(TelnyxDialect(), _start(custom_parameters=params))
    assert isinstance(event, CallStarted)
    assert event.call_id == result.call_id
    assert event.custom_parameters[STREAM_TOKEN_PARAMETER] == f"token-for-{CALL_SID}"


def test_texml_refuses_a_stream_url_telnyx_would_refuse() -> None:
    """A ws:// URL is refused before it reaches Telnyx."""
    with pytest.raises(ValueError, match="wss"):
        texml("ws://gw.example.com/telnyx/media", {})


# -- the ed25519 webhook signature --------------------------------------------------------------------

KEY = Ed25519PrivateKey.generate()
RAW_PUBLIC = KEY.public_key().public_bytes(KeyEncoding.Raw, PublicFormat.Raw)
PUBLIC = base64.b64encode(RAW_PUBLIC).decode()
BODY = b"CallSid=v3%3Aabc&From=%2B13122010094"
NOW = 1_700_000_000


def _sign(body: bytes = BODY, timestamp: int = NOW, key: Ed25519PrivateKey = KEY) -> tuple[str, str]:
    """What Telnyx sends: base64 ed25519 over `timestamp|body`, and the timestamp."""
    return base64.b64encode(key.sign(f"{timestamp}|".encode() + body)).decode(), str(timestamp)


def test_a_signature_over_timestamp_and_body_verifies() -> None:
    """The documented scheme verifies: base64 ed25519 of `f"{timestamp}|{body}"` with the portal's key."""
    assert verify_signature(PUBLIC, BODY, *_sign(), now_s=NOW + 1) is None


def test_the_der_form_of_the_key_is_accepted_too() -> None:
    """A key exported as DER SubjectPublicKeyInfo (base64) verifies like the raw 32 bytes."""
    der = KEY.public_key().public_bytes(KeyEncoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert verify_signature(base64.b64encode(der).decode(), BODY, *_sign(), now_s=NOW) is None


@pytest.mark.parametrize(
    ("signature", "timestamp", "body", "problem"),
    [
        (None, str(NOW), BODY, "missing"),
        (_sign()[0], None, BODY, "missing"),
        (_sign()[0], "yesterday", BODY, "malformed"),
        (_sign()[0], str(NOW), BODY + b"&To=1", "invalid signature"),
        (_sign()[0], str(NOW + 1), BODY, "invalid signature"),
        (_sign(key=Ed25519PrivateKey.generate())[0], str(NOW), BODY, "invalid signature"),
        ("not base64!", str(NOW), BODY, "invalid signature"),
        (base64.b64encode(b"short").decode(), str(NOW), BODY, "invalid signature"),
    ],
)
def test_bad_signatures_are_refused(
    signature: str | None, timestamp: str | None, body: bytes, problem: str
) -> None:
    """Missing headers, another body, another timestamp, another key or a mangled signature are refused."""
    assert problem in (verify_signature(PUBLIC, body, signature, timestamp, now_s=NOW) or "")


def test_stale_or_future_timestamps_are_refused_as_replays() -> None:
    """A valid signature more than 5 minutes away from now is a replay; the tolerance is an argument."""
    signature, ts = _sign()
    assert verify_signature(PUBLIC, BODY, signature, ts, now_s=NOW + 300) is None
    assert "replay" in (verify_signature(PUBLIC, BODY, signature, ts, now_s=NOW + 301) or "")
    assert "replay" in (verify_signature(PUBLIC, BODY, signature, ts, now_s=NOW - 301) or "")
    assert verify_signature(PUBLIC, BODY, signature, ts, now_s=NOW + 3600, tolerance_s=3600) is None
    assert verify_signature(PUBLIC, BODY, signature, ts, now_s=NOW + 61, tolerance_s=60) is not None


def test_a_key_that_is_not_an_ed25519_public_key_is_reported() -> None:
    """A misconfigured TELNYX_PUBLIC_KEY is named as the problem, not reported as a bad signature."""
    assert "TELNYX_PUBLIC_KEY" in (verify_signature("bm9wZQ==", BODY, *_sign(), now_s=NOW) or "")


def test_check_answer_reads_the_headers_the_raw_body_and_the_arrival_time() -> None:
    """The provider's check takes the signature and timestamp headers, the raw body, and the time the
    request arrived (a request stamped long before it arrived is a replay)."""
    signature, ts = _sign()
    headers = {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: ts}
    assert check_answer(_request({}, BODY, headers, received_s=NOW + 2), PUBLIC) is None
    assert check_answer(_request({}, BODY + b"x", headers, received_s=NOW), PUBLIC) == "invalid signature"
    assert "replay" in (check_answer(_request({}, BODY, headers, received_s=NOW + 3600), PUBLIC) or "")
    assert check_answer(_request({}, BODY, {SIGNATURE_HEADER: signature}, received_s=NOW), PUBLIC) is not None


def test_the_provider_is_telnyx_with_no_upgrade_check() -> None:
    """/telnyx/answer is checked against TELNYX_PUBLIC_KEY; the media upgrade relies on the stream token."""
    assert (PROVIDER.name, PROVIDER.secret_setting) == ("telnyx", "TELNYX_PUBLIC_KEY")
    assert PROVIDER.check_answer is check_answer
    assert PROVIDER.check_media is None
