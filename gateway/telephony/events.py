"""Provider-neutral caller-leg events (what the caller's side did) and commands (what to send it).

Every dialect (Twilio first; Telnyx, Plivo, ... later) parses its wire format into these events and
serializes these commands into its wire format. The call core and the bridge see only these types.

Playback confirmation is a position, not a provider's marker: `PlayAudio` carries the position its
audio ends at (in samples at the leg's rate, growing across clears), and a dialect whose provider can
confirm playback (Twilio's marks, Plivo's checkpoints, ...) asks for a confirmation of that position and
turns the provider's answer into `PlayedTo(position)`. Marks never leave the dialects that use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from telcodec import Encoding, WireFormat

MULAW_8K = WireFormat(Encoding.ULAW, 8000)

__all__ = [
    "CallStarted",
    "CallStopped",
    "ClearPlayback",
    "DtmfReceived",
    "MediaReceived",
    "PlayAudio",
    "PlayedTo",
    "PlayoutRule",
    "ProtocolViolation",
    "ProviderNotice",
    "StreamConnected",
    "TelephonyCommand",
    "TelephonyEvent",
]


@dataclass(frozen=True, slots=True)
class PlayoutRule:
    """How a provider wants bot audio cut into messages (a dialect declares it).

    `chunk_ms` overrides PLAYOUT_CHUNK_MS. Every message is a multiple of `multiple_bytes`; with
    `min_bytes`, none is shorter, so audio that does not fill one waits for more of its item, and an
    item's last message is padded with silence. With `max_ahead_ms`, bot audio is held back while that
    much is queued at the provider (whose buffer would overflow); it goes out as playback proceeds.
    """

    chunk_ms: int | None = None
    min_bytes: int = 0
    multiple_bytes: int = 1
    max_ahead_ms: int | None = None  # send no further ahead of playback than this (a bounded buffer)


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
    format: WireFormat = MULAW_8K  # the leg's audio, both ways


@dataclass(frozen=True, slots=True)
class MediaReceived:
    """One frame of caller audio, still in the provider's encoding (mu-law bytes for Twilio)."""

    payload: bytes
    timestamp_ms: int
    chunk: int
    track: str = "inbound"


@dataclass(frozen=True, slots=True)
class PlayedTo:
    """The provider confirmed that bot audio up to `position` has played (or a clear flushed it)."""

    position: int


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


@dataclass(frozen=True, slots=True)
class ProviderNotice:
    """The provider acknowledged something (a clear, ...) that needs no action; `what` names it."""

    what: str


TelephonyEvent = (
    StreamConnected
    | CallStarted
    | MediaReceived
    | PlayedTo
    | DtmfReceived
    | CallStopped
    | ProtocolViolation
    | ProviderNotice
)


@dataclass(frozen=True, slots=True)
class PlayAudio:
    """Queue bot audio (the leg's encoding) for playback; it ends at `end_position` of the playback
    queue, which the dialect asks the provider to confirm where it can."""

    payload: bytes
    end_position: int


@dataclass(frozen=True, slots=True)
class ClearPlayback:
    """Drop all audio the provider has buffered for the caller (barge-in)."""


TelephonyCommand = PlayAudio | ClearPlayback
