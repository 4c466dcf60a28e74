"""Typed realtime events (what the speech service said) and commands (what to send it).

Protocol-neutral: the GA and preview (beta) dialects in `gateway.realtime.codec` map their own JSON
names onto these types, so the bridge and barge-in logic never see which protocol is in use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AppendAudio",
    "AudioDelta",
    "AudioDone",
    "CancelResponse",
    "CreateItem",
    "CreateResponse",
    "ErrorReported",
    "FunctionCallRequested",
    "FunctionOutput",
    "IgnoredEvent",
    "InputCommitted",
    "ItemTruncated",
    "MalformedEvent",
    "RealtimeCommand",
    "RealtimeEvent",
    "ResponseCreated",
    "ResponseDone",
    "SessionCreated",
    "SessionUpdated",
    "SpeechStarted",
    "SpeechStopped",
    "TranscriptDone",
    "TruncateItem",
    "UpdateSession",
    "UserTranscript",
]


@dataclass(frozen=True, slots=True)
class SessionCreated:
    """The service opened the session; `expires_at` is its hard deadline (epoch seconds), if given."""

    session_id: str
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """The service accepted a session.update; `session` is the effective configuration it reported."""

    session: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Server VAD heard the caller start talking (`audio_start_ms` is on the appended-audio clock)."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Server VAD heard the caller stop talking."""

    audio_end_ms: int
    item_id: str


@dataclass(frozen=True, slots=True)
class InputCommitted:
    """The input audio buffer was committed into a user item."""

    item_id: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """A bot response began."""

    response_id: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    """A piece of bot audio, already base64-decoded, in the session's output format."""

    response_id: str
    item_id: str
    content_index: int
    audio: bytes


@dataclass(frozen=True, slots=True)
class AudioDone:
    """The bot item's audio is complete (also sent when it was cut short)."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    """The full transcript of a bot audio item."""

    response_id: str
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class UserTranscript:
    """The transcript of what the caller said (only with input transcription on)."""

    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class FunctionCallRequested:
    """The model called a function (a completed `function_call` output item): run it, then answer with
    `FunctionOutput` under the same `call_id`. `arguments` is the model's JSON text, unchecked."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """A response ended; `status` is completed, cancelled, failed or incomplete."""

    response_id: str
    status: str
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ItemTruncated:
    """The service confirmed a truncate."""

    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class ErrorReported:
    """An `error` event. The session usually survives it."""

    code: str | None
    message: str
    error_type: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A well-formed event the gateway has no use for (rate limits, item bookkeeping, ...)."""

    type: str


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """The service sent something that is not a valid event; `reason` says why."""

    reason: str


RealtimeEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | ResponseCreated
    | AudioDelta
    | AudioDone
    | TranscriptDone
    | UserTranscript
    | FunctionCallRequested
    | ResponseDone
    | ItemTruncated
    | ErrorReported
    | IgnoredEvent
    | MalformedEvent
)


@dataclass(frozen=True, slots=True)
class UpdateSession:
    """Send session.update built from the gateway's session settings."""


@dataclass(frozen=True, slots=True)
class AppendAudio:
    """Append caller audio (session input format, raw bytes) to the input buffer."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class CreateResponse:
    """Ask for a response now (e.g. the bot's greeting); `instructions` override the session's."""

    instructions: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResponse:
    """Cancel the active response (or the named one)."""

    response_id: str | None = None


@dataclass(frozen=True, slots=True)
class TruncateItem:
    """Cut the bot item's audio (and transcript) at what the caller heard."""

    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True, slots=True)
class CreateItem:
    """Add a text message to the conversation (e.g. replaying context into a new session)."""

    role: str  # "user", "assistant" or "system"
    text: str


@dataclass(frozen=True, slots=True)
class FunctionOutput:
    """A function call's result (`function_call_output` item); `output` is what the model reads."""

    call_id: str
    output: str


RealtimeCommand = (
    UpdateSession | AppendAudio | CreateResponse | CancelResponse | TruncateItem | CreateItem | FunctionOutput
)
