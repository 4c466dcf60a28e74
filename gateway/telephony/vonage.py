"""Vonage Voice API WebSockets (an NCCO `connect` to a `websocket` endpoint), sans-I/O.

The answer webhook (`GET` by default, `POST` with a JSON body when the application says so) is answered
with an NCCO that connects the call to `/vonage/media`, asking for 16-bit linear PCM at 24 kHz (the
realtime session's own rate, so nothing is resampled). Vonage opens the WebSocket and its first message
is a text frame `{"event": "websocket:connected", "content-type": "audio/l16;rate=24000", ...}` with the
NCCO's `headers` echoed at the top level: that is the stream's start (`CallStarted`). The call id is the
`uuid` header the answer put there, the format is read from `content-type` every time (L16 at 8, 16 or
24 kHz, mono; anything else is refused), and every other echoed header is a custom parameter, the stream
token included.

After it, caller audio comes as binary frames of raw little-endian PCM16, 20 ms each (`MediaReceived`),
and events as JSON text frames: `websocket:dtmf` (`DtmfReceived`), `websocket:notify` (the answer to our
`notify`: `PlayedTo`) and `websocket:cleared` (the answer to our `clear`, nothing to act on). Bot audio
goes back as binary frames of exactly 20 ms (`playout` asks the core for them; the last one of an item is
padded with silence), each `PlayAudio` followed by `{"action": "notify", "payload": {"mark": "<end>"}}`,
which Vonage echoes once the audio queued before it has played. `ClearPlayback` is `{"action": "clear"}`.
There is no stop message: the call ends when either side closes the socket.

Peer garbage never raises; it comes back as `ProtocolViolation(reason, fatal)`:

* fatal: text that is not a JSON object; anything but `websocket:connected` first; a `websocket:connected`
  that is malformed or announces a format other than L16 mono at 8, 16 or 24 kHz; a second one.
* not fatal (that one message is dropped): a missing or unknown `event` (Vonage may add events); a DTMF
  event without one key; a notify we did not send; an empty binary frame or one of an odd length.

The webhook and the WebSocket upgrade are signed alike (checked when VONAGE_SIGNATURE_SECRET is set):
`Authorization: Bearer <JWT>`, HS256 with the account's signature secret, `iat` in seconds and, over a
body, `payload_hash` (hex SHA-256 of the body). The NCCO asks for the upgrade to carry that JWT
(`"authorization": {"type": "vonage"}`) when the secret is set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from enum import Enum, auto
from typing import Any, Final, assert_never
from urllib.parse import parse_qsl, urlsplit

import jwt

from gateway.errors import LocalProtocolError
from gateway.telephony.dialect import BaseDialect, ViolationError, event_name, is_counter, load_object
from gateway.telephony.events import (
    CallStarted,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    PlayoutRule,
    ProtocolViolation,
    ProviderNotice,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Answer, HttpRequest, Provider, Refusal, TokenIssuer
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from telcodec import Encoding, WireFormat

__all__ = [
    "CALL_ID_HEADER",
    "CLEAR",
    "FORWARDED_CALL_FIELDS",
    "FRAME_MS",
    "ISSUED_AT_TOLERANCE_S",
    "PROVIDER",
    "RATES",
    "REQUESTED_RATE",
    "StreamState",
    "VonageDialect",
    "answer",
    "check_signed",
    "content_type",
    "ncco",
    "notify",
    "verify_signature",
]

FRAME_MS: Final = 20  # Vonage sends 20 ms frames and wants bot audio in frames of exactly 20 ms
# Vonage buffers about 20 s of bot audio sent ahead of playback (1,024 frames); stay well inside it.
MAX_AHEAD_MS: Final = 10_000
RATES: Final = (8000, 16000, 24000)  # the L16 rates a Vonage WebSocket offers
REQUESTED_RATE: Final = 24000  # the realtime session's rate: no resampling either way
ENCODING: Final = "audio/l16"
CALL_ID_HEADER: Final = "uuid"  # the NCCO header that carries the call leg's uuid back to us
# Answer webhook fields echoed in the NCCO's headers, so they come back in websocket:connected.
FORWARDED_CALL_FIELDS: Final = ("uuid", "conversation_uuid", "from", "to")
HEADERS_MAX_BYTES: Final = 512  # Vonage's limit on an endpoint's `headers`, as JSON
ISSUED_AT_TOLERANCE_S: Final = 300  # a signed request's `iat` may be this far from our clock, either way
JWT_ALGORITHM: Final = "HS256"
CLEAR: Final = '{"action":"clear"}'
_NOTIFY: Final = '{"action":"notify","payload":{"mark":"%d"}}'
_DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
_CONNECTED: Final = "websocket:connected"
_AUDIO: Final = "binary audio"  # the input a binary frame is, in the transition table


def content_type(rate: int) -> str:
    """The `content-type` that asks a Vonage WebSocket for L16 at `rate`."""
    return f"{ENCODING};rate={rate}"


def notify(end_position: int) -> str:
    """The `notify` action that Vonage echoes once the audio before it has played."""
    return _NOTIFY % end_position


def _playout(fmt: WireFormat) -> PlayoutRule:
    frame = fmt.frame_bytes(FRAME_MS)
    return PlayoutRule(chunk_ms=FRAME_MS, min_bytes=frame, multiple_bytes=frame, max_ahead_ms=MAX_AHEAD_MS)


class StreamState(Enum):
    """Where the stream is: waiting for `websocket:connected`, or streaming until the socket closes."""

    AWAITING_CONNECTED = auto()
    STREAMING = auto()


_S = StreamState
# Every legal (state, input) pair and the state it leads to; any other pair is a violation.
_TRANSITIONS: Final[Mapping[tuple[StreamState, str], StreamState]] = {
    (_S.AWAITING_CONNECTED, _CONNECTED): _S.STREAMING,
    (_S.STREAMING, _AUDIO): _S.STREAMING,
    (_S.STREAMING, "websocket:dtmf"): _S.STREAMING,
    (_S.STREAMING, "websocket:notify"): _S.STREAMING,
    (_S.STREAMING, "websocket:cleared"): _S.STREAMING,
}


def _rate(value: object) -> int:
    """The rate of an `audio/l16;rate=N` content-type (parameters in any order, case and spacing)."""
    if not isinstance(value, str):
        raise ViolationError("websocket:connected has no string content-type", fatal=True)
    media, *params = value.split(";")
    fields: dict[str, str] = {}
    for param in params:
        key, _, field = param.partition("=")
        fields[key.strip().lower()] = field.strip()
    rate = fields.get("rate", "")
    supported = f"supported are {', '.join(content_type(r) for r in RATES)}, mono"
    if media.strip().lower() != ENCODING or fields.get("channels", "1") != "1" or rate not in map(str, RATES):
        raise ViolationError(f"unsupported content-type {value[:60]!r}: {supported}", fatal=True)
    return int(rate)


def _parameter(value: object) -> str:
    """An echoed header as a custom parameter: strings as they are, other JSON values as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _parse_connected(msg: Mapping[str, Any]) -> CallStarted:
    rate = _rate(msg.get("content-type"))
    params = {key: _parameter(value) for key, value in msg.items() if key not in ("event", "content-type")}
    call_id = params.get(CALL_ID_HEADER, "")
    return CallStarted(
        stream_id=call_id,
        call_id=call_id,
        account_id="",
        tracks=("inbound",),  # the mix of everyone on the call but the WebSocket itself
        custom_parameters=params,
        encoding=ENCODING,
        sample_rate=rate,
        channels=1,
        format=WireFormat(Encoding.L16, rate),
    )


