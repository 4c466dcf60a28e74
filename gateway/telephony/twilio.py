"""Twilio Media Streams (bidirectional `<Connect><Stream>`), sans-I/O.

`TwilioDialect` turns each WebSocket text message Twilio sends into one provider-neutral event from
`gateway.telephony.events`, and each command into the JSON texts to send back. It owns no socket: the
caller reads frames, feeds them in, and writes out what `send` returns.

Format: a Twilio stream is G.711 mu-law at 8 kHz, mono; a `start` announcing anything else is refused
(fatal), never decoded as mu-law. Playback is confirmed with marks: `PlayAudio` becomes a `media`
message and a `mark` named after the playback position the audio ends at (decimal digits); Twilio
echoes it once the audio has played, or at once when a `clear` flushes it, and the echo comes back as
`PlayedTo(position)`. Mark names stay inside this module.

Peer garbage never raises: it comes back as `ProtocolViolation(reason, fatal)`. The policy:

* fatal (end the call): text that is not a JSON object; a binary frame; `media`/`mark`/`dtmf` before
  `start` (no streamSid yet, so nothing can be answered); a `start` that is malformed or announces a
  format other than mono mu-law at 8 kHz; a second `start`.
* not fatal (drop that one message and go on): a missing, non-string or unknown `event` (Twilio may add
  events); malformed fields or bad base64 in one `media`; a mark we did not send; a `streamSid` that differs
  from the one in `start`; a duplicate `connected`; anything after `stop` (the call is over anyway).

`connected` may be missing in some providers' replays, so `start` is accepted first. A `stop` before
`start` (the caller hung up during set-up) ends the stream normally.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from enum import Enum, auto
from typing import Any, Final, assert_never

from gateway.errors import LocalProtocolError
from gateway.telephony import twilio_wire
from gateway.telephony.dialect import (
    TextDialect,
    ViolationError,
    counter_field,
    decode_base64,
    event_name,
    load_object,
    object_field,
    out_of_order,
    parse_or_fatal_start,
    played_to,
    string_field,
)
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    PlayoutRule,
    StreamConnected,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Answer, HttpRequest, Provider, Refusal, TokenIssuer
from gateway.telephony.signature import SIGNATURE_HEADER, validate_signature
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.twiml import connect_stream_twiml

__all__ = [
    "BYTES_PER_SAMPLE",
    "ENCODING",
    "FORWARDED_CALL_FIELDS",
    "PROVIDER",
    "SAMPLE_RATE",
    "StreamState",
    "TwilioDialect",
    "answer",
    "check_answer",
    "check_media",
]

SAMPLE_RATE: Final = 8000
ENCODING: Final = "audio/x-mulaw"
# Bytes per sample of each encoding a Media Streams-like peer may announce in start.mediaFormat.
BYTES_PER_SAMPLE: Final[Mapping[str, int]] = {"audio/x-mulaw": 1, "audio/x-alaw": 1, "audio/x-l16": 2}
# Webhook form fields echoed into the stream's customParameters (the bot may use them, logs show them).
FORWARDED_CALL_FIELDS: Final = ("CallSid", "From", "To", "Direction")


TWILIO_PLAYOUT: Final = PlayoutRule()


class StreamState(Enum):
    """Where the stream is in its life: set-up, streaming media, or over."""

    AWAITING_CONNECTED = auto()
    AWAITING_START = auto()
    STREAMING = auto()
    STOPPED = auto()


_S = StreamState
# Every legal (state, inbound event) pair and the state it leads to. Any other pair is a violation.
_TRANSITIONS: Final[Mapping[tuple[StreamState, str], StreamState]] = {
    (_S.AWAITING_CONNECTED, "connected"): _S.AWAITING_START,
    (_S.AWAITING_CONNECTED, "start"): _S.STREAMING,
    (_S.AWAITING_CONNECTED, "stop"): _S.STOPPED,
    (_S.AWAITING_START, "start"): _S.STREAMING,
    (_S.AWAITING_START, "stop"): _S.STOPPED,
    (_S.STREAMING, "media"): _S.STREAMING,
    (_S.STREAMING, "mark"): _S.STREAMING,
    (_S.STREAMING, "dtmf"): _S.STREAMING,
    (_S.STREAMING, "stop"): _S.STOPPED,
}


def _parse_connected(msg: Mapping[str, Any]) -> StreamConnected:
    return StreamConnected(
        protocol=string_field(msg, "protocol", "connected", "Call"),
        version=string_field(msg, "version", "connected", ""),
    )


def _parse_start(msg: Mapping[str, Any]) -> CallStarted:
    start = object_field(msg, "start")
    stream_id = string_field(start, "streamSid", "start")
    if not stream_id:
        raise ViolationError("start.streamSid is empty")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ViolationError("start.tracks must be a list of strings")
    params = start.get("customParameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ViolationError("start.customParameters must map names to strings")
    fmt = start.get("mediaFormat", {})
    if not isinstance(fmt, dict):
        raise ViolationError("start.mediaFormat must be an object")
    encoding = string_field(fmt, "encoding", "start.mediaFormat", ENCODING)
    if encoding not in BYTES_PER_SAMPLE:
        raise ViolationError(f"unsupported encoding {encoding[:40]!r}")
    rate = counter_field(fmt, "sampleRate", "start.mediaFormat") if "sampleRate" in fmt else SAMPLE_RATE
    channels = counter_field(fmt, "channels", "start.mediaFormat") if "channels" in fmt else 1
    if rate == 0 or channels == 0:
        raise ViolationError("start.mediaFormat sampleRate and channels must be positive")
    if (encoding, rate, channels) != (ENCODING, SAMPLE_RATE, 1):
        # Decoding anything else as mono mu-law would feed the model noise: refuse the stream instead.
        raise ViolationError(
            f"unsupported media format {encoding} at {rate} Hz with {channels} channel(s); "
            f"a Twilio stream is {ENCODING} at {SAMPLE_RATE} Hz, mono"
        )
    return CallStarted(
        stream_id=stream_id,
        call_id=string_field(start, "callSid", "start", ""),
        account_id=string_field(start, "accountSid", "start", ""),
        tracks=tuple(tracks),
        custom_parameters=dict(params),
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
    )


def _parse_mark(msg: Mapping[str, Any]) -> PlayedTo:
    """Our marks are named after the playback position they confirm; any other name is not ours."""
    return played_to(string_field(object_field(msg, "mark"), "name", "mark"), "mark")


def _parse_dtmf(msg: Mapping[str, Any]) -> DtmfReceived:
    digit = string_field(object_field(msg, "dtmf"), "digit", "dtmf")
    if not digit:
        raise ViolationError("dtmf.digit is empty")
    return DtmfReceived(digit=digit)


def _parse_stop(msg: Mapping[str, Any]) -> CallStopped:
    return CallStopped()


_KNOWN_EVENTS: Final = frozenset({"connected", "start", "media", "mark", "dtmf", "stop"})
_SIMPLE_PARSERS: Final[Mapping[str, Callable[[Mapping[str, Any]], TelephonyEvent]]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "stop": _parse_stop,
}


class TwilioDialect(TextDialect[StreamState]):
    """One Media Streams connection's protocol state: feed it every text frame, send what it returns."""

    __slots__ = ("_clear_json", "_frame_bytes", "_sid_json")

    def __init__(self) -> None:
        super().__init__(StreamState.AWAITING_CONNECTED, StreamState.STREAMING)
        self._sid_json = twilio_wire.QuotedSid("")
        self._clear_json = ""
        self._frame_bytes = 1

    @property
    def playout(self) -> PlayoutRule:
        """Any size of media message: Twilio queues them and plays them in order."""
        return TWILIO_PLAYOUT

    def send(self, command: TelephonyCommand) -> tuple[str, ...]:
        """Serialize a command into the frames to write, in order; raises LocalProtocolError unless
        `can_send` (that is our bug). Audio is a `media` message and a `mark` named after its end
        position, which Twilio echoes once the audio has played (or at once, when a clear flushes it)."""
        if self._state is not StreamState.STREAMING:
            raise LocalProtocolError(f"cannot send to a Twilio stream in state {self._state.name}")
        if isinstance(command, PlayAudio):
            if len(command.payload) % self._frame_bytes:
                raise LocalProtocolError(
                    f"media payload of {len(command.payload)} bytes is not whole samples"
                )
            payload = base64.b64encode(command.payload).decode("ascii")
            return (
                twilio_wire.bot_media(self._sid_json, payload),
                twilio_wire.mark(self._sid_json, str(command.end_position)),
            )
        if isinstance(command, ClearPlayback):
            return (self._clear_json,)
        assert_never(command)

    def _receive(self, text: str) -> TelephonyEvent:
        msg = load_object(text)
        name = event_name(msg, _KNOWN_EVENTS)
        next_state = _TRANSITIONS.get((self._state, name))
        if next_state is None:
            raise out_of_order(name, stopped=self._state is StreamState.STOPPED)
        if self._state is StreamState.STREAMING:
            self._check_stream_sid(msg, name)
        event = self._parse(msg, name)
        self._state = next_state
        return event

    def _parse(self, msg: Mapping[str, Any], name: str) -> TelephonyEvent:
        if name == "media":
            return self._parse_media(msg)
        event = parse_or_fatal_start(_SIMPLE_PARSERS[name], msg, name)
        if isinstance(event, CallStarted):
            self._begin(event)
        return event

    def _begin(self, call: CallStarted) -> None:
        self._call = call
        self._sid_json = twilio_wire.quote_sid(call.stream_id)
        self._clear_json = twilio_wire.clear(self._sid_json)
        self._frame_bytes = BYTES_PER_SAMPLE[call.encoding] * call.channels

    def _parse_media(self, msg: Mapping[str, Any]) -> MediaReceived:
        media = object_field(msg, "media")
        payload = decode_base64(string_field(media, "payload", "media"), "media.payload")
        if len(payload) % self._frame_bytes:
            raise ViolationError(f"media.payload of {len(payload)} bytes is not a whole number of samples")
        return MediaReceived(
            payload=payload,
            timestamp_ms=counter_field(media, "timestamp", "media"),
            chunk=counter_field(media, "chunk", "media"),
            track=string_field(media, "track", "media", "inbound"),
        )

    def _check_stream_sid(self, msg: Mapping[str, Any], name: str) -> None:
        sid = msg.get("streamSid")
        if sid is not None and (self._call is None or sid != self._call.stream_id):
            raise ViolationError(f"'{name}' for another streamSid")


