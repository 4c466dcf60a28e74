"""The Plivo dialect, XML answer, extraHeaders encoding and V3 signatures: transcripts in, events out;
commands in, JSON out; garbage tolerated; signatures as pure functions against hand-built strings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
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
)
from gateway.telephony.plivo import (
    MAIN_ACCOUNT_SIGNATURE_HEADER,
    NONCE_HEADER,
    PROVIDER,
    SIGNATURE_HEADER,
    PlivoDialect,
    StreamState,
    answer,
    check_answer,
    check_media,
    compute_signature,
    decode_extra_headers,
    encode_extra_headers,
    signed_string,
)
from gateway.telephony.provider import Answer, HttpRequest, Refusal
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from telcodec import Encoding, WireFormat

CALL = "12345678-1234-1234-1234-123456789abc"
STREAM = "87654321-4321-4321-4321-cba987654321"
FRAME = bytes(range(160))  # 20 ms of mu-law
FRAME_B64 = base64.b64encode(FRAME).decode()
TOKEN = "1700000060.q83vEjRWeJq83vEjRWeJq83v"
EXTRA = f"CallUUID={CALL.encode().hex()};gatewayToken={TOKEN.encode().hex()};tenant=acme"


def _start(
    media_format: Any = None, extra_headers: str | None = EXTRA, **start_overrides: Any
) -> dict[str, Any]:
    """A `start` as Plivo's protocol reference shows it, with the answer's extra headers."""
    start: dict[str, Any] = {
        "callId": CALL,
        "streamId": STREAM,
        "accountId": "MAXXXXXXXXXXXXXXXXXX",
        "tracks": ["inbound"],
        "mediaFormat": media_format or {"encoding": "audio/x-mulaw", "sampleRate": 8000},
    }
    start.update(start_overrides)
    message: dict[str, Any] = {"event": "start", "sequenceNumber": 1, "start": start}
    if extra_headers is not None:
        message["extra_headers"] = extra_headers
    return message


def _media(seq: int, chunk: int, epoch_ms: int, payload: str = FRAME_B64) -> dict[str, Any]:
    media = {"track": "inbound", "timestamp": str(epoch_ms), "chunk": chunk, "payload": payload}
    return {
        "event": "media",
        "sequenceNumber": seq,
        "streamId": STREAM,
        "media": media,
        "extra_headers": EXTRA,
    }


EPOCH = 1705312200000
DTMF = {
    "event": "dtmf",
    "sequenceNumber": 4,
    "streamId": STREAM,
    "dtmf": {"track": "inbound", "digit": "5", "timestamp": str(EPOCH + 50)},
    "extra_headers": EXTRA,
}
TRANSCRIPT = [
    _start(),
    _media(2, 1, EPOCH),
    _media(3, 2, EPOCH + 20),
    DTMF,
    {"event": "playedStream", "sequenceNumber": 5, "streamId": STREAM, "name": "160"},
]


def _feed(dialect: PlivoDialect, *messages: Any) -> list[Any]:
    return [dialect.receive_text(json.dumps(m)) for m in messages]


def _streaming(**start_kwargs: Any) -> PlivoDialect:
    dialect = PlivoDialect()
    _feed(dialect, _start(**start_kwargs))
    return dialect


def test_full_transcript_yields_the_right_events() -> None:
    """A call as Plivo sends it (no connected, numeric counters, epoch timestamps) becomes start, media with
    times relative to the first frame, dtmf and a reached checkpoint as PlayedTo."""
    events = _feed(PlivoDialect(), *TRANSCRIPT)
    assert events[0] == CallStarted(
        stream_id=STREAM,
        call_id=CALL,
        account_id="MAXXXXXXXXXXXXXXXXXX",
        tracks=("inbound",),
        custom_parameters={"CallUUID": CALL, STREAM_TOKEN_PARAMETER: TOKEN, "tenant": "acme"},
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
        format=WireFormat(Encoding.ULAW, 8000),
    )
    assert events[1:] == [
        MediaReceived(payload=FRAME, timestamp_ms=0, chunk=1),
        MediaReceived(payload=FRAME, timestamp_ms=20, chunk=2),
        DtmfReceived("5"),
        PlayedTo(160),
    ]


@pytest.mark.parametrize(
    ("media_format", "expected"),
    [
        ({"encoding": "audio/x-mulaw", "sampleRate": 8000}, WireFormat(Encoding.ULAW, 8000)),
        ({"encoding": "audio/x-l16", "sampleRate": 8000}, WireFormat(Encoding.L16, 8000)),
        ({"encoding": "audio/x-l16", "sampleRate": 16000}, WireFormat(Encoding.L16, 16000)),
        ({"encoding": "audio/x-L16", "sampleRate": "16000", "channels": 1}, WireFormat(Encoding.L16, 16000)),
    ],
)
def test_the_format_comes_from_start_every_time(media_format: dict[str, Any], expected: WireFormat) -> None:
    """mu-law at 8 kHz, or Plivo's default L16 at 8 or 16 kHz, is the leg's format both ways."""
    (event,) = _feed(PlivoDialect(), _start(media_format))
    assert isinstance(event, CallStarted)
    assert event.format == expected


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-mulaw", "sampleRate": 16000},
        {"encoding": "audio/x-l16", "sampleRate": 24000},
        {"encoding": "audio/x-l16", "sampleRate": 8000, "channels": 2},
        {"encoding": "audio/x-alaw", "sampleRate": 8000},
    ],
)
def test_unsupported_formats_are_refused_with_what_is_supported(media_format: dict[str, Any]) -> None:
    """Other rates, stereo or other encodings end the stream, naming what is taken."""
    (event,) = _feed(PlivoDialect(), _start(media_format))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal
    assert "audio/x-mulaw at 8000 Hz, audio/x-l16 at 8000 Hz, audio/x-l16 at 16000 Hz, mono" in event.reason


def test_a_start_without_media_format_is_refused() -> None:
    """A start that does not say its format is refused rather than assumed."""
    message = _start()
    del message["start"]["mediaFormat"]
    (event,) = _feed(PlivoDialect(), message)
    assert isinstance(event, ProtocolViolation)
    assert event.fatal


def test_without_extra_headers_the_call_is_plivos_call_id() -> None:
    """A stream with no extra headers is named by start.callId and has no custom parameters."""
    (event,) = _feed(PlivoDialect(), _start(extra_headers=None))
    assert isinstance(event, CallStarted)
    assert (event.call_id, dict(event.custom_parameters)) == (CALL, {})


def test_extra_headers_are_decoded_whatever_the_separator() -> None:
    """`k=v;k=v` (what Plivo sends) and `k=v,k=v` (what the XML says) decode alike; only the gateway's
    hex-encoded names are decoded, and a value that is not hex is kept as sent."""
    expected = {"CallUUID": CALL, "From": "+1555", "tenant": "acme", "To": "zz"}
    text = f"CallUUID={CALL.encode().hex()};From={b'+1555'.hex()};tenant=acme;To=zz;junk"
    assert decode_extra_headers(text) == expected
    assert decode_extra_headers(text.replace(";", ",")) == expected
    assert decode_extra_headers("") == {}


@pytest.mark.parametrize(
    ("name", "message", "fatal"),
    [
        ("bad base64", _media(2, 1, EPOCH, payload="***"), False),
        ("payload missing", {"event": "media", "streamId": STREAM, "media": {}}, False),
        ("checkpoint not ours", {"event": "playedStream", "streamId": STREAM, "name": "greeting"}, False),
        ("checkpoint unnamed", {"event": "playedStream", "streamId": STREAM}, False),
        ("cleared with no clear", {"event": "clearedAudio", "streamId": STREAM}, False),
        ("dtmf without digit", {"event": "dtmf", "streamId": STREAM, "dtmf": {}}, False),
        ("another stream", {**_media(2, 1, EPOCH), "streamId": "other"}, False),
        ("unknown event", {"event": "connected"}, False),
        ("no event", {"media": {}}, False),
        ("second start", _start(), True),
    ],
)
def test_garbage_while_streaming_is_a_violation(name: str, message: Any, fatal: bool) -> None:
    """Each kind of bad message while streaming is a violation, fatal only where the stream cannot go on."""
    dialect = _streaming()
    (event,) = _feed(dialect, message)
    assert isinstance(event, ProtocolViolation), name
    assert event.fatal is fatal, name
    assert dialect.can_send


def test_l16_media_must_be_whole_samples() -> None:
    """An odd number of L16 bytes is dropped as a violation, not decoded."""
    dialect = _streaming(media_format={"encoding": "audio/x-l16", "sampleRate": 8000})
    (event,) = _feed(dialect, _media(2, 1, EPOCH, payload=base64.b64encode(b"\0" * 3).decode()))
    assert isinstance(event, ProtocolViolation)
    assert not event.fatal


def test_media_before_start_is_fatal_and_non_json_or_binary_too() -> None:
    """Before `start` there is no stream: media ends it; non-JSON text and binary frames end any stream."""
    assert _feed(PlivoDialect(), _media(1, 1, EPOCH))[0].fatal
    dialect = _streaming()
    for event in (dialect.receive_text("{"), dialect.receive_text('"x"'), dialect.receive_bytes(b"\1\2")):
        assert isinstance(event, ProtocolViolation)
        assert event.fatal


def test_stop_ends_the_stream_and_later_messages_are_dropped() -> None:
    """A `stop` (Plivo normally just closes the socket) ends the stream; anything after it is dropped."""
    dialect = _streaming()
    stop, late = _feed(dialect, {"event": "stop", "streamId": STREAM}, _media(9, 9, EPOCH))
    assert stop == CallStopped()
    assert dialect.state is StreamState.STOPPED
    assert isinstance(late, ProtocolViolation)
    assert not late.fatal


def test_outbound_audio_is_play_audio_then_a_checkpoint_for_its_end() -> None:
    """PlayAudio is exactly Plivo's `playAudio` in the stream's format and a `checkpoint` named after the
    position its audio ends at."""
    frames = _streaming().send(PlayAudio(FRAME, end_position=480))
    assert [json.loads(f) for f in frames] == [
        {
            "event": "playAudio",
            "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000, "payload": FRAME_B64},
        },
        {"event": "checkpoint", "streamId": STREAM, "name": "480"},
    ]


def test_outbound_audio_follows_an_l16_stream() -> None:
    """On an L16 16 kHz stream the bot's audio is sent as audio/x-l16 at 16000 Hz."""
    dialect = _streaming(media_format={"encoding": "audio/x-l16", "sampleRate": 16000})
    media = json.loads(dialect.send(PlayAudio(b"\0\0" * 320, end_position=320))[0])["media"]
    assert (media["contentType"], media["sampleRate"]) == ("audio/x-l16", 16000)
    with pytest.raises(LocalProtocolError, match="whole samples"):
        dialect.send(PlayAudio(b"\0" * 3, end_position=321))