def _parse_dtmf(msg: Mapping[str, Any]) -> DtmfReceived:
    """`{"event": "websocket:dtmf", "digit": "5", "duration": 260}`; `dtmf.digit` is accepted too."""
    nested = msg.get("dtmf")
    digit = msg.get("digit", nested.get("digit") if isinstance(nested, dict) else None)
    if isinstance(digit, int) and not isinstance(digit, bool) and 0 <= digit <= 9:
        digit = str(digit)
    if not isinstance(digit, str) or digit.upper() not in _DTMF_DIGITS:
        raise ViolationError(f"websocket:dtmf without one key: {str(digit)[:20]!r}")
    return DtmfReceived(digit=digit.upper())


def _parse_notify(msg: Mapping[str, Any]) -> PlayedTo:
    """Our notifies carry the playback position they confirm; any other payload is not ours."""
    payload = msg.get("payload")
    mark = payload.get("mark") if isinstance(payload, dict) else None
    if not (isinstance(mark, str) and is_counter(mark)):
        raise ViolationError(f"websocket:notify {str(payload)[:60]!r} is not one the gateway sent")
    return PlayedTo(position=int(mark))


def _acknowledged(msg: Mapping[str, Any]) -> ProviderNotice:
    # Vonage confirms a clear: nothing to act on (the notifies say what played).
    return ProviderNotice(str(msg.get("event")))


