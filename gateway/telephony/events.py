"""Provider-neutral telephony events (what the caller's side did) and commands (what to send it).

Every dialect (Twilio first; Telnyx, Plivo, ... later) parses its wire format into these events and
serializes these commands into its wire format. The bridge and the barge-in logic see only these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "CallStarted",
    "CallStopped",
    "ClearPlayback",
    "DtmfReceived",
    "MarkPlayed",
    "MediaReceived",
    "ProtocolViolation",
    "SendMark",
    "SendMedia",
    "StreamConnected",
    "TelephonyCommand",
    "TelephonyEvent",
]


@dataclass(frozen=True, slots=True)
class StreamConnected:
    """The provider opened the stream and named its protocol (Twilio's `connected`)."""

    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The stream's metadata arrived; media may follow. `custom_parameters` come from TwiML <Parameter>s."""

    stream_id: str
    call_id: str
    account_id: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True, slots=True)
class MediaReceived:
    """One frame of caller audio, still in the provider's encoding (mu-law bytes for Twilio)."""

    payload: bytes
    timestamp_ms: int
    chunk: int
    track: str = "inbound"


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The provider echoed a mark: audio sent before it has played, or a clear flushed it."""

    name: str


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """The caller pressed a key."""

    digit: str


@dataclass(frozen=True, slots=True)
class CallStopped:
    """The provider ended the stream (the call hung up or was redirected)."""

    reason: str = "stop"


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer sent something unusable. `fatal` says whether the call can no longer go on."""

    reason: str
    fatal: bool = False


TelephonyEvent = (
    StreamConnected
    | CallStarted
    | MediaReceived
    | MarkPlayed
    | DtmfReceived
    | CallStopped
    | ProtocolViolation
)


@dataclass(frozen=True, slots=True)
class SendMedia:
    """Queue bot audio (provider encoding) for playback to the caller."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class SendMark:
    """Ask the provider to echo `name` once everything queued before it has played."""

    name: str


@dataclass(frozen=True, slots=True)
class ClearPlayback:
    """Drop all audio the provider has buffered for the caller (barge-in)."""


TelephonyCommand = SendMedia | SendMark | ClearPlayback