def test_outbound_clear_is_the_documented_json() -> None:
    """ClearPlayback is exactly `{"event":"clearAudio","streamId":...}`."""
    assert [json.loads(f) for f in _streaming().send(ClearPlayback())] == [
        {"event": "clearAudio", "streamId": STREAM}
    ]


def test_checkpoints_round_trip_the_position_and_older_played_events_too() -> None:
    """The checkpoint sent for a position comes back, as `playedStream` (or the older `played`), as
    PlayedTo(position)."""
    dialect = _streaming()
    _, checkpoint = dialect.send(PlayAudio(FRAME, end_position=123456))
    name = json.loads(checkpoint)["name"]
    played = {"event": "playedStream", "sequenceNumber": 9, "streamId": STREAM, "name": name}
    assert _feed(dialect, played, {**played, "event": "played"}) == [PlayedTo(123456), PlayedTo(123456)]


def test_cleared_audio_reports_the_flushed_position() -> None:
    """`clearedAudio` answers the clear: it comes back as PlayedTo(the last position sent before that
    clear), which the tracker counts as a flush (the dropped checkpoints will never be confirmed)."""
    dialect = _streaming()
    dialect.send(PlayAudio(FRAME, end_position=160))
    dialect.send(PlayAudio(FRAME, end_position=320))
    dialect.send(ClearPlayback())
    dialect.send(PlayAudio(FRAME, end_position=480))
    dialect.send(ClearPlayback())
    cleared = {"event": "clearedAudio", "sequenceNumber": 7, "streamId": STREAM}
    assert _feed(dialect, cleared, cleared) == [PlayedTo(320), PlayedTo(480)]
    (extra,) = _feed(dialect, cleared)
    assert isinstance(extra, ProtocolViolation)
    assert not extra.fatal