_PARSERS: Final[Mapping[str, Callable[[Mapping[str, Any]], TelephonyEvent]]] = {
    _CONNECTED: _parse_connected,
    "websocket:dtmf": _parse_dtmf,
    "websocket:notify": _parse_notify,
    "websocket:cleared": _acknowledged,
}


class VonageDialect(BaseDialect[StreamState]):
    """One Vonage WebSocket's protocol state: feed it every frame, write out what `send` returns.
    `call` is the `websocket:connected` metadata; the socket closing ends the call."""

    __slots__ = ("_format", "_frames", "_samples")

    def __init__(self) -> None:
        super().__init__(StreamState.AWAITING_CONNECTED, StreamState.STREAMING)
        self._format = WireFormat(Encoding.L16, REQUESTED_RATE)  # until websocket:connected says
        self._frames = 0  # caller frames received
        self._samples = 0  # caller samples received, the clock of MediaReceived.timestamp_ms

    @property
    def playout(self) -> PlayoutRule:
        """Frames of exactly 20 ms at the stream's rate, the last one of an item padded with silence."""
        return _playout(self._format)

    def _receive(self, text: str) -> TelephonyEvent:
        msg = load_object(text)
        name = event_name(msg, _PARSERS)
        next_state = self._next(name)
        event = _PARSERS[name](msg)
        self._state = next_state
        if isinstance(event, CallStarted):
            self._call, self._format = event, event.format
        return event

    def receive_bytes(self, data: bytes) -> TelephonyEvent:
        """Parse one binary frame: caller audio, raw PCM16 little-endian at the stream's rate."""
        try:
            self._state = self._next(_AUDIO)
        except ViolationError as violation:
            return ProtocolViolation(reason=violation.reason, fatal=violation.fatal)
        if not data or len(data) % 2:
            return ProtocolViolation(reason=f"audio frame of {len(data)} bytes is not whole PCM16 samples")
        timestamp_ms = self._samples * 1000 // self._format.rate
        self._frames += 1
        self._samples += len(data) // 2
        return MediaReceived(payload=data, timestamp_ms=timestamp_ms, chunk=self._frames)

    def send(self, command: TelephonyCommand) -> tuple[str | bytes, ...]:
        """The frames that carry `command`; raises LocalProtocolError unless `can_send` (our bug). Audio
        must be whole 20 ms frames (the `playout` rule): one binary frame each, then one `notify` named
        after its end position."""
        if self._state is not StreamState.STREAMING:
            raise LocalProtocolError(f"cannot send to a Vonage stream in state {self._state.name}")
        if isinstance(command, PlayAudio):
            frame = self._format.frame_bytes(FRAME_MS)
            audio = command.payload
            if not audio or len(audio) % frame:
                raise LocalProtocolError(f"bot audio of {len(audio)} bytes is not whole {frame}-byte frames")
            frames: list[str | bytes] = [audio[at : at + frame] for at in range(0, len(audio), frame)]
            return (*frames, notify(command.end_position))
        if isinstance(command, ClearPlayback):
            return (CLEAR,)
        assert_never(command)

    def _next(self, name: str) -> StreamState:
        """The state input `name` leads to, or the violation that explains why it is illegal now."""
        next_state = _TRANSITIONS.get((self._state, name))
        if next_state is None:
            if name == _CONNECTED:
                raise ViolationError("second websocket:connected on one stream", fatal=True)
            raise ViolationError(f"{name} before websocket:connected", fatal=True)
        return next_state


# -- the provider: the answer webhook and the signature checks ------------------------------------------


def _webhook_fields(request: HttpRequest) -> Mapping[str, Any]:
    """The answer webhook's fields: a POST's JSON object, else the query string (GET, Vonage's default)."""
    if request.form:
        return request.form
    if request.method == "POST" and request.body:
        try:
            body = json.loads(request.body)
        except (ValueError, RecursionError):
            return {}
        return body if isinstance(body, dict) else {}
    return dict(parse_qsl(urlsplit(request.url).query))