# -- the provider: the voice webhook and the signature checks ------------------------------------------


def answer(request: HttpRequest, media_url: str, issue_token: TokenIssuer | None) -> Answer | Refusal:
    """Answer the voice webhook with `<Connect><Stream>` to `media_url`; the call's fields and the stream
    token travel as `<Parameter>`s and come back in `start.customParameters`."""
    call_sid = request.form.get("CallSid")
    if not call_sid:
        # Twilio always posts the call's fields; an empty or foreign body is not a call to answer.
        return Refusal(400, "no CallSid")
    parameters = {k: request.form[k] for k in FORWARDED_CALL_FIELDS if k in request.form}
    if issue_token is not None:
        parameters[STREAM_TOKEN_PARAMETER] = issue_token(call_sid)
    return Answer("text/xml", connect_stream_twiml(media_url, parameters), call_sid)


def check_answer(request: HttpRequest, secret: str) -> str | None:
    """X-Twilio-Signature over the webhook URL and its form fields."""
    signature = request.header(SIGNATURE_HEADER) or ""
    return None if validate_signature(secret, request.url, request.form, signature) else "invalid signature"


def check_media(request: HttpRequest, secret: str) -> str | None:
    """X-Twilio-Signature over the stream URL (wss://) with no parameters."""
    signature = request.header(SIGNATURE_HEADER) or ""
    return None if validate_signature(secret, request.url, {}, signature) else "invalid signature"


PROVIDER: Final = Provider(
    name="twilio",
    dialect=TwilioDialect,
    secret_setting="TWILIO_AUTH_TOKEN",
    answer=answer,
    check_answer=check_answer,
    check_media=check_media,
)