def test_playout_is_any_size_and_sending_needs_a_stream() -> None:
    """Plivo queues playAudio of any size; sending before start or after stop is our bug."""
    dialect = PlivoDialect()
    assert dialect.playout == PlayoutRule()
    with pytest.raises(LocalProtocolError, match="AWAITING_START"):
        dialect.send(ClearPlayback())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_names = ["start", "media", "dtmf", "playedStream", "played", "clearedAudio", "stop", ""]
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"event": st.sampled_from(event_names)},
        optional={"streamId": json_values, "media": json_values, "name": json_values, "dtmf": json_values},
    ),
    st.fixed_dictionaries(
        {
            "event": st.just("start"),
            "extra_headers": json_values,
            "start": st.dictionaries(st.sampled_from(list(_start()["start"])), json_values),
        }
    ),
)


@settings(max_examples=200, deadline=None)
@given(prefix=st.integers(min_value=0, max_value=2), garbage=st.lists(messages, max_size=6))
def test_arbitrary_json_never_raises(prefix: int, garbage: list[Any]) -> None:
    """Any sequence of JSON values, in any state, yields events and never an exception."""
    dialect = PlivoDialect()
    for message in [_start(), _media(2, 1, EPOCH)][:prefix] + garbage:
        assert dialect.receive_text(json.dumps(message)) is not None


