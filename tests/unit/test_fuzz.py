"""Fuzzing the two decoders that read what peers send: garbage becomes the documented event, never raises.

The Twilio dialect's own property test feeds random JSON; these add raw text and bytes, and for the
realtime codec events of every known type with fields of random shapes, in both protocols. Each result
is checked against what the modules promise: the kind of event, a reason for every malformed one,
fatality only in the documented cases, and a state machine that peer garbage does not move.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import fields
from typing import Any, get_args

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.realtime.codec import GA_AUDIO_EVENTS, PREVIEW_AUDIO_EVENTS, RealtimeCodec
from gateway.realtime.events import (
    AudioDelta,
    AudioDone,
    ErrorReported,
    IgnoredEvent,
    InputCommitted,
    ItemTruncated,
    MalformedEvent,
    RealtimeEvent,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    UserTranscript,
)
from gateway.realtime.session import Protocol, SessionSettings
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    DtmfReceived,
    MediaReceived,
    PlayedTo,
    ProtocolViolation,
    StreamConnected,
    TelephonyEvent,
)
from gateway.telephony.twilio import StreamState, TwilioDialect

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
# Each known type with well-formed fields, and the class it decodes to (audio names: each protocol's own).
AUDIO_FIELDS: list[dict[str, Any]] = [
    {"response_id": "resp_1", "item_id": "item_2", "content_index": 0, "delta": "AAAA"},
    {"response_id": "resp_1", "item_id": "item_2"},
    {"response_id": "resp_1", "item_id": "item_2", "transcript": "Hello."},
]
WELL_FORMED: dict[str, tuple[type, dict[str, Any]]] = {
    "session.created": (SessionCreated, {"session": {"id": "sess_1", "expires_at": 1_700_000_000}}),
    "session.updated": (SessionUpdated, {"session": {"voice": "alloy"}}),
    "input_audio_buffer.speech_started": (SpeechStarted, {"audio_start_ms": 40, "item_id": "item_1"}),
    "input_audio_buffer.speech_stopped": (SpeechStopped, {"audio_end_ms": 900, "item_id": "item_1"}),
    "input_audio_buffer.committed": (InputCommitted, {"item_id": "item_1"}),
    "response.created": (ResponseCreated, {"response": {"id": "resp_1"}}),
    "response.done": (ResponseDone, {"response": {"id": "resp_1", "status": "completed"}}),
    "conversation.item.truncated": (
        ItemTruncated,
        {"item_id": "item_2", "content_index": 0, "audio_end_ms": 500},
    ),
    "conversation.item.input_audio_transcription.completed": (
        UserTranscript,
        {"item_id": "item_1", "transcript": "Hi."},
    ),
    "error": (ErrorReported, {"error": {"code": "bad", "message": "no"}}),
}
AUDIO_CLASSES = (AudioDelta, AudioDone, TranscriptDone)
DECODES_TO: dict[Protocol, dict[str, tuple[type, dict[str, Any]]]] = {
    protocol: {**WELL_FORMED, **dict(zip(names, zip(AUDIO_CLASSES, AUDIO_FIELDS, strict=True), strict=True))}
    for protocol, names in ((Protocol.GA, GA_AUDIO_EVENTS), (Protocol.PREVIEW, PREVIEW_AUDIO_EVENTS))
}
REALTIME_TYPES = [*WELL_FORMED, *GA_AUDIO_EVENTS, *PREVIEW_AUDIO_EVENTS]
REALTIME_EVENT_TYPES = get_args(RealtimeEvent)
FIELDS = [
    "session",
    "response",
    "error",
    "item_id",
    "response_id",
    "audio_start_ms",
    "audio_end_ms",
    "content_index",
    "delta",
    "transcript",
    "expires_at",
    "id",
    "status",
    "code",
    "message",
]
# Replacement values: well-typed ones often enough that a mutated event still decodes now and then.
field_values = (
    st.integers(min_value=0, max_value=10**6)
    | st.text(max_size=12)
    | st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode())
    | st.fixed_dictionaries({"id": st.text(max_size=8), "status": st.text(max_size=8)})
    | json_values
)


@st.composite
def realtime_events(draw: st.DrawFn) -> dict[str, Any]:
    """A known type's well-formed fields (from either protocol's table), some dropped, some replaced."""
    kind = draw(st.sampled_from(REALTIME_TYPES))
    _, base = DECODES_TO[Protocol.GA].get(kind) or DECODES_TO[Protocol.PREVIEW][kind]
    dropped = draw(st.sets(st.sampled_from(sorted(base))))
    replaced = draw(st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=3))
    return {"type": kind, **{k: v for k, v in base.items() if k not in dropped}, **replaced}


@settings(max_examples=600, deadline=None)
@given(protocol=st.sampled_from(list(Protocol)), event=realtime_events())
@example(protocol=Protocol.GA, event={"type": "input_audio_buffer.speech_started"})
@example(protocol=Protocol.GA, event={"type": "response.output_audio.delta", "delta": "!"})
def test_realtime_decoder_gives_its_type_or_a_reasoned_malformed_event(
    protocol: Protocol, event: dict[str, Any]
) -> None:
    """A known type decodes to its own event class carrying the input's values, or to a MalformedEvent
    whose reason names the type and the bad field; the other protocol's audio names are IgnoredEvent."""
    kind = event["type"]
    decoded = RealtimeCodec(protocol, SessionSettings()).decode(json.dumps(event))
    assert isinstance(decoded, REALTIME_EVENT_TYPES)
    if kind not in DECODES_TO[protocol]:
        assert decoded == IgnoredEvent(kind)
        return
    expected, well_formed = DECODES_TO[protocol][kind]
    if isinstance(decoded, MalformedEvent):
        assert event != {"type": kind, **well_formed}
        assert re.fullmatch(rf"{re.escape(kind)}: '\w+' (must be .+|is not valid base64)", decoded.reason)
        return
    assert type(decoded) is expected
    names = {f.name for f in fields(decoded)}
    for key in well_formed.keys() & names:  # top-level fields carried over under their own name
        assert getattr(decoded, key) == event[key], key
    if isinstance(decoded, ResponseCreated | ResponseDone):
        assert decoded.response_id == event["response"]["id"]
    if isinstance(decoded, AudioDelta):
        assert decoded.audio == base64.b64decode(event["delta"])