def _headers(fields: Mapping[str, Any], token: str | None) -> dict[str, str]:
    """The NCCO headers: the call's fields and the stream token, within Vonage's 512-byte limit (the
    optional fields are left out, last first, until they fit; the uuid and the token always stay)."""
    headers = {key: str(fields[key]) for key in FORWARDED_CALL_FIELDS if fields.get(key) not in (None, "")}
    if token is not None:
        headers[STREAM_TOKEN_PARAMETER] = token
    optional = [key for key in reversed(FORWARDED_CALL_FIELDS) if key != CALL_ID_HEADER and key in headers]
    while optional and len(json.dumps(headers, separators=(",", ":")).encode()) > HEADERS_MAX_BYTES:
        del headers[optional.pop(0)]
    return headers


def ncco(media_url: str, headers: Mapping[str, str], *, caller: str | None, signed: bool) -> list[Any]:
    """The NCCO that connects the call to the media WebSocket at `media_url`, L16 at REQUESTED_RATE.
    `signed` asks Vonage to sign the upgrade with the same JWT as its webhooks."""
    endpoint: dict[str, Any] = {
        "type": "websocket",
        "uri": media_url,
        "content-type": content_type(REQUESTED_RATE),
        "headers": dict(headers),
    }
    if signed:
        endpoint["authorization"] = {"type": "vonage"}
    action: dict[str, Any] = {"action": "connect", "endpoint": [endpoint]}
    if caller:
        action["from"] = caller
    return [action]


def _caller_number(value: object) -> str | None:
    """The caller's number for the connect action's `from`, when it is one (digits, maybe a leading +)."""
    if isinstance(value, str) and value.lstrip("+").isdigit() and len(value) <= 16:
        return value
    return None


def answer(request: HttpRequest, media_url: str, issue_token: TokenIssuer | None) -> Answer | Refusal:
    """Answer the answer webhook with an NCCO connecting the call to `media_url`; the call's fields and
    the stream token travel as the endpoint's `headers` and come back in `websocket:connected`."""
    fields = _webhook_fields(request)
    call_id = fields.get(CALL_ID_HEADER)
    if not isinstance(call_id, str) or not call_id:
        # Vonage always sends the call's uuid; a request without one is not a call to answer.
        return Refusal(400, "no uuid")
    token = issue_token(call_id) if issue_token is not None else None
    document = ncco(
        media_url,
        _headers(fields, token),
        caller=_caller_number(fields.get("from")),
        signed=issue_token is not None,
    )
    return Answer("application/json", json.dumps(document, separators=(",", ":")), call_id)


def _bearer(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def verify_signature(authorization: str | None, secret: str, body: bytes, now_s: float) -> str | None:
    """None if `authorization` is `Bearer <JWT>` that Vonage signed with `secret` (HS256), issued within
    ISSUED_AT_TOLERANCE_S of `now_s`, unexpired, and, when there is a body, whose `payload_hash` is the
    body's SHA-256; otherwise the reason it is not (never the token or the secret)."""
    token = _bearer(authorization)
    if token is None:
        return "missing bearer token"
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[JWT_ALGORITHM],
            # The times are checked below against `now_s`, not against the library's own clock.
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
        )
    except jwt.InvalidTokenError:
        return "invalid signature"
    issued_at, expires_at = claims.get("iat"), claims.get("exp", now_s)
    if not isinstance(issued_at, int | float) or not isinstance(expires_at, int | float):
        return "signed token without a numeric iat"
    if abs(now_s - issued_at) > ISSUED_AT_TOLERANCE_S or expires_at < now_s - ISSUED_AT_TOLERANCE_S:
        return "signed token expired or not yet valid"
    if body:
        digest = claims.get("payload_hash")
        if not isinstance(digest, str) or not hmac.compare_digest(
            digest.lower(), hashlib.sha256(body).hexdigest()
        ):
            return "payload_hash does not match the body"
    return None


def check_signed(request: HttpRequest, secret: str) -> str | None:
    """The request's signed JWT: the answer webhook's (over its JSON body, when it is a POST), or the
    WebSocket upgrade's, which the NCCO asks Vonage to send when the secret is set."""
    return verify_signature(request.header("authorization"), secret, request.body, request.received_s)


PROVIDER: Final = Provider(
    name="vonage",
    dialect=VonageDialect,
    secret_setting="VONAGE_SIGNATURE_SECRET",
    answer=answer,
    check_answer=check_signed,
    check_media=check_signed,
    answer_methods=("GET", "POST"),
)