# -- the XML answer and extraHeaders -----------------------------------------------------------------

FORM = {
    "CallUUID": CALL,
    "From": "+14155550100",
    "To": "+14155550199",
    "Direction": "inbound",
    "Event": "StartApp",
}


def _request(form: dict[str, str], headers: dict[str, str] | None = None, url: str = "") -> HttpRequest:
    return HttpRequest("POST", url or "https://gw.example.com/plivo/answer", headers or {}, b"", form)


def test_answer_is_a_bidirectional_mulaw_stream_with_hex_extra_headers() -> None:
    """The answer is `<Stream bidirectional keepCallAlive audioTrack=inbound contentType=mu-law>` with the
    media URL as its text and, in extraHeaders, the call id, the token and the call's fields, each value
    the hex of its UTF-8 (only [A-Za-z0-9] is allowed there)."""
    result = answer(_request(FORM), "wss://gw.example.com/plivo/media", lambda c: TOKEN)
    assert isinstance(result, Answer)
    assert result.call_id == CALL
    assert result.content_type == "text/xml"
    stream = ET.fromstring(result.body).find("./Stream")
    assert stream is not None
    assert stream.text == "wss://gw.example.com/plivo/media"
    extra = stream.attrib.pop("extraHeaders")
    assert stream.attrib == {
        "bidirectional": "true",
        "keepCallAlive": "true",
        "audioTrack": "inbound",
        "contentType": "audio/x-mulaw;rate=8000",
    }
    hexed = {k: v.encode().hex() for k, v in FORM.items()}
    assert extra == (
        f"CallUUID={hexed['CallUUID']},gatewayToken={TOKEN.encode().hex()},From={hexed['From']},"
        f"To={hexed['To']},Direction={hexed['Direction']}"
    )


def test_answer_without_a_call_uuid_is_refused() -> None:
    """A webhook without CallUUID is no call: 400."""
    assert answer(_request({"From": "+1"}), "wss://gw/plivo/media", None) == Refusal(400, "no CallUUID")


def test_extra_headers_stay_within_512_bytes_dropping_what_does_not_fit() -> None:
    """Pairs that would take extraHeaders past 512 bytes are left out, in order, never the ones before."""
    encoded = encode_extra_headers([("CallUUID", CALL), ("From", "sip:" + "x" * 300), ("To", "+1")])
    assert len(encoded) <= 512
    assert decode_extra_headers(encoded) == {"CallUUID": CALL, "To": "+1"}
    with pytest.raises(ValueError, match="A-Za-z0-9"):
        encode_extra_headers([("X-PH-Token", "1")])


def test_the_answer_round_trips_through_the_dialect() -> None:
    """What the answer writes in extraHeaders comes back, as Plivo echoes it (`;`-separated), as the call id
    the token was issued for and the token itself."""
    result = answer(_request(FORM), "wss://gw.example.com/plivo/media", lambda c: f"token.for-{c}")
    assert isinstance(result, Answer)
    stream = ET.fromstring(result.body).find("./Stream")
    assert stream is not None
    echoed = stream.attrib["extraHeaders"].replace(",", ";")
    (event,) = _feed(PlivoDialect(), _start(extra_headers=echoed, callId="plivo-own-id"))
    assert isinstance(event, CallStarted)
    assert event.call_id == result.call_id == CALL
    assert event.custom_parameters[STREAM_TOKEN_PARAMETER] == f"token.for-{CALL}"
    assert event.custom_parameters["From"] == FORM["From"]


# -- X-Plivo-Signature-V3 -----------------------------------------------------------------------------

AUTH_TOKEN = "MjAxOS0wMS0wMVQwMDowMDowMFo"
NONCE = "05429567804466091622"
PARAMS = {"To": "+14155550199", "From": "+14155550100", "CallUUID": "abc"}


