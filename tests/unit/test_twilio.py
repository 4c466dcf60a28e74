"""The Twilio Media Streams dialect: transcripts in, events out; commands in, JSON out; garbage tolerated."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError, LocalProtocolError, ProtocolError
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
from gateway.telephony.twilio import StreamState, TwilioDialect

SID = "MZ0123456789abcdef0123456789abcdef"
CALL = "CA0123456789abcdef0123456789abcdef"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"
FRAME = bytes(range(160))  # one 20 ms mu-law frame
FRAME_B64 = base64.b64encode(FRAME).decode()


def _start(**start_overrides: Any) -> dict[str, Any]:
    start: dict[str, Any] = {
        "accountSid": ACCOUNT,
        "streamSid": SID,
        "callSid": CALL,
        "tracks": ["inbound"],
        "customParameters": {"tenant": "acme", "session_token": "tok-1"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    start.update(start_overrides)
    return {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": SID}


def _media(seq: int, chunk: int, ts: int, payload: str = FRAME_B64, **extra: Any) -> dict[str, Any]:
    media = {"track": "inbound", "chunk": str(chunk), "timestamp": str(ts), "payload": payload}
    return {"event": "media", "sequenceNumber": str(seq), "media": media, "streamSid": SID, **extra}


CONNECTED = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
STOP = {
    "event": "stop",
    "sequenceNumber": "9",
    "stop": {"accountSid": ACCOUNT, "callSid": CALL},
    "streamSid": SID,
}

# A full call as Twilio sends it (shapes from PROTOCOLS.md 1.3), one WebSocket text message per entry.
TRANSCRIPT: list[dict[str, Any]] = [
    CONNECTED,
    _start(),
    _media(2, 1, 0),
    _media(3, 2, 20),
    {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "4",
        "dtmf": {"track": "inbound_track", "digit": "5"},
    },
    _media(5, 3, 40),
    {"event": "mark", "sequenceNumber": "6", "streamSid": SID, "mark": {"name": "17"}},
    _media(7, 4, 60),
    {"event": "mark", "sequenceNumber": "8", "streamSid": SID, "mark": {"name": "37"}},
    STOP,
]

EXPECTED = [
    StreamConnected(protocol="Call", version="1.0.0"),
    CallStarted(
        stream_id=SID,
        call_id=CALL,
        account_id=ACCOUNT,
        tracks=("inbound",),
        custom_parameters={"tenant": "acme", "session_token": "tok-1"},
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
    ),
    MediaReceived(payload=FRAME, timestamp_ms=0, chunk=1, track="inbound"),
    MediaReceived(payload=FRAME, timestamp_ms=20, chunk=2, track="inbound"),
    DtmfReceived(digit="5"),
    MediaReceived(payload=FRAME, timestamp_ms=40, chunk=3, track="inbound"),
    PlayedTo(position=17),
    MediaReceived(payload=FRAME, timestamp_ms=60, chunk=4, track="inbound"),
    PlayedTo(position=37),
    CallStopped(),
]


def _streaming(**start_overrides: Any) -> TwilioDialect:
    dialect = TwilioDialect()
    assert isinstance(dialect.receive_text(json.dumps(CONNECTED)), StreamConnected)
    assert isinstance(dialect.receive_text(json.dumps(_start(**start_overrides))), CallStarted)
    return dialect


def test_full_transcript_yields_the_right_events() -> None:
    """A recorded call fed message by message yields exactly the expected events, in order."""
    dialect = TwilioDialect()
    events = [dialect.receive_text(json.dumps(message)) for message in TRANSCRIPT]
    assert events == EXPECTED
    assert dialect.state is StreamState.STOPPED


def test_states_follow_the_stream_life() -> None:
    """The state goes AWAITING_CONNECTED -> AWAITING_START -> STREAMING -> STOPPED."""
    dialect = TwilioDialect()
    seen = [dialect.state]
    for message in (CONNECTED, _start(), _media(2, 1, 0), STOP):
        dialect.receive_text(json.dumps(message))
        seen.append(dialect.state)
    assert seen == [
        StreamState.AWAITING_CONNECTED,
        StreamState.AWAITING_START,
        StreamState.STREAMING,
        StreamState.STREAMING,
        StreamState.STOPPED,
    ]


def test_start_without_connected_is_accepted() -> None:
    """A replay that omits `connected` still starts the stream on `start`."""
    dialect = TwilioDialect()
    event = dialect.receive_text(json.dumps(_start()))
    assert isinstance(event, CallStarted)
    assert event.stream_id == SID
    assert dialect.call == event
    assert dialect.receive_text(json.dumps(_media(2, 1, 0))) == EXPECTED[2]


def test_stop_before_start_ends_the_stream() -> None:
    """A caller who hangs up during set-up produces CallStopped, not a violation."""
    dialect = TwilioDialect()
    dialect.receive_text(json.dumps(CONNECTED))
    assert dialect.receive_text(json.dumps(STOP)) == CallStopped()
    assert dialect.state is StreamState.STOPPED


def test_counters_as_plain_integers_are_accepted() -> None:
    """Counters sent as JSON numbers (some replays do) parse like the string form."""
    dialect = _streaming()
    message = _media(2, 1, 0)
    message["media"].update(chunk=7, timestamp=140)
    assert dialect.receive_text(json.dumps(message)) == MediaReceived(FRAME, timestamp_ms=140, chunk=7)


def test_start_defaults_when_optional_fields_are_missing() -> None:
    """A minimal start (only streamSid) gets mu-law/8000/1, inbound track and no parameters."""
    dialect = TwilioDialect()
    event = dialect.receive_text(json.dumps({"event": "start", "start": {"streamSid": SID}}))
    assert event == CallStarted(stream_id=SID, call_id="", account_id="", tracks=("inbound",))


def _bad_media(**media_overrides: Any) -> dict[str, Any]:
    message = _media(2, 1, 0)
    message["media"].update(media_overrides)
    return message


# (name, message, fatal): each arrives while the stream is STREAMING.
STREAMING_GARBAGE: list[tuple[str, Any, bool]] = [
    ("not json", "{not json", True),
    ("json array", "[1, 2]", True),
    ("json string", '"media"', True),
    ("deeply nested", "[" * 100_000, True),
    ("missing event", {"streamSid": SID}, False),
    ("event not a string", {"event": 5}, False),
    ("unknown event", {"event": "transcription", "streamSid": SID}, False),
    ("other streamSid", _media(2, 1, 0) | {"streamSid": "MZother"}, False),
    ("media not an object", {"event": "media", "media": "x", "streamSid": SID}, False),
    ("payload not a string", _bad_media(payload=123), False),
    ("invalid base64", _bad_media(payload="!!!notbase64"), False),
    ("truncated base64", _bad_media(payload="AAE"), False),
    ("chunk not digits", _bad_media(chunk="abc"), False),
    ("chunk negative", _bad_media(chunk="-1"), False),
    ("chunk huge", _bad_media(chunk="9" * 5000), False),
    ("timestamp float", _bad_media(timestamp=1.5), False),
    ("timestamp bool", _bad_media(timestamp=True), False),
    (
        "timestamp missing",
        {"event": "media", "streamSid": SID, "media": {"payload": FRAME_B64, "chunk": "1"}},
        False,
    ),
    ("mark name not a string", {"event": "mark", "streamSid": SID, "mark": {"name": 17}}, False),
    ("mark without body", {"event": "mark", "streamSid": SID}, False),
    ("dtmf without digit", {"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track"}}, False),
    ("duplicate connected", CONNECTED, False),
    ("second start", _start(streamSid="MZsecond"), True),
]


@pytest.mark.parametrize(
    ("name", "message", "fatal"), STREAMING_GARBAGE, ids=[c[0] for c in STREAMING_GARBAGE]
)
def test_garbage_while_streaming_is_a_violation(name: str, message: Any, fatal: bool) -> None:
    """Each kind of peer garbage gives a ProtocolViolation of the documented fatality, never an exception."""
    dialect = _streaming()
    text = message if isinstance(message, str) else json.dumps(message)
    event = dialect.receive_text(text)
    assert isinstance(event, ProtocolViolation)
    assert event.fatal is fatal
    assert event.reason
    assert len(event.reason) < 120
    # A dropped message leaves the stream usable.
    assert dialect.state is StreamState.STREAMING
    assert dialect.receive_text(json.dumps(_media(3, 2, 20))) == MediaReceived(
        FRAME, timestamp_ms=20, chunk=2
    )


# (name, message, fatal): each arrives before start (after connected).
SETUP_GARBAGE: list[tuple[str, Any, bool]] = [
    ("media before start", _media(2, 1, 0), True),
    ("mark before start", {"event": "mark", "streamSid": SID, "mark": {"name": "m"}}, True),
    ("dtmf before start", {"event": "dtmf", "streamSid": SID, "dtmf": {"digit": "1"}}, True),
    ("start without body", {"event": "start", "streamSid": SID}, True),
    ("start without streamSid", _start(streamSid=None), True),
    ("start with empty streamSid", _start(streamSid=""), True),
    ("start with non-string parameter", _start(customParameters={"n": 1}), True),
    ("start with tracks not a list", _start(tracks="inbound"), True),
    ("start with unknown encoding", _start(mediaFormat={"encoding": "audio/opus"}), True),
    ("start with zero channels", _start(mediaFormat={"encoding": "audio/x-mulaw", "channels": 0}), True),
    ("start with A-law", _start(mediaFormat={"encoding": "audio/x-alaw", "sampleRate": 8000}), True),
    ("start with L16", _start(mediaFormat={"encoding": "audio/x-l16", "sampleRate": 8000}), True),
    ("start with 16 kHz", _start(mediaFormat={"encoding": "audio/x-mulaw", "sampleRate": 16000}), True),
    ("start with two channels", _start(mediaFormat={"encoding": "audio/x-mulaw", "channels": 2}), True),
    ("unknown event", {"event": "hello"}, False),
    ("duplicate connected", CONNECTED, False),
]


@pytest.mark.parametrize(("name", "message", "fatal"), SETUP_GARBAGE, ids=[c[0] for c in SETUP_GARBAGE])
def test_garbage_during_setup_is_a_violation(name: str, message: Any, fatal: bool) -> None:
    """Messages that cannot come before a usable start give a violation; fatal ones leave no stream."""
    dialect = TwilioDialect()
    dialect.receive_text(json.dumps(CONNECTED))
    event = dialect.receive_text(json.dumps(message))
    assert isinstance(event, ProtocolViolation)
    assert event.fatal is fatal
    assert dialect.state is StreamState.AWAITING_START
    assert dialect.call is None
    assert not dialect.can_send


def test_events_after_stop_are_non_fatal_violations() -> None:
    """Media, marks and a second stop after stop are reported (not fatal) and change nothing."""
    dialect = _streaming()
    assert dialect.receive_text(json.dumps(STOP)) == CallStopped()
    for message in (_media(10, 5, 80), {"event": "mark", "mark": {"name": "m"}}, STOP):
        event = dialect.receive_text(json.dumps(message))
        assert event == ProtocolViolation(reason=f"'{message['event']}' after stop", fatal=False)
    assert dialect.state is StreamState.STOPPED


def test_wrong_stream_sid_is_ignored_not_fatal() -> None:
    """A message for another stream is dropped with a non-fatal violation naming the event."""
    dialect = _streaming()
    event = dialect.receive_text(json.dumps(_media(2, 1, 0) | {"streamSid": "MZother"}))
    assert event == ProtocolViolation(reason="'media' for another streamSid", fatal=False)


def test_unsupported_format_is_refused_with_what_is_supported() -> None:
    """A start announcing A-law, L16 or two channels is refused (fatal) naming the format Twilio
    streams, rather than decoded as mono mu-law."""
    dialect = TwilioDialect()
    fmt = {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 2}
    event = dialect.receive_text(json.dumps(_start(mediaFormat=fmt)))
    assert event == ProtocolViolation(
        reason="unsupported media format audio/x-l16 at 16000 Hz with 2 channel(s); "
        "a Twilio stream is audio/x-mulaw at 8000 Hz, mono",
        fatal=True,
    )
    assert dialect.call is None


def test_marks_we_did_not_send_are_non_fatal_violations() -> None:
    """A mark name that is not a position the gateway sent is reported, not taken as playback."""
    dialect = _streaming()
    for name in ("greeting-done", "", "1:2", "-5", "٣", "9" * 19):
        event = dialect.receive_text(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}}))
        assert isinstance(event, ProtocolViolation), name
        assert not event.fatal
    assert dialect.receive_text(json.dumps({"event": "mark", "mark": {"name": "320"}})) == PlayedTo(320)


def test_mulaw_accepts_any_byte_count() -> None:
    """Every mu-law byte is one sample, so an odd-sized payload is whole."""
    dialect = _streaming()
    event = dialect.receive_text(
        json.dumps(_media(2, 1, 0, payload=base64.b64encode(b"\xff" * 161).decode()))
    )
    assert isinstance(event, MediaReceived)
    assert event.payload == b"\xff" * 161


def test_binary_frames_are_fatal_violations() -> None:
    """A binary frame is not Media Streams; receive_bytes reports it as fatal."""
    violation = TwilioDialect().receive_bytes(b"\x00\x01\x02")
    assert violation == ProtocolViolation(reason="unexpected binary frame (3 bytes)", fatal=True)


def test_outbound_audio_is_media_then_a_mark_for_its_end() -> None:
    """PlayAudio becomes {"event":"media",...,"media":{"payload":base64}} exactly, then a mark named
    after the position the audio ends at (PROTOCOLS.md 1.4)."""
    dialect = _streaming()
    media, mark = dialect.send(PlayAudio(FRAME, end_position=480))
    assert json.loads(media) == {"event": "media", "streamSid": SID, "media": {"payload": FRAME_B64}}
    assert media == f'{{"event":"media","streamSid":"{SID}","media":{{"payload":"{FRAME_B64}"}}}}'
    assert json.loads(mark) == {"event": "mark", "streamSid": SID, "mark": {"name": "480"}}


def test_outbound_clear_matches_protocols_1_4() -> None:
    """ClearPlayback becomes the documented clear message, nothing more."""
    dialect = _streaming()
    assert [json.loads(text) for text in dialect.send(ClearPlayback())] == [
        {"event": "clear", "streamSid": SID}
    ]


def test_mark_echo_round_trips_the_position() -> None:
    """Twilio's echo of the mark the dialect sent comes back as PlayedTo of the same position."""
    dialect = _streaming()
    _, mark = dialect.send(PlayAudio(FRAME, end_position=123456))
    echo = json.loads(mark) | {"sequenceNumber": "5"}
    assert dialect.receive_text(json.dumps(echo)) == PlayedTo(123456)