@pytest.mark.parametrize("protocol", list(Protocol))
def test_every_well_formed_type_decodes_to_its_class(protocol: Protocol) -> None:
    """The untouched templates the fuzzer mutates are valid: each decodes to its class, not Malformed."""
    codec = RealtimeCodec(protocol, SessionSettings())
    for kind, (expected, fields_) in DECODES_TO[protocol].items():
        assert type(codec.decode(json.dumps({"type": kind, **fields_}))) is expected, kind


def _expected_outcome(raw: str | bytes) -> MalformedEvent | None:
    """What the codec promises before looking at the type: not JSON, not an object, no string type."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        return MalformedEvent("not JSON")
    if not isinstance(msg, dict):
        return MalformedEvent("not a JSON object")
    if not isinstance(msg.get("type"), str):
        return MalformedEvent("missing or non-string 'type'")
    return None


raw_frames = st.text(max_size=200) | st.binary(max_size=200) | json_values.map(json.dumps)


@settings(max_examples=400, deadline=None)
@given(protocol=st.sampled_from(list(Protocol)), raw=raw_frames)
@example(protocol=Protocol.GA, raw="[" * 100_000)
@example(protocol=Protocol.GA, raw=b"\xff\xfe\x00")
@example(protocol=Protocol.PREVIEW, raw='{"type": 7}')
@example(protocol=Protocol.GA, raw='{"type": "rate_limits.updated"}')
def test_realtime_decoder_classifies_raw_input(protocol: Protocol, raw: str | bytes) -> None:
    """Not JSON, not an object or no string `type` each give their own MalformedEvent; an object with an
    unknown type is IgnoredEvent of that type; nothing raises."""
    decoded = RealtimeCodec(protocol, SessionSettings()).decode(raw)
    assert isinstance(decoded, REALTIME_EVENT_TYPES)
    expected = _expected_outcome(raw)
    if expected is not None:
        assert decoded == expected
        return
    kind = json.loads(raw)["type"]
    if kind not in DECODES_TO[protocol]:
        assert decoded == IgnoredEvent(kind)


# -- the Twilio dialect ------------------------------------------------------------------------------

SID = "MZ0123456789abcdef0123456789abcdef"
SETUP = [
    '{"event": "connected", "protocol": "Call", "version": "1.0.0"}',
    json.dumps({"event": "start", "start": {"streamSid": SID, "callSid": "CA1"}}),
    json.dumps(
        {"event": "media", "streamSid": SID, "media": {"payload": "/w==", "chunk": "1", "timestamp": "0"}}
    ),
]
# Where each event that is not a violation leaves the stream.
STATE_AFTER: dict[type, StreamState] = {
    StreamConnected: StreamState.AWAITING_START,
    CallStarted: StreamState.STREAMING,
    MediaReceived: StreamState.STREAMING,
    PlayedTo: StreamState.STREAMING,
    DtmfReceived: StreamState.STREAMING,
    CallStopped: StreamState.STOPPED,
}
TELEPHONY_EVENT_TYPES = get_args(TelephonyEvent)


def _documented_fatal(state: StreamState, text: str) -> bool:
    """The module's policy: which garbage in which state ends the call."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return True
    if not isinstance(msg, dict):
        return True
    name = msg.get("event")
    if state is StreamState.STOPPED:
        return False
    if name == "start":  # a malformed start, or a second one
        return True
    return name in ("media", "mark", "dtmf") and state is not StreamState.STREAMING