def _hmac(message: str) -> str:
    """Computed by hand as the docs describe: base64(HMAC-SHA256(auth token, message))."""
    return base64.b64encode(hmac.new(AUTH_TOKEN.encode(), message.encode(), hashlib.sha256).digest()).decode()


@pytest.mark.parametrize(
    ("method", "url", "params", "expected"),
    [
        (
            "POST",
            "https://gw.example.com/plivo/answer",
            PARAMS,
            "https://gw.example.com/plivo/answer?CallUUIDabcFrom+14155550100To+14155550199.05429567804466091622",
        ),
        (
            "POST",
            "https://gw.example.com/plivo/answer?b=2&a=1",
            PARAMS,
            "https://gw.example.com/plivo/answer?a=1&b=2.CallUUIDabcFrom+14155550100To+14155550199"
            ".05429567804466091622",
        ),
        (
            "POST",
            "https://gw.example.com/plivo/answer",
            {},
            "https://gw.example.com/plivo/answer.05429567804466091622",
        ),
        (
            "GET",
            "wss://gw.example.com/plivo/media",
            {},
            "wss://gw.example.com/plivo/media.05429567804466091622",
        ),
        (
            "GET",
            "https://gw.example.com/plivo/answer?z=1&a=x%20y",
            {},
            "https://gw.example.com/plivo/answer?a=x y&z=1.05429567804466091622",
        ),
    ],
)
def test_the_string_to_sign_is_plivos(method: str, url: str, params: dict[str, str], expected: str) -> None:
    """The signed string follows plivo-python's validate_v3_signature: base URL, sorted query, `.`, sorted
    POST parameters as name+value, then `.` and the nonce."""
    assert signed_string(method, url, params, NONCE) == expected
    assert compute_signature(AUTH_TOKEN, method, url, params, NONCE) == _hmac(expected)


def _signed(method: str, url: str, params: dict[str, str], header: str = SIGNATURE_HEADER) -> dict[str, str]:
    return {
        header.lower(): compute_signature(AUTH_TOKEN, method, url, params, NONCE),
        NONCE_HEADER.lower(): NONCE,
    }


def test_check_answer_accepts_plivos_signature_and_nothing_else() -> None:
    """The webhook is checked over its public URL and form fields; any of several comma-separated
    signatures (one per active token) or the main account's may match; a changed field, another nonce,
    a missing header or another token fails."""
    url = "https://gw.example.com/plivo/answer"
    headers = _signed("POST", url, PARAMS)
    assert check_answer(_request(PARAMS, headers, url), AUTH_TOKEN) is None
    several = {**headers, SIGNATURE_HEADER.lower(): f"bm9wZQ==, {headers[SIGNATURE_HEADER.lower()]}"}
    assert check_answer(_request(PARAMS, several, url), AUTH_TOKEN) is None
    main = _signed("POST", url, PARAMS, MAIN_ACCOUNT_SIGNATURE_HEADER)
    assert check_answer(_request(PARAMS, main, url), AUTH_TOKEN) is None
    assert check_answer(_request({**PARAMS, "To": "+1"}, headers, url), AUTH_TOKEN) == "invalid signature"
    assert check_answer(_request(PARAMS, {**headers, NONCE_HEADER.lower(): "1"}, url), AUTH_TOKEN) is not None
    assert check_answer(_request(PARAMS, {}, url), AUTH_TOKEN) == f"missing {SIGNATURE_HEADER} or its nonce"
    assert check_answer(_request(PARAMS, headers, url), "another-token") == "invalid signature"


def test_check_media_accepts_the_stream_url_as_wss_or_https() -> None:
    """The upgrade is a signed GET of the stream URL, accepted over its `wss://` or its `https://` form."""
    url = "wss://gw.example.com/plivo/media"
    for signed_url in (url, "https://gw.example.com/plivo/media"):
        request = HttpRequest("GET", url, _signed("GET", signed_url, {}))
        assert check_media(request, AUTH_TOKEN) is None
    other = HttpRequest("GET", url, _signed("GET", "wss://gw.example.com/elsewhere", {}))
    assert check_media(other, AUTH_TOKEN) == "invalid signature"
    assert check_media(HttpRequest("GET", url), AUTH_TOKEN) is not None


def test_the_provider_is_plivo_with_both_checks() -> None:
    """/plivo/answer and /plivo/media are both checked against PLIVO_AUTH_TOKEN."""
    assert (PROVIDER.name, PROVIDER.secret_setting) == ("plivo", "PLIVO_AUTH_TOKEN")
    assert (PROVIDER.check_answer, PROVIDER.check_media) == (check_answer, check_media)
