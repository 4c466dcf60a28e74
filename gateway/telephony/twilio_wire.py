"""Twilio Media Streams messages as JSON text, both directions: one pure function per message, sans-I/O.

What Twilio sends (PROTOCOLS.md 1.3), for the simulated Twilio of the load generator and the capacity
bench: `connected`, `start`, `caller_media`, `mark_echo`, `dtmf`, `stop`. Counters go out as decimal
strings, as Twilio sends them. What the gateway sends Twilio (PROTOCOLS.md 1.4), for
`gateway.telephony.twilio.TwilioDialect`: `bot_media`, `mark`, `clear`. A client that recognises those
by their start instead of parsing them (the load generator does, 50 times a second per call) takes
`bot_media_prefix`/`mark_prefix` and slices the payload or the name out up to `MESSAGE_SUFFIX`.

Every message is compact JSON (no spaces). Functions of one stream take its streamSid already quoted as
a JSON string: call `quote_sid` once per stream, not once per message (the media functions are on the
hot paths of the gateway and of the load generator).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Final, NewType

__all__ = [
    "MESSAGE_SUFFIX",
    "QuotedSid",
    "bot_media",
    "bot_media_prefix",
    "caller_media",
    "clear",
    "connected",
    "dtmf",
    "mark",
    "mark_echo",
    "mark_prefix",
    "quote_sid",
    "start",
    "stop",
]

QuotedSid = NewType("QuotedSid", str)
"""A streamSid as a JSON string literal, quotes included (from `quote_sid`)."""

MESSAGE_SUFFIX: Final = '"}}'
"""How a `bot_media` message ends after its payload, and a `mark` message after its name."""
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# Twilio streams one format only (PROTOCOLS.md 1.3).
_MEDIA_FORMAT: Final = '{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}'


def quote_sid(stream_sid: str) -> QuotedSid:
    """The streamSid as a JSON string (what every per-stream function here takes)."""
    return QuotedSid(encode_basestring(stream_sid))


# -- what Twilio sends --------------------------------------------------------------------------------


def connected() -> str:
    """The `connected` message that opens every stream."""
    return '{"event":"connected","protocol":"Call","version":"1.0.0"}'


def start(
    sid: QuotedSid,
    *,
    call_sid: str,
    account_sid: str,
    custom_parameters: Mapping[str, str],
    sequence: int = 1,
    tracks: Sequence[str] = ("inbound",),
) -> str:
    """The `start` message: the stream's ids, the `<Parameter>`s of the TwiML, mu-law at 8 kHz mono."""
    body = (
        f'"accountSid":{encode_basestring(account_sid)},"streamSid":{sid},'
        f'"callSid":{encode_basestring(call_sid)},"tracks":{_JSON.encode(list(tracks))},'
        f'"customParameters":{_JSON.encode(dict(custom_parameters))},"mediaFormat":{_MEDIA_FORMAT}'
    )
    return f'{{"event":"start","sequenceNumber":"{sequence}","start":{{{body}}},"streamSid":{sid}}}'


def caller_media(
    sid: QuotedSid, payload: str, *, sequence: int, chunk: int, timestamp_ms: int, track: str = "inbound"
) -> str:
    """A `media` message of caller audio; `payload` is the base64 of the mu-law bytes."""
    return (
        f'{{"event":"media","sequenceNumber":"{sequence}","media":{{"track":"{track}",'
        f'"chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":"{payload}"}},"streamSid":{sid}}}'
    )


def mark_echo(sid: QuotedSid, name: str, *, sequence: int) -> str:
    """Twilio's echo of the gateway's mark `name`: its audio has played (or a clear flushed it)."""
    return (
        f'{{"event":"mark","sequenceNumber":"{sequence}","streamSid":{sid},'
        f'"mark":{{"name":{encode_basestring(name)}}}}}'
    )


def dtmf(sid: QuotedSid, digit: str, *, sequence: int) -> str:
    """A `dtmf` message: the caller pressed `digit`."""
    return (
        f'{{"event":"dtmf","streamSid":{sid},"sequenceNumber":"{sequence}",'
        f'"dtmf":{{"track":"inbound_track","digit":{encode_basestring(digit)}}}}}'
    )


def stop(sid: QuotedSid, *, call_sid: str, account_sid: str, sequence: int) -> str:
    """The `stop` message: the caller hung up (or the stream ended)."""
    return (
        f'{{"event":"stop","sequenceNumber":"{sequence}","stop":{{"accountSid":'
        f'{encode_basestring(account_sid)},"callSid":{encode_basestring(call_sid)}}},"streamSid":{sid}}}'
    )


# -- what the gateway sends Twilio --------------------------------------------------------------------


def bot_media(sid: QuotedSid, payload: str) -> str:
    """A `media` message of bot audio for Twilio to play; `payload` is the base64 of the mu-law bytes."""
    return f'{{"event":"media","streamSid":{sid},"media":{{"payload":"{payload}"}}}}'


def mark(sid: QuotedSid, name: str) -> str:
    """A `mark`: Twilio echoes `name` once the audio sent before it has played (or a clear flushed it)."""
    return f'{{"event":"mark","streamSid":{sid},"mark":{{"name":{encode_basestring(name)}}}}}'


def clear(sid: QuotedSid) -> str:
    """A `clear`: Twilio drops the audio it holds and echoes every mark still waiting."""
    return f'{{"event":"clear","streamSid":{sid}}}'


def bot_media_prefix(sid: QuotedSid) -> str:
    """How every `bot_media` message of this stream starts; its payload follows, then MESSAGE_SUFFIX."""
    return bot_media(sid, "")[: -len(MESSAGE_SUFFIX)]


def mark_prefix(sid: QuotedSid) -> str:
    """How every `mark` message of this stream starts; its (JSON-escaped) name follows, then
    MESSAGE_SUFFIX."""
    return mark(sid, "")[: -len(MESSAGE_SUFFIX)]
