"""The realtime event codec, sans-I/O: server JSON -> typed events, typed commands -> client JSON.

One `RealtimeCodec` per connection, built for the protocol that connection speaks (GA or preview/beta,
chosen from the endpoint, never guessed from the events: PROTOCOLS.md 5.2). Event names follow the
map in PROTOCOLS.md 4.5; a codec accepts only its own protocol's names (an audio delta with the other
protocol's name comes back as `IgnoredEvent`, which makes a protocol mix-up visible in the logs).

`decode` never raises: invalid JSON, wrong field types and bad base64 give `MalformedEvent(reason)`,
well-formed events the gateway does not use give `IgnoredEvent(type)`.

Every client event carries an `event_id` ("evt_1", "evt_2", ...). The service echoes it in `error`
events, and `sent_command(event_id)` tells which command failed (a truncate or a cancel, say). Appends
are numbered too but not remembered: they are 50 a second and carry audio.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, assert_never

from gateway.realtime.events import (
    AppendAudio,
    AudioDelta,
    AudioDone,
    CancelResponse,
    CreateItem,
    CreateResponse,
    ErrorReported,
    FunctionCallRequested,
    FunctionOutput,
    IgnoredEvent,
    InputCommitted,
    ItemTruncated,
    MalformedEvent,
    RealtimeCommand,
    RealtimeEvent,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    TruncateItem,
    UpdateSession,
    UserTranscript,
)
from gateway.realtime.session import Protocol, SessionSettings, session_update

__all__ = ["EVENT_ID_PREFIX", "GA_AUDIO_EVENTS", "PREVIEW_AUDIO_EVENTS", "Protocol", "RealtimeCodec"]

EVENT_ID_PREFIX: Final = "evt_"
REMEMBERED_COMMANDS: Final = 256
_JSON: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# The audio events are the only ones the two protocols name differently (PROTOCOLS.md 4.5).
GA_AUDIO_EVENTS: Final = (
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
)
PREVIEW_AUDIO_EVENTS: Final = (
    "response.audio.delta",
    "response.audio.done",
    "response.audio_transcript.done",
)


class _MalformedError(Exception):
    """Internal: a field is missing or has the wrong type; becomes a MalformedEvent."""


def _str(msg: Mapping[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str):
        raise _MalformedError(f"'{key}' must be a string")
    return value


def _opt_str(msg: Mapping[str, Any], key: str) -> str | None:
    value = msg.get(key)
    if value is not None and not isinstance(value, str):
        raise _MalformedError(f"'{key}' must be a string or null")
    return value


def _int(msg: Mapping[str, Any], key: str) -> int:
    value = msg.get(key)
    if type(value) is not int:
        raise _MalformedError(f"'{key}' must be an integer")
    return value


def _obj(msg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise _MalformedError(f"'{key}' must be an object")
    return value


def _opt_obj(msg: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = msg.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _MalformedError(f"'{key}' must be an object or null")
    return value


def _session_created(msg: Mapping[str, Any]) -> SessionCreated:
    session = _obj(msg, "session")
    expires_at = session.get("expires_at")
    if expires_at is not None and type(expires_at) is not int:
        raise _MalformedError("'expires_at' must be an integer")
    return SessionCreated(session_id=_opt_str(session, "id") or "", expires_at=expires_at)


def _session_updated(msg: Mapping[str, Any]) -> SessionUpdated:
    return SessionUpdated(session=dict(_obj(msg, "session")))


def _speech_started(msg: Mapping[str, Any]) -> SpeechStarted:
    return SpeechStarted(audio_start_ms=_int(msg, "audio_start_ms"), item_id=_str(msg, "item_id"))


def _speech_stopped(msg: Mapping[str, Any]) -> SpeechStopped:
    return SpeechStopped(audio_end_ms=_int(msg, "audio_end_ms"), item_id=_str(msg, "item_id"))


def _committed(msg: Mapping[str, Any]) -> InputCommitted:
    return InputCommitted(item_id=_str(msg, "item_id"))


def _response_created(msg: Mapping[str, Any]) -> ResponseCreated:
    return ResponseCreated(response_id=_str(_obj(msg, "response"), "id"))


def _response_done(msg: Mapping[str, Any]) -> ResponseDone:
    response = _obj(msg, "response")
    details = _opt_obj(response, "status_details")
    reason = _opt_str(details, "reason")
    if reason is None and details.get("error") is not None:
        error = _obj(details, "error")
        reason = _opt_str(error, "code") or _opt_str(error, "type")
    return ResponseDone(response_id=_str(response, "id"), status=_str(response, "status"), reason=reason)


def _audio_delta(msg: Mapping[str, Any]) -> AudioDelta:
    try:
        audio = base64.b64decode(_str(msg, "delta"), validate=True)
    except (binascii.Error, ValueError):
        raise _MalformedError("'delta' is not valid base64") from None
    return AudioDelta(
        response_id=_str(msg, "response_id"),
        item_id=_str(msg, "item_id"),
        content_index=_int(msg, "content_index"),
        audio=audio,
    )


def _audio_done(msg: Mapping[str, Any]) -> AudioDone:
    return AudioDone(response_id=_str(msg, "response_id"), item_id=_str(msg, "item_id"))


def _transcript_done(msg: Mapping[str, Any]) -> TranscriptDone:
    return TranscriptDone(
        response_id=_str(msg, "response_id"), item_id=_str(msg, "item_id"), transcript=_str(msg, "transcript")
    )


def _user_transcript(msg: Mapping[str, Any]) -> UserTranscript:
    return UserTranscript(item_id=_str(msg, "item_id"), transcript=_str(msg, "transcript"))


def _output_item_done(msg: Mapping[str, Any]) -> RealtimeEvent:
    """A finished output item: a completed function call is the gateway's to run; the rest is ignored
    (an interrupted call comes back `incomplete`, and its arguments may be cut: never run it)."""
    item = _obj(msg, "item")
    if item.get("type") != "function_call" or item.get("status", "completed") != "completed":
        return IgnoredEvent("response.output_item.done")
    return FunctionCallRequested(
        response_id=_str(msg, "response_id"),
        item_id=_opt_str(item, "id") or "",
        call_id=_str(item, "call_id"),
        name=_str(item, "name"),
        arguments=_str(item, "arguments"),
    )


def _item_truncated(msg: Mapping[str, Any]) -> ItemTruncated:
    return ItemTruncated(
        item_id=_str(msg, "item_id"),
        content_index=_int(msg, "content_index"),
        audio_end_ms=_int(msg, "audio_end_ms"),
    )


def _error(msg: Mapping[str, Any]) -> ErrorReported:
    error = _obj(msg, "error")
    return ErrorReported(
        code=_opt_str(error, "code"),
        message=_opt_str(error, "message") or "",
        error_type=_opt_str(error, "type"),
        event_id=_opt_str(error, "event_id"),
    )


_Decoder = Callable[[Mapping[str, Any]], RealtimeEvent]
_COMMON: Final[Mapping[str, _Decoder]] = {
    "session.created": _session_created,
    "session.updated": _session_updated,
    "input_audio_buffer.speech_started": _speech_started,
    "input_audio_buffer.speech_stopped": _speech_stopped,
    "input_audio_buffer.committed": _committed,
    "response.created": _response_created,
    "response.done": _response_done,
    "conversation.item.truncated": _item_truncated,
    "response.output_item.done": _output_item_done,
    "conversation.item.input_audio_transcription.completed": _user_transcript,
    "error": _error,
}
_AUDIO: Final = (_audio_delta, _audio_done, _transcript_done)
_DECODERS: Final[Mapping[Protocol, Mapping[str, _Decoder]]] = {
    Protocol.GA: {**_COMMON, **dict(zip(GA_AUDIO_EVENTS, _AUDIO, strict=True))},
    Protocol.PREVIEW: {**_COMMON, **dict(zip(PREVIEW_AUDIO_EVENTS, _AUDIO, strict=True))},
}


class RealtimeCodec:
    """Decode the service's events and encode the gateway's commands for one realtime connection."""

    __slots__ = ("_decoders", "_next_id", "_sent", "protocol", "settings")

    def __init__(self, protocol: Protocol, settings: SessionSettings) -> None:
        self.protocol = protocol
        self.settings = settings
        self._decoders = _DECODERS[protocol]
        self._next_id = 1
        self._sent: OrderedDict[str, RealtimeCommand] = OrderedDict()

    def decode(self, text: str | bytes) -> RealtimeEvent:
        """Turn one server text frame into an event; never raises."""
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            return MalformedEvent("not JSON")
        if not isinstance(msg, dict):
            return MalformedEvent("not a JSON object")
        kind = msg.get("type")
        if not isinstance(kind, str):
            return MalformedEvent("missing or non-string 'type'")
        decoder = self._decoders.get(kind)
        if decoder is None:
            return IgnoredEvent(kind)
        try:
            return decoder(msg)
        except _MalformedError as exc:
            return MalformedEvent(f"{kind[:60]}: {exc}")

    def encode(self, command: RealtimeCommand) -> str:
        """The client event JSON for `command`, with a fresh `event_id`."""
        event_id = f"{EVENT_ID_PREFIX}{self._next_id}"
        self._next_id += 1
        if isinstance(command, AppendAudio):
            # The hot path (50 calls a second per call): no dict, no json.dumps.
            audio = base64.b64encode(command.audio).decode("ascii")
            return f'{{"type":"input_audio_buffer.append","event_id":"{event_id}","audio":"{audio}"}}'
        self._remember(event_id, command)
        return _JSON.encode(self._event(event_id, command))

    def sent_command(self, event_id: str | None) -> RealtimeCommand | None:
        """The command sent with `event_id` (from an `ErrorReported`), if it was recent and not an append."""
        if event_id is None:
            return None
        return self._sent.get(event_id)

    def _remember(self, event_id: str, command: RealtimeCommand) -> None:
        self._sent[event_id] = command
        if len(self._sent) > REMEMBERED_COMMANDS:
            self._sent.popitem(last=False)

    def _message(self, command: CreateItem) -> dict[str, Any]:
        """A message item: user/system text is input_text; assistant text is output_text (GA) or text."""
        if command.role == "assistant":
            kind = "output_text" if self.protocol is Protocol.GA else "text"
        else:
            kind = "input_text"
        content = [{"type": kind, "text": command.text}]
        return {"type": "message", "role": command.role, "content": content}

    def _event(self, event_id: str, command: RealtimeCommand) -> dict[str, Any]:
        head: dict[str, Any] = {"event_id": event_id}
        if isinstance(command, UpdateSession):
            update = session_update(self.protocol, self.settings)
            return {"type": update["type"], **head, "session": update["session"]}
        if isinstance(command, CreateResponse):
            if command.instructions is None:
                return {"type": "response.create", **head}
            return {"type": "response.create", **head, "response": {"instructions": command.instructions}}
        if isinstance(command, CancelResponse):
            if command.response_id is None:
                return {"type": "response.cancel", **head}
            return {"type": "response.cancel", **head, "response_id": command.response_id}
        if isinstance(command, TruncateItem):
            return {
                "type": "conversation.item.truncate",
                **head,
                "item_id": command.item_id,
                "content_index": command.content_index,
                "audio_end_ms": command.audio_end_ms,
            }
        if isinstance(command, CreateItem):
            return {"type": "conversation.item.create", **head, "item": self._message(command)}
        if isinstance(command, FunctionOutput):
            item = {"type": "function_call_output", "call_id": command.call_id, "output": command.output}
            return {"type": "conversation.item.create", **head, "item": item}
        if isinstance(command, AppendAudio):
            raise AssertionError("appends are encoded on the fast path")
        assert_never(command)