twilio_frames = (
    st.text(max_size=120)
    | json_values.map(json.dumps)
    | st.fixed_dictionaries(
        {"event": st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "clear"])},
        optional={"streamSid": st.just(SID) | json_values, "media": json_values, "mark": json_values},
    ).map(json.dumps)
)


@settings(max_examples=400, deadline=None)
@given(
    prefix=st.integers(min_value=0, max_value=3),
    raw=st.lists(twilio_frames, max_size=6),
    data=st.binary(max_size=64),
)
@example(prefix=3, raw=["[" * 100_000, '{"event": "start"}', "null"], data=b"")
def test_twilio_dialect_turns_garbage_into_documented_violations(
    prefix: int, raw: list[str], data: bytes
) -> None:
    """In any state, each text frame is an event; a violation is fatal exactly in the documented cases
    and leaves the state as it was; any other event moves the state as the transition table says."""
    dialect = TwilioDialect()
    for text in SETUP[:prefix] + raw:
        before, call_before = dialect.state, dialect.call
        event = dialect.receive_text(text)
        assert isinstance(event, TELEPHONY_EVENT_TYPES)
        if isinstance(event, ProtocolViolation):
            assert event.fatal is _documented_fatal(before, text), (before, text)
            assert event.reason
            assert (dialect.state, dialect.call) == (before, call_before)
        else:
            assert dialect.state is STATE_AFTER[type(event)]
        assert dialect.can_send is (dialect.state is StreamState.STREAMING)
        assert dialect.can_send is (dialect.call is not None and dialect.state is not StreamState.STOPPED)
    state = dialect.state
    violation = dialect.receive_bytes(data)
    assert violation == ProtocolViolation(reason=f"unexpected binary frame ({len(data)} bytes)", fatal=True)
    assert dialect.state is state