def test_send_before_start_is_a_local_error() -> None:
    """Sending before start is our bug: LocalProtocolError (a ProtocolError and GatewayError)."""
    dialect = TwilioDialect()
    dialect.receive_text(json.dumps(CONNECTED))
    assert not dialect.can_send
    with pytest.raises(LocalProtocolError, match="AWAITING_START"):
        dialect.send(PlayAudio(FRAME, 160))
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(ProtocolError, GatewayError)


def test_send_after_stop_is_a_local_error() -> None:
    """After stop there is no stream to send to; can_send turns false and send raises."""
    dialect = _streaming()
    assert dialect.can_send
    dialect.receive_text(json.dumps(STOP))
    assert not dialect.can_send
    with pytest.raises(LocalProtocolError, match="STOPPED"):
        dialect.send(ClearPlayback())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
event_names = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "clear", ""])
messages = st.one_of(
    json_values,
    st.fixed_dictionaries({"event": event_names}, optional={"streamSid": json_values, "media": json_values}),
    st.fixed_dictionaries(
        {
            "event": st.just("start"),
            "start": st.dictionaries(st.sampled_from(list(_start()["start"])), json_values),
        }
    ),
)


@settings(max_examples=200, deadline=None)
@given(prefix=st.integers(min_value=0, max_value=3), garbage=st.lists(messages, max_size=6))
def test_arbitrary_json_never_raises(prefix: int, garbage: list[Any]) -> None:
    """Any sequence of JSON values, in any state, yields events and never an exception."""
    dialect = TwilioDialect()
    for message in [CONNECTED, _start(), _media(2, 1, 0)][:prefix] + garbage:
        event = dialect.receive_text(json.dumps(message))
        assert event is not None
