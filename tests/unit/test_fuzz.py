"""Fuzzing the two decoders that read what peers send: nothing they receive may raise.

The Twilio dialect's own property test feeds random JSON; these add raw text and bytes, and for the
realtime codec events of every known type with fields of random shapes, in both protocols.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.realtime.codec import GA_AUDIO_EVENTS, PREVIEW_AUDIO_EVENTS, RealtimeCodec
from gateway.realtime.events import MalformedEvent
from gateway.realtime.session import Protocol, SessionSettings
from gateway.telephony.events import ProtocolViolation
from gateway.telephony.twilio import TwilioDialect

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=10,
)
REALTIME_TYPES = [
    "session.created",
    "session.updated",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "response.created",
    "response.done",
    "conversation.item.truncated",
    "conversation.item.input_audio_transcription.completed",
    "error",
    *GA_AUDIO_EVENTS,
    *PREVIEW_AUDIO_EVENTS,
]
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
realtime_events = st.builds(
    lambda kind, fields: {"type": kind, **fields},
    st.sampled_from(REALTIME_TYPES),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(protocol=st.sampled_from(list(Protocol)), event=realtime_events)
def test_realtime_decoder_never_raises_on_known_types(protocol: Protocol, event: dict[str, Any]) -> None:
    """Known event types with fields of any shape decode to an event (possibly MalformedEvent)."""
    codec = RealtimeCodec(protocol, SessionSettings())
    assert codec.decode(json.dumps(event)) is not None


@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from(list(Protocol)), raw=st.text(max_size=200) | st.binary(max_size=200))
def test_realtime_decoder_never_raises_on_raw_input(protocol: Protocol, raw: str | bytes) -> None:
    """Arbitrary text or bytes never raise; what is not JSON is a MalformedEvent."""
    codec = RealtimeCodec(protocol, SessionSettings())
    event = codec.decode(raw)
    try:
        json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        assert isinstance(event, MalformedEvent)


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(st.text(max_size=120), max_size=5), data=st.binary(max_size=64))
def test_twilio_dialect_never_raises_on_raw_input(raw: list[str], data: bytes) -> None:
    """Arbitrary text frames and binary frames, in any state, become events, never exceptions."""
    dialect = TwilioDialect()
    for text in raw:
        assert dialect.receive_text(text) is not None
    assert isinstance(dialect.receive_bytes(data), ProtocolViolation)
