"""Azure Communication Services (ACS) Call Automation, sans-I/O: the media dialect, Event Grid and
callback parsing, the answer's plain values, and ACS's JWT checks given the signing keys.

A call reaches the gateway in three steps, each an HTTP exchange the I/O layer (`acs_client.py`) runs:

1. Event Grid posts `Microsoft.Communication.IncomingCall` to `/acs/events` (`parse_event_grid`; the
   subscription's validation handshake is answered with `validation_response`). The gateway answers the
   call with an outbound REST call, Call Automation's `answerCall`, whose values `answer_plan` gives:
   bidirectional media streaming of mixed audio, PCM 24 kHz mono, started at once, to `/acs/media`.
2. Call Automation posts CloudEvents about the call to `/acs/callbacks` (`parse_callbacks`): they are
   logged and counted; the media socket carries the call itself.
3. ACS opens the media WebSocket. Its upgrade request names the call (`x-ms-call-connection-id`), which
   `dialect_for` hands to the `AcsDialect`; the frames are JSON text:

   in:  `{"kind":"AudioMetadata","audioMetadata":{"subscriptionId","encoding":"PCM","sampleRate","channels",
        "length"}}` first, then `{"kind":"AudioData","audioData":{"data":b64,"timestamp","participantRawID",
        "silent"}}` every 20 ms and `{"kind":"DtmfData","dtmfData":{"data":"3"}}`;
   out: `{"Kind":"AudioData","AudioData":{"Data":b64},"StopAudio":null}` and
        `{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}` (barge-in).

The format is taken from `AudioMetadata` every time (24 kHz is asked for; 16 kHz is ACS's default);
anything telcodec cannot carry as mono L16 is refused. ACS has no playback confirmation, so the dialect
never emits `PlayedTo`: the playback tracker's clock model estimates what the caller heard.

Callbacks and the media upgrade carry `Authorization: Bearer <JWT>` signed by ACS (RS256; issuer and
keys from ACS's OpenID configuration; audience: the ACS resource id). `check_jwt` verifies one given the
keys, with the time as an argument; fetching the keys is the I/O layer's job.

Peer garbage never raises: the dialect returns `ProtocolViolation(reason, fatal)`. Fatal: text that is
not a JSON object, `AudioData`/`DtmfData` before `AudioMetadata`, a malformed or unsupported
`AudioMetadata`, a second one announcing another format. Not fatal (dropped): an unknown or missing
`kind`, malformed fields or bad base64 in one message, a repeated identical `AudioMetadata`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any, Final, assert_never
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt

from gateway.errors import LocalProtocolError
from gateway.telephony.dialect import (
    BaseDialect,
    ViolationError,
    decode_base64,
    event_name,
    load_object,
    object_field,
    string_field,
)
from gateway.telephony.events import (
    CallStarted,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayoutRule,
    ProtocolViolation,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import HttpRequest, Provider, Refusal
from telcodec import Encoding, WireFormat

__all__ = [
    "ACS_PLAYOUT",
    "CALLBACKS_PATH",
    "CALL_CONNECTION_HEADER",
    "CORRELATION_HEADER",
    "DEFAULT_OPENID_URL",
    "EVENTS_PATH",
    "INCOMING_CALL_EVENT",
    "MEDIA_PATH",
    "PROVIDER",
    "VALIDATION_EVENT",
    "AcsDialect",
    "AcsOptions",
    "AnswerPlan",
    "CallbackEvent",
    "GridEvent",
    "IncomingCall",
    "JwtRejected",
    "MediaStreaming",
    "OpenIdConfiguration",
    "OtherGridEvent",
    "StreamState",
    "SubscriptionValidation",
    "answer_plan",
    "callback_label",
    "check_jwt",
    "dialect_for",
    "keys_stale",
    "parse_callbacks",
    "parse_connection_string",
    "parse_event_grid",
    "parse_openid_configuration",
    "parse_signing_keys",
    "stop_audio_message",
    "validation_response",
]

EVENTS_PATH: Final = "/acs/events"
CALLBACKS_PATH: Final = "/acs/callbacks"
MEDIA_PATH: Final = "/acs/media"
CALL_CONNECTION_HEADER: Final = "x-ms-call-connection-id"
CORRELATION_HEADER: Final = "x-ms-call-correlation-id"
DEFAULT_OPENID_URL: Final = (
    "https://acscallautomation.communication.azure.com/calling/.well-known/acsopenidconfiguration"
)
JWT_ALGORITHMS: Final = ("RS256",)
JWT_LEEWAY_S: Final = 60  # clock skew allowed on exp/nbf
KEYS_MAX_AGE_S: Final = 24 * 3600  # refetch the signing keys at least this often
KEYS_MIN_REFRESH_S: Final = 60  # an unknown key id refetches them, at most this often
FRAME_MS: Final = 20  # ACS sends one AudioData every 20 ms
MAX_DTMF_CHARS: Final = 16
_GRID_PREFIX: Final = "Microsoft.Communication."
VALIDATION_EVENT: Final = "Microsoft.EventGrid.SubscriptionValidationEvent"
INCOMING_CALL_EVENT: Final = "Microsoft.Communication.IncomingCall"
# Call Automation's callback types (without the prefix) that get their own metric label.
CALLBACK_TYPES: Final = frozenset(
    {
        "CallConnected",
        "CallDisconnected",
        "AnswerFailed",
        "ParticipantsUpdated",
        "MediaStreamingStarted",
        "MediaStreamingStopped",
        "MediaStreamingFailed",
        "PlayCompleted",
        "PlayFailed",
        "PlayCanceled",
        "CallTransferAccepted",
        "CallTransferFailed",
        "RecognizeCompleted",
        "RecognizeFailed",
    }
)
# Call Automation's DtmfTone names, should a DtmfData ever carry one instead of the key itself.
_TONE_NAMES: Final[Mapping[str, str]] = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "asterisk": "*",
    "pound": "#",
}

ACS_PLAYOUT: Final = PlayoutRule(multiple_bytes=2)  # whole PCM16 samples; ACS queues any size


# -- settings as plain values ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AcsOptions:
    """What the ACS side needs of the settings (the app builds it: nothing here reads them).

    `connection_string` (endpoint + access key) or `endpoint` alone (Microsoft Entra ID) reach Call
    Automation; with both, `endpoint` replaces the connection string's. `audience` (the ACS resource id)
    turns the JWT checks on; `openid_url` is where ACS publishes its issuer and signing keys.
    """

    connection_string: str | None = field(default=None, repr=False)
    endpoint: str | None = None
    audience: str | None = None
    openid_url: str = DEFAULT_OPENID_URL

    @property
    def configured(self) -> bool:
        """True when calls can be answered (a connection string or an endpoint is set)."""
        return bool(self.connection_string or self.endpoint)


def parse_connection_string(value: str) -> tuple[str, str]:
    """`endpoint=https://X.communication.azure.com/;accesskey=KEY` -> (endpoint URL, key); ValueError
    (naming neither value) when a part is missing or the key is not base64."""
    parts: dict[str, str] = {}
    for element in value.split(";"):
        name, _, part = element.partition("=")
        if name.strip():
            parts[name.strip().lower()] = part.strip()
    endpoint, key = parts.get("endpoint", ""), parts.get("accesskey", "")
    if not endpoint or not key:
        raise ValueError("expected endpoint=https://RESOURCE.communication.azure.com/;accesskey=KEY")
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the accesskey is not base64") from None
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    return endpoint.rstrip("/"), key


# -- the media WebSocket -------------------------------------------------------------------------------


class StreamState(Enum):
    """Where the stream is: waiting for `AudioMetadata`, or streaming (ACS ends it by closing)."""

    AWAITING_METADATA = auto()
    STREAMING = auto()


_S = StreamState
# Every legal (state, kind) pair and the state it leads to. Any other pair is a violation.
_TRANSITIONS: Final[Mapping[tuple[StreamState, str], StreamState]] = {
    (_S.AWAITING_METADATA, "AudioMetadata"): _S.STREAMING,
    (_S.STREAMING, "AudioMetadata"): _S.STREAMING,  # allowed only if it repeats the format
    (_S.STREAMING, "AudioData"): _S.STREAMING,
    (_S.STREAMING, "DtmfData"): _S.STREAMING,
}
_KNOWN_KINDS: Final = frozenset(kind for _, kind in _TRANSITIONS)


def _positive_int(parent: Mapping[str, Any], key: str, where: str) -> int:
    value = parent.get(key)
    if type(value) is not int or value <= 0:
        raise ViolationError(f"{where}.{key} must be a positive integer")
    return value


@dataclass(frozen=True, slots=True)
class _Metadata:
    subscription_id: str
    encoding: str
    format: WireFormat
    frame_bytes: int  # `length`: the bytes of one 20 ms frame


def _parse_metadata(msg: Mapping[str, Any]) -> _Metadata:
    meta = object_field(msg, "audioMetadata", "AudioMetadata")
    encoding = string_field(meta, "encoding", "audioMetadata")
    rate = _positive_int(meta, "sampleRate", "audioMetadata")
    channels = _positive_int(meta, "channels", "audioMetadata") if "channels" in meta else 1
    try:
        if encoding.lower() != "pcm" or channels != 1:
            raise ValueError(encoding)
        fmt = WireFormat(Encoding.L16, rate)
    except ValueError:
        # Decoding anything else as PCM16 mono would feed the model noise: refuse the stream instead.
        raise ViolationError(
            f"unsupported media format {encoding[:40]!r} at {rate} Hz with {channels} channel(s); "
            "an ACS stream must be PCM mono at 16000 or 24000 Hz (Pcm16KMono, Pcm24KMono)"
        ) from None
    length = meta.get("length")
    frame = fmt.frame_bytes(FRAME_MS)
    if type(length) is int and length > 0 and length % fmt.bytes_per_sample == 0:
        frame = length
    return _Metadata(string_field(meta, "subscriptionId", "audioMetadata", ""), encoding, fmt, frame)


def _parse_dtmf(msg: Mapping[str, Any]) -> DtmfReceived:
    data = string_field(object_field(msg, "dtmfData", "DtmfData"), "data", "dtmfData")
    digit = _TONE_NAMES.get(data.lower(), data)
    if not digit or len(digit) > MAX_DTMF_CHARS:
        raise ViolationError("dtmfData.data must be a key")
    return DtmfReceived(digit=digit)


def _audio_message(payload: str) -> str:
    return f'{{"Kind":"AudioData","AudioData":{{"Data":"{payload}"}},"StopAudio":null}}'


def stop_audio_message() -> str:
    """The StopAudio text frame (ACS drops the audio it has queued for the call)."""
    return '{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}'


class AcsDialect(BaseDialect[StreamState]):
    """One ACS media WebSocket's protocol state: feed it every frame, send what it returns.

    `call_connection_id` and `correlation_id` come from the upgrade request's headers (`dialect_for`):
    ACS's frames do not carry them. The call connection id is `CallStarted.call_id`. `call` is the
    stream's start once `AudioMetadata` has arrived; ACS ends a stream by closing the socket.
    """

    __slots__ = ("_call_connection_id", "_chunks", "_correlation_id", "_meta", "_parties", "_samples")

    def __init__(
        self, call_connection_id: str = "", correlation_id: str = "", parties: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(StreamState.AWAITING_METADATA, StreamState.STREAMING)
        self._call_connection_id = call_connection_id
        self._correlation_id = correlation_id
        self._parties = dict(parties or {})  # From/To, as the answer put them in the stream's URL
        self._meta: _Metadata | None = None
        self._samples = 0  # caller samples received so far: the MediaReceived clock
        self._chunks = 0

    @property
    def playout(self) -> PlayoutRule:
        """Whole PCM16 samples, any length: ACS queues bot audio and plays it in order."""
        return ACS_PLAYOUT

    def receive_bytes(self, data: bytes) -> TelephonyEvent:
        """A binary frame is taken as the same JSON in UTF-8 (the SDKs' parsers accept both forms)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return ProtocolViolation(reason=f"binary frame of {len(data)} bytes is not UTF-8", fatal=True)
        return self.receive_text(text)

    def send(self, command: TelephonyCommand) -> tuple[str, ...]:
        """The frames for `command`; raises LocalProtocolError unless `can_send` (our bug). Audio gets no
        confirmation: ACS has none."""
        if self._meta is None:
            raise LocalProtocolError(f"cannot send to an ACS stream in state {self._state.name}")
        if isinstance(command, PlayAudio):
            if len(command.payload) % self._meta.format.bytes_per_sample:
                raise LocalProtocolError(f"audio of {len(command.payload)} bytes is not whole PCM16 samples")
            return (_audio_message(base64.b64encode(command.payload).decode("ascii")),)
        if isinstance(command, ClearPlayback):
            return (stop_audio_message(),)
        assert_never(command)

    def _receive(self, text: str) -> TelephonyEvent:
        msg = load_object(text)
        kind = event_name(msg, _KNOWN_KINDS, "kind")
        next_state = _TRANSITIONS.get((self._state, kind))
        if next_state is None:
            raise ViolationError(f"'{kind}' before AudioMetadata", fatal=True)
        event = self._parse(msg, kind)
        self._state = next_state
        return event

    def _parse(self, msg: Mapping[str, Any], kind: str) -> TelephonyEvent:
        if kind == "AudioMetadata":
            return self._parse_metadata(msg)
        if kind == "AudioData":
            return self._parse_audio(msg)
        return _parse_dtmf(msg)

    def _parse_metadata(self, msg: Mapping[str, Any]) -> TelephonyEvent:
        try:
            meta = _parse_metadata(msg)
        except ViolationError as violation:
            raise ViolationError(violation.reason, fatal=True) from None
        if self._meta is not None:
            if meta.format != self._meta.format:
                raise ViolationError(
                    f"AudioMetadata changed the format from {self._meta.format} to {meta.format}", fatal=True
                )
            raise ViolationError("repeated AudioMetadata")
        self._meta = meta
        self._call = CallStarted(
            stream_id=meta.subscription_id or self._call_connection_id,
            call_id=self._call_connection_id,
            account_id="",
            tracks=("inbound",),
            custom_parameters={
                **self._parties,
                **({"correlationId": self._correlation_id} if self._correlation_id else {}),
            },
            encoding=meta.encoding,
            sample_rate=meta.format.rate,
            channels=1,
            format=meta.format,
        )
        return self._call

    def _parse_audio(self, msg: Mapping[str, Any]) -> MediaReceived:
        assert self._meta is not None  # the transition table allows AudioData only after the metadata
        audio = object_field(msg, "audioData", "AudioData")
        silent = audio.get("silent", False) is True
        payload = decode_base64(string_field(audio, "data", "audioData", ""), "audioData.data")
        if not payload:
            if not silent:
                raise ViolationError("audioData without data")
            # A silent frame without samples still takes its 20 ms: keep the caller's clock running.
            payload = bytes(self._meta.frame_bytes)
        width = self._meta.format.bytes_per_sample
        if len(payload) % width:
            raise ViolationError(f"audioData.data of {len(payload)} bytes is not whole PCM16 samples")
        event = MediaReceived(
            payload=payload,
            timestamp_ms=self._samples * 1000 // self._meta.format.rate,
            chunk=self._chunks,
        )
        self._samples += len(payload) // width
        self._chunks += 1
        return event


def dialect_for(request: HttpRequest) -> AcsDialect:
    """A dialect for the stream this upgrade request opens: ACS names the call in its headers, and the
    caller and the dialed number come back in the query our answer put on the stream's URL."""
    query = parse_qs(urlsplit(request.url).query)
    parties = {name: query[key][0] for key, name in (("from", "From"), ("to", "To")) if query.get(key)}
    return AcsDialect(
        call_connection_id=request.header(CALL_CONNECTION_HEADER) or "",
        correlation_id=request.header(CORRELATION_HEADER) or "",
        parties=parties,
    )


def _party(raw_id: str) -> str:
    """A phone number's rawId ("4:+14255550123") as the number; any other identifier as it is."""
    return raw_id[2:] if raw_id.startswith("4:") else raw_id


# -- Event Grid: the incoming call ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscriptionValidation:
    """Event Grid's subscription handshake: reply `validation_response(code)`."""

    code: str


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A call to answer (or leave ringing). `context` is ACS's signed incomingCallContext."""

    context: str
    correlation_id: str
    server_call_id: str
    caller: str  # the `from` identifier's rawId, e.g. "4:+14255550123"
    callee: str


@dataclass(frozen=True, slots=True)
class OtherGridEvent:
    """An event type this route does not act on (counted, acknowledged)."""

    event_type: str


GridEvent = SubscriptionValidation | IncomingCall | OtherGridEvent


def _raw_id(data: Mapping[str, Any], key: str) -> str:
    identifier = data.get(key)
    if isinstance(identifier, dict) and isinstance(identifier.get("rawId"), str):
        return str(identifier["rawId"])
    return ""


def _grid_event(event: Any) -> GridEvent:
    if not isinstance(event, dict):
        raise ValueError("an event is not a JSON object")
    # Event Grid schema names the type `eventType`; a CloudEvents subscription names it `type`.
    event_type = event.get("eventType", event.get("type"))
    data = event.get("data")
    if not isinstance(event_type, str) or not isinstance(data, dict):
        raise ValueError("an event has no eventType or no data object")
    if event_type == VALIDATION_EVENT:
        code = data.get("validationCode")
        if not isinstance(code, str) or not code:
            raise ValueError("SubscriptionValidationEvent without validationCode")
        return SubscriptionValidation(code)
    if event_type != INCOMING_CALL_EVENT:
        return OtherGridEvent(event_type)
    context = data.get("incomingCallContext")
    if not isinstance(context, str) or not context:
        raise ValueError("IncomingCall without incomingCallContext")
    return IncomingCall(
        context=context,
        correlation_id=str(data.get("correlationId") or ""),
        server_call_id=str(data.get("serverCallId") or ""),
        caller=_raw_id(data, "from"),
        callee=_raw_id(data, "to"),
    )


def _json_events(body: bytes) -> list[Any] | Refusal:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return Refusal(400, "body is not JSON")
    events = doc if isinstance(doc, list) else [doc]
    if not events:
        return Refusal(400, "no events")
    return events


def parse_event_grid(body: bytes) -> tuple[GridEvent, ...] | Refusal:
    """The events of one Event Grid delivery (a JSON array, or one event), or why it is unusable."""
    events = _json_events(body)
    if isinstance(events, Refusal):
        return events
    try:
        return tuple(_grid_event(event) for event in events)
    except ValueError as exc:
        return Refusal(400, str(exc))


def validation_response(code: str) -> dict[str, str]:
    """The JSON body that completes Event Grid's subscription validation."""
    return {"validationResponse": code}


@dataclass(frozen=True, slots=True)
class MediaStreaming:
    """Call Automation's MediaStreamingOptions, with the SDK's keyword names and wire values."""

    transport_url: str
    transport_type: str = "websocket"
    content_type: str = "audio"
    audio_channel_type: str = "mixed"
    start_media_streaming: bool = True
    enable_bidirectional: bool = True
    audio_format: str = "pcm24KMono"  # the realtime API's PCM16 rate: no resampling either way
    enable_dtmf_tones: bool = True


@dataclass(frozen=True, slots=True)
class AnswerPlan:
    """Everything `answerCall` is given for one incoming call."""

    incoming_call_context: str
    callback_url: str
    media_streaming: MediaStreaming
    operation_context: str


def answer_plan(call: IncomingCall, public_base: str) -> AnswerPlan:
    """Answer with callbacks to `public_base` + /acs/callbacks and the media stream to wss://<public
    host>/acs/media (ACS connects to nothing but wss), whose query names the dialed number and the
    caller (`?to=...&from=...`: the stream's upgrade carries only call ids, and a bot profile is picked
    by number)."""
    host = public_base.split("://", 1)[-1].rstrip("/")
    parties = {key: _party(raw) for key, raw in (("to", call.callee), ("from", call.caller)) if raw}
    query = f"?{urlencode(parties)}" if parties else ""
    return AnswerPlan(
        incoming_call_context=call.context,
        callback_url=public_base.rstrip("/") + CALLBACKS_PATH,
        media_streaming=MediaStreaming(transport_url=f"wss://{host}{MEDIA_PATH}{query}"),
        operation_context=call.correlation_id or "gateway",
    )


# -- Call Automation's callbacks ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackEvent:
    """One mid-call event: its type without the `Microsoft.Communication.` prefix, the call, and the
    result's message where the event has one (failures say why)."""

    type: str
    call_connection_id: str
    correlation_id: str
    detail: str = ""


def _callback_event(event: Any) -> CallbackEvent:
    if not isinstance(event, dict):
        raise ValueError("an event is not a JSON object")
    event_type, data = event.get("type"), event.get("data")
    if not isinstance(event_type, str) or not isinstance(data, dict):
        raise ValueError("an event has no type or no data object")
    result = data.get("resultInformation")
    detail = ""
    if isinstance(result, dict):
        detail = " ".join(str(result[k]) for k in ("code", "subCode", "message") if k in result)
    return CallbackEvent(
        type=event_type.removeprefix(_GRID_PREFIX),
        call_connection_id=str(data.get("callConnectionId") or ""),
        correlation_id=str(data.get("correlationId") or ""),
        detail=detail[:300],
    )


def parse_callbacks(body: bytes) -> tuple[CallbackEvent, ...] | Refusal:
    """The CloudEvents of one callback delivery (a JSON array, or one event), or why it is unusable."""
    events = _json_events(body)
    if isinstance(events, Refusal):
        return events
    try:
        return tuple(_callback_event(event) for event in events)
    except ValueError as exc:
        return Refusal(400, str(exc))


def callback_label(event_type: str) -> str:
    """The metric label for an event type: known types by name, anything else as "other" (bounded)."""
    return event_type if event_type in CALLBACK_TYPES else "other"


# -- ACS's JWTs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenIdConfiguration:
    """The two fields of ACS's OpenID configuration the checks use."""

    issuer: str
    jwks_uri: str


def parse_openid_configuration(body: bytes) -> OpenIdConfiguration:
    """`issuer` and `jwks_uri` of an OpenID configuration document; ValueError if either is missing."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("OpenID configuration is not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("OpenID configuration is not a JSON object")
    issuer, jwks_uri = doc.get("issuer"), doc.get("jwks_uri")
    if not isinstance(issuer, str) or not issuer or not isinstance(jwks_uri, str) or not jwks_uri:
        raise ValueError("OpenID configuration lacks issuer or jwks_uri")
    return OpenIdConfiguration(issuer, jwks_uri)


def parse_signing_keys(body: bytes) -> dict[str, jwt.PyJWK]:
    """The usable keys of a JWKS document by key id ("" for a key without one); ValueError if none."""
    try:
        doc = json.loads(body)
        keys = jwt.PyJWKSet.from_dict(doc).keys
    except (ValueError, RecursionError, jwt.PyJWKSetError, jwt.InvalidKeyError) as exc:
        raise ValueError(f"unusable JWKS: {exc}") from None
    return {key.key_id or "": key for key in keys}


@dataclass(frozen=True, slots=True)
class JwtRejected:
    """Why a request's JWT is refused. `unknown_key`: signed with a key id not in the keys (they may
    have rotated: refetch them, within `keys_stale`'s limit, and check once more)."""

    reason: str
    unknown_key: bool = False


def _bearer(authorization: str | None) -> str | JwtRejected:
    if not authorization:
        return JwtRejected("missing Authorization bearer token")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return JwtRejected("Authorization is not a bearer token")
    return token.strip()


def _times_ok(claims: Mapping[str, Any], now_s: float, leeway_s: float) -> JwtRejected | None:
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        return JwtRejected("token has no exp")
    if now_s > exp + leeway_s:
        return JwtRejected("token expired")
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and now_s + leeway_s < nbf:
        return JwtRejected("token not yet valid")
    return None


def check_jwt(
    authorization: str | None,
    keys: Mapping[str, jwt.PyJWK],
    *,
    issuer: str,
    audience: str,
    now_s: float,
    leeway_s: float = JWT_LEEWAY_S,
) -> dict[str, Any] | JwtRejected:
    """Verify an `Authorization: Bearer` JWT from ACS: RS256 signature by one of `keys`, `iss`, `aud`,
    and exp/nbf against `now_s`. Returns the claims, or why the token is refused."""
    token = _bearer(authorization)
    if isinstance(token, JwtRejected):
        return token
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return JwtRejected("malformed token")
    kid = header.get("kid") or ""
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None and not kid and len(keys) == 1:
        key = next(iter(keys.values()))
    if key is None:
        return JwtRejected("token signed with an unknown key", unknown_key=True)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=list(JWT_ALGORITHMS),
            audience=audience,
            issuer=issuer,
            # Time is an argument here, never a clock read: exp/nbf are checked below.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp"]},
        )
    except jwt.InvalidAudienceError:
        return JwtRejected("token is for another audience")
    except jwt.InvalidIssuerError:
        return JwtRejected("token from another issuer")
    except jwt.InvalidTokenError as exc:
        return JwtRejected(f"invalid token ({type(exc).__name__})")
    problem = _times_ok(claims, now_s, leeway_s)
    return problem if problem is not None else claims


def keys_stale(fetched_at_s: float | None, now_s: float, *, unknown_key: bool = False) -> bool:
    """Whether to (re)fetch the signing keys: never fetched, older than a day, or a token named a key
    we lack and the last fetch is at least a minute old (so garbage tokens cannot drive fetches)."""
    if fetched_at_s is None:
        return True
    age = now_s - fetched_at_s
    return age >= KEYS_MAX_AGE_S or (unknown_key and age >= KEYS_MIN_REFRESH_S)


# -- the provider ------------------------------------------------------------------------------------


PROVIDER: Final = Provider(
    name="acs",
    dialect=AcsDialect,
    # ACS's own per-connection JWT (ACS_AUDIENCE, checked by acs_client before the upgrade) does what the
    # stream token does for the others; there is no shared secret to key a token on under Entra ID.
    secret_setting=None,
    dialect_for=dialect_for,
)
