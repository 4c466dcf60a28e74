"""Twilio's messages built in one place: the documented shapes, read back by the gateway's own dialect."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.telephony import twilio_wire as wire
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    StreamConnected,
)
from gateway.telephony.twilio import StreamState, TwilioDialect

SID = "MZ0123456789abcdef0123456789abcdef"
CALL = "CA0123456789abcdef0123456789abcdef"
ACCOUNT = "AC0123456789abcdef0123456789abcdef"
Q = wire.quote_sid(SID)
FRAME = bytes(range(160))
FRAME_B64 = base64.b64encode(FRAME).decode()


def _start(sid: str = SID, **parameters: str) -> str:
    return wire.start(wire.quote_sid(sid), call_sid=CALL, account_sid=ACCOUNT, custom_parameters=parameters)


def test_messages_from_twilio_have_the_documented_shapes() -> None:
    """connected, start, media, dtmf, mark and stop parse to the JSON of PROTOCOLS.md 1.3, counters as
    strings."""
    assert json.loads(wire.connected()) == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert json.loads(_start(tenant="acme")) == {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": ACCOUNT,
            "streamSid": SID,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {"tenant": "acme"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
        "streamSid": SID,
    }
    media = {"track": "inbound", "chunk": "2", "timestamp": "20", "payload": FRAME_B64}
    assert json.loads(wire.caller_media(Q, FRAME_B64, sequence=4, chunk=2, timestamp_ms=20)) == {
        "event": "media",
        "sequenceNumber": "4",
        "media": media,
        "streamSid": SID,
    }
    assert json.loads(wire.dtmf(Q, "5", sequence=5)) == {
        "event": "dtmf",
        "streamSid": SID,
        "sequenceNumber": "5",
        "dtmf": {"track": "inbound_track", "digit": "5"},
    }
    assert json.loads(wire.mark_echo(Q, "480", sequence=6)) == {
        "event": "mark",
        "sequenceNumber": "6",
        "streamSid": SID,
        "mark": {"name": "480"},
    }
    assert json.loads(wire.stop(Q, call_sid=CALL, account_sid=ACCOUNT, sequence=7)) == {
        "event": "stop",
        "sequenceNumber": "7",
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
        "streamSid": SID,
    }


def test_a_call_built_here_is_read_by_the_dialect_as_sent() -> None:
    """A whole call from these functions gives the dialect's events with the same values, no violation."""
    dialect = TwilioDialect()
    texts = [
        wire.connected(),
        _start(From="+15550100"),
        wire.caller_media(Q, FRAME_B64, sequence=2, chunk=1, timestamp_ms=0),
        wire.dtmf(Q, "#", sequence=3),
        wire.mark_echo(Q, "320", sequence=4),
        wire.stop(Q, call_sid=CALL, account_sid=ACCOUNT, sequence=5),
    ]
    assert [dialect.receive_text(text) for text in texts] == [
        StreamConnected(protocol="Call", version="1.0.0"),
        CallStarted(
            stream_id=SID,
            call_id=CALL,
            account_id=ACCOUNT,
            tracks=("inbound",),
            custom_parameters={"From": "+15550100"},
        ),
        MediaReceived(payload=FRAME, timestamp_ms=0, chunk=1, track="inbound"),
        DtmfReceived(digit="#"),
        PlayedTo(position=320),
        CallStopped(),
    ]
    assert dialect.state is StreamState.STOPPED


def test_messages_to_twilio_have_the_documented_shapes() -> None:
    """media, mark and clear parse to the JSON of PROTOCOLS.md 1.4, compact, the streamSid on each."""
    assert json.loads(wire.bot_media(Q, FRAME_B64)) == {
        "event": "media",
        "streamSid": SID,
        "media": {"payload": FRAME_B64},
    }
    assert json.loads(wire.mark(Q, "480")) == {"event": "mark", "streamSid": SID, "mark": {"name": "480"}}
    assert wire.clear(Q) == f'{{"event":"clear","streamSid":"{SID}"}}'
    assert " " not in wire.bot_media(Q, FRAME_B64) + wire.mark(Q, "1")


def test_prefixes_and_suffix_frame_the_payload_and_the_name() -> None:
    """A client that slices between the prefix and MESSAGE_SUFFIX gets back the payload or mark name."""
    media = wire.bot_media(Q, FRAME_B64)
    prefix = wire.bot_media_prefix(Q)
    assert media == prefix + FRAME_B64 + wire.MESSAGE_SUFFIX
    assert media[len(prefix) : -len(wire.MESSAGE_SUFFIX)] == FRAME_B64
    marked = wire.mark(Q, "123456")
    assert marked == wire.mark_prefix(Q) + "123456" + wire.MESSAGE_SUFFIX
    other = wire.quote_sid("MZother")
    assert not wire.bot_media(other, FRAME_B64).startswith(prefix)


def test_the_dialects_output_is_built_here() -> None:
    """What TwilioDialect.send writes is exactly these functions' text for the stream (byte for byte)."""
    dialect = TwilioDialect()
    dialect.receive_text(_start())
    assert dialect.send(PlayAudio(FRAME, end_position=480)) == (
        wire.bot_media(Q, FRAME_B64),
        wire.mark(Q, "480"),
    )
    assert dialect.send(ClearPlayback()) == (wire.clear(Q),)


text = st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(sid=text.filter(bool), call=text, account=text, parameters=st.dictionaries(text, text, max_size=3))
def test_any_ids_and_parameters_survive_escaping(
    sid: str, call: str, account: str, parameters: dict[str, str]
) -> None:
    """Quotes, backslashes, control and non-ASCII characters in any field come back unchanged."""
    quoted = wire.quote_sid(sid)
    assert json.loads(quoted) == sid
    message = json.loads(
        wire.start(quoted, call_sid=call, account_sid=account, custom_parameters=parameters, sequence=9)
    )
    assert message["start"] | {"mediaFormat": None} == {
        "accountSid": account,
        "streamSid": sid,
        "callSid": call,
        "tracks": ["inbound"],
        "customParameters": parameters,
        "mediaFormat": None,
    }
    assert json.loads(wire.mark_echo(quoted, call, sequence=1))["mark"]["name"] == call
    assert json.loads(wire.dtmf(quoted, account, sequence=1))["dtmf"]["digit"] == account
    assert json.loads(wire.stop(quoted, call_sid=call, account_sid=account, sequence=1))["stop"] == {
        "accountSid": account,
        "callSid": call,
    }


@pytest.mark.parametrize("sid", ['MZ"quoted"', "MZ\\back", "MZé\u2028"])
def test_the_dialect_answers_an_odd_stream_sid_in_valid_json(sid: str) -> None:
    """A streamSid that needs escaping is escaped the same way in what Twilio sends and what it gets."""
    dialect = TwilioDialect()
    assert isinstance(dialect.receive_text(_start(sid)), CallStarted)
    (clear,) = dialect.send(ClearPlayback())
    assert json.loads(clear) == {"event": "clear", "streamSid": sid}
