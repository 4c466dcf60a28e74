"""Plivo Audio Streams (a bidirectional `<Stream keepCallAlive="true">`), sans-I/O.

The answer webhook (`POST /plivo/answer`, form fields `CallUUID`, `From`, `To`, `Direction`, ...) is
answered with Plivo XML: `<Stream bidirectional="true" keepCallAlive="true" audioTrack="inbound"
contentType="audio/x-mulaw;rate=8000" extraHeaders="...">wss://<host>/plivo/media</Stream>`. The element
holds the call while the stream runs. `extraHeaders` allows at most 512 bytes of `[A-Za-z0-9]` in its
names and values, so every value the gateway puts there (the call's fields and the stream token) is the
lower-case hex of its UTF-8 bytes: `CallUUID=<hex>,gatewayToken=<hex>,From=<hex>,...`, in that order,
leaving out whatever would not fit. The `start` message hands them back in `extra_headers`
(`"k=v;k=v"`); the dialect decodes them into `CallStarted.custom_parameters`.

`PlivoDialect` turns each text frame into one provider-neutral event and each command into JSON texts.
Inbound: `start` (`start.callId`, `streamId`, `accountId`, `tracks`, `mediaFormat {encoding,
sampleRate}`), `media` (`sequenceNumber` and `media.chunk` are numbers, `media.timestamp` epoch ms),
`dtmf`, `playedStream` (a checkpoint was reached; `played` in older documents) and `clearedAudio`. There
is no `connected` and no `stop`: the stream ends when the socket closes (a `stop` is accepted anyway).
Outbound: `playAudio {media: {contentType, sampleRate, payload}}` and a `checkpoint` named after the
position its audio ends at (`playedStream` comes back as `PlayedTo`), `clearAudio`.

Format: read from `start.mediaFormat` every time. Plivo's default is L16 at 8 kHz; the answer asks for
mu-law. Taken: `audio/x-mulaw` at 8000 Hz, `audio/x-l16` at 8000 or 16000 Hz (little-endian, as
telcodec's L16), mono; anything else is refused (fatal). Bot audio goes back in the stream's format.

Confirmation: Plivo sends `playedStream` only when the audio before the checkpoint actually played, so
after a `clearAudio` the pending checkpoints never come back. `clearedAudio` is Plivo's word that the
clear flushed the queue: it comes back as `PlayedTo(the last position sent before that clear)`, which the
playback tracker counts as a flush, as it does Twilio's echoes of flushed marks.

Peer garbage never raises; it comes back as `ProtocolViolation(reason, fatal)`:

* fatal: text that is not a JSON object; a binary frame; `media`/`dtmf`/`playedStream`/`clearedAudio`
  before `start`; a malformed `start` or one announcing an unsupported format; a second `start`.
* not fatal (that one message is dropped): a missing or unknown `event`; a malformed `media` or `dtmf`;
  a checkpoint name we did not send; a `clearedAudio` with no clear pending; a `streamId` other than the
  one in `start`; anything after `stop`.

Signatures (PLIVO_AUTH_TOKEN): `X-Plivo-Signature-V3` (or `-Ma-V3`, the main account's), one or several
comma-separated base64 HMAC-SHA256s, keyed with the auth token, of the string that plivo-python's
`validate_v3_signature` builds: the URL without its query, then for a POST `?` + the URL's query sorted
(`k=v&k=v`) + `.` (when there was a query) + the POST parameters sorted by name as `namevalue...`, for a
GET `?` + the sorted query (when there is one); then `.` + `X-Plivo-Signature-V3-Nonce`. The media
upgrade is signed as a GET of the stream URL (Plivo's stream SDK validates it so); whether Plivo signs it
with the `wss://` URL as written or with `https://` is not documented, so both are accepted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, assert_never
from urllib.parse import parse_qs, urlparse, urlunparse

from gateway.errors import LocalProtocolError
from gateway.telephony.dialect import (
    TextDialect,
    ViolationError,
    counter_field,
    decode_base64,
    event_name,
    load_object,
    object_field,
    other_stream,
    out_of_order,
    parse_or_fatal_start,
    played_to,
    string_field,
)
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    PlayoutRule,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Answer, HttpRequest, Provider, Refusal, TokenIssuer
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.twilio import StreamState, _parse_dtmf  # the reference dialect's: shared
from gateway.telephony.twiml import XML_DECLARATION
from telcodec import Encoding, WireFormat

__all__ = [
    "CONTENT_TYPE",
    "EXTRA_HEADERS_MAX_BYTES",
    "FORMATS",
    "FORWARDED_CALL_FIELDS",
    "MAIN_ACCOUNT_SIGNATURE_HEADER",
    "NONCE_HEADER",
    "PROVIDER",
    "SIGNATURE_HEADER",
    "PlivoDialect",
    "answer",
    "check_answer",
    "check_media",
    "compute_signature",
    "decode_extra_headers",
    "encode_extra_headers",
    "signed_string",
    "stream_xml",
    "validate_signature",
]

# What the answer asks for; Plivo's default would be audio/x-l16;rate=8000.
CONTENT_TYPE: Final = "audio/x-mulaw;rate=8000"
# The formats a stream may announce in start.mediaFormat, as (encoding, sampleRate).
FORMATS: Final[Mapping[tuple[str, int], WireFormat]] = {
    ("audio/x-mulaw", 8000): WireFormat(Encoding.ULAW, 8000),
    ("audio/x-l16", 8000): WireFormat(Encoding.L16, 8000),
    ("audio/x-l16", 16000): WireFormat(Encoding.L16, 16000),
}
# Answer-webhook fields carried to the stream in extraHeaders after the stream token, while they fit.
FORWARDED_CALL_FIELDS: Final = ("CallUUID", "From", "To", "Direction")
EXTRA_HEADERS_MAX_BYTES: Final = 512
SIGNATURE_HEADER: Final = "X-Plivo-Signature-V3"
MAIN_ACCOUNT_SIGNATURE_HEADER: Final = "X-Plivo-Signature-Ma-V3"
NONCE_HEADER: Final = "X-Plivo-Signature-V3-Nonce"
_CALL_ID_HEADER: Final = "CallUUID"
# The extraHeaders values the gateway writes, hex-encoded (Plivo allows only [A-Za-z0-9] there).
_HEX_ENCODED: Final = frozenset({*FORWARDED_CALL_FIELDS, STREAM_TOKEN_PARAMETER})
_CLEARS_REMEMBERED: Final = 64  # clears awaiting their clearedAudio (a Plivo that never answers: bounded)

_S = StreamState
# Every legal (state, inbound event) pair and the state it leads to. Any other pair is a violation.
_TRANSITIONS: Final[Mapping[tuple[StreamState, str], StreamState]] = {
    (_S.AWAITING_START, "start"): _S.STREAMING,
    (_S.AWAITING_START, "stop"): _S.STOPPED,
    (_S.STREAMING, "media"): _S.STREAMING,
    (_S.STREAMING, "dtmf"): _S.STREAMING,
    (_S.STREAMING, "playedStream"): _S.STREAMING,
    (_S.STREAMING, "played"): _S.STREAMING,
    (_S.STREAMING, "clearedAudio"): _S.STREAMING,
    (_S.STREAMING, "stop"): _S.STOPPED,
}
_KNOWN_EVENTS: Final = frozenset(name for _, name in _TRANSITIONS)


# -- extraHeaders: the only custom parameters a Plivo stream carries ---------------------------------------


def encode_extra_headers(fields: Iterable[tuple[str, str]]) -> str:
    """`name=<hex of the UTF-8 value>,...` in the given order, leaving out any pair that would take the
    attribute past 512 bytes (names must be alphanumeric)."""
    pairs: list[str] = []
    size = -1  # the first pair has no comma before it
    for name, value in fields:
        if not (name.isascii() and name.isalnum()):
            raise ValueError(f"extraHeaders names must be [A-Za-z0-9], got {name!r}")
        pair = f"{name}={value.encode('utf-8').hex()}"
        if size + 1 + len(pair) <= EXTRA_HEADERS_MAX_BYTES:
            pairs.append(pair)
            size += 1 + len(pair)
    return ",".join(pairs)


def _unhex(value: str) -> str:
    try:
        return bytes.fromhex(value).decode("utf-8")
    except ValueError:  # not ours after all: leave it as Plivo sent it
        return value


def decode_extra_headers(text: str) -> dict[str, str]:
    """The `extra_headers` of a `start` (`k=v;k=v`, or comma-separated as written) as a dict; the values
    the gateway hex-encoded are decoded."""
    headers: dict[str, str] = {}
    for item in text.replace(",", ";").split(";"):
        name, sep, value = item.partition("=")
        name = name.strip()
        if sep and name:
            headers[name] = _unhex(value.strip()) if name in _HEX_ENCODED else value.strip()
    return headers


# -- the dialect ----------------------------------------------------------------------------------


def _media_format(start: Mapping[str, Any]) -> tuple[str, int, int, WireFormat]:
    """The stream's own format from `start.mediaFormat`: (encoding, rate, channels, wire format)."""
    fmt = object_field(start, "mediaFormat")
    encoding = string_field(fmt, "encoding", "start.mediaFormat")
    rate = counter_field(fmt, "sampleRate", "start.mediaFormat")
    channels = counter_field(fmt, "channels", "start.mediaFormat") if "channels" in fmt else 1
    wire = FORMATS.get((encoding.lower(), rate))
    if wire is None or channels != 1:
        supported = ", ".join(f"{e} at {r} Hz" for e, r in FORMATS)
        raise ViolationError(
            f"unsupported media format {encoding[:40]} at {rate} Hz with {channels} channel(s); "
            f"the gateway takes {supported}, mono"
        )
    return encoding.lower(), rate, channels, wire


def _parse_start(msg: Mapping[str, Any]) -> CallStarted:
    start = object_field(msg, "start")
    stream_id = string_field(start, "streamId", "start")
    if not stream_id:
        raise ViolationError("start.streamId is empty")
    tracks = start.get("tracks", ["inbound"])
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ViolationError("start.tracks must be a list of strings")
    encoding, rate, channels, wire = _media_format(start)
    params = decode_extra_headers(string_field(msg, "extra_headers", "start", ""))
    # The CallUUID the answer bound the stream token to; Plivo's own callId names the same call.
    call_id = params.get(_CALL_ID_HEADER) or string_field(start, "callId", "start", "")
    if not call_id:
        raise ViolationError("start has neither a CallUUID extra header nor a callId")
    return CallStarted(
        stream_id=stream_id,
        call_id=call_id,
        account_id=string_field(start, "accountId", "start", ""),
        tracks=tuple(tracks),
        custom_parameters=params,
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
        format=wire,
    )


class PlivoDialect(TextDialect[StreamState]):
    """One Plivo audio stream's protocol state: feed it every text frame, send what it returns."""

    __slots__ = ("_clears", "_first_timestamp", "_parsers", "_sent_end", "_sid_json")

    def __init__(self) -> None:
        super().__init__(StreamState.AWAITING_START, StreamState.STREAMING)
        self._sid_json = ""
        self._sent_end = 0  # the end position of the last audio sent
        self._clears: deque[int] = deque(maxlen=_CLEARS_REMEMBERED)  # _sent_end at each clear, unanswered
        self._first_timestamp: int | None = None
        self._parsers: Mapping[str, Callable[[Mapping[str, Any]], TelephonyEvent]] = {
            "start": self._parse_start,
            "media": self._parse_media,
            "dtmf": _parse_dtmf,
            "playedStream": lambda msg: played_to(string_field(msg, "name", "playedStream"), "checkpoint"),
            "played": lambda msg: played_to(string_field(msg, "name", "played"), "checkpoint"),
            "clearedAudio": self._parse_cleared,
            "stop": lambda _msg: CallStopped(),
        }

    @property
    def playout(self) -> PlayoutRule:
        """Any whole number of samples per message: Plivo queues `playAudio` and plays it in order."""
        return PlayoutRule()

    def send(self, command: TelephonyCommand) -> tuple[str, ...]:
        """The frames that carry `command`; raises LocalProtocolError unless `can_send` (our bug). Audio is
        a `playAudio` in the stream's format and a `checkpoint` named after its end position."""
        if self._state is not StreamState.STREAMING or self._call is None:
            raise LocalProtocolError(f"cannot send to a Plivo stream in state {self._state.name}")
        call = self._call
        if isinstance(command, PlayAudio):
            if len(command.payload) % call.format.bytes_per_sample:
                raise LocalProtocolError(
                    f"media payload of {len(command.payload)} bytes is not whole samples"
                )
            self._sent_end = command.end_position
            payload = base64.b64encode(command.payload).decode("ascii")
            return (
                f'{{"event":"playAudio","media":{{"contentType":"{call.encoding}",'
                f'"sampleRate":{call.sample_rate},"payload":"{payload}"}}}}',
                f'{{"event":"checkpoint","streamId":{self._sid_json},"name":"{command.end_position}"}}',
            )
        if isinstance(command, ClearPlayback):
            self._clears.append(self._sent_end)
            return (f'{{"event":"clearAudio","streamId":{self._sid_json}}}',)
        assert_never(command)

    def _receive(self, text: str) -> TelephonyEvent:
        msg = load_object(text)
        name = event_name(msg, _KNOWN_EVENTS)
        next_state = _TRANSITIONS.get((self._state, name))
        if next_state is None:
            raise out_of_order(name, stopped=self._state is StreamState.STOPPED)
        if (elsewhere := other_stream(msg, "streamId", self._call, name)) is not None:
            raise elsewhere
        event = parse_or_fatal_start(self._parsers[name], msg, name)
        self._state = next_state
        return event

    def _parse_start(self, msg: Mapping[str, Any]) -> CallStarted:
        call = _parse_start(msg)
        self._call = call
        self._sid_json = json.dumps(call.stream_id)
        return call

    def _parse_media(self, msg: Mapping[str, Any]) -> MediaReceived:
        assert self._call is not None  # media is legal only once streaming
        media = object_field(msg, "media")
        payload = decode_base64(string_field(media, "payload", "media"), "media.payload")
        if len(payload) % self._call.format.bytes_per_sample:
            raise ViolationError(f"media.payload of {len(payload)} bytes is not a whole number of samples")
        # Plivo's timestamp is epoch ms: made relative to the stream's first frame, as Twilio's is.
        epoch_ms = counter_field(media, "timestamp", "media") if "timestamp" in media else 0
        if self._first_timestamp is None:
            self._first_timestamp = epoch_ms
        return MediaReceived(
            payload=payload,
            timestamp_ms=max(0, epoch_ms - self._first_timestamp),
            chunk=counter_field(media, "chunk", "media") if "chunk" in media else 0,
            track=string_field(media, "track", "media", "inbound"),
        )

    def _parse_cleared(self, _msg: Mapping[str, Any]) -> PlayedTo:
        if not self._clears:
            raise ViolationError("clearedAudio without a clearAudio")
        return PlayedTo(position=self._clears.popleft())


# -- the provider: the answer webhook and the V3 signatures ---------------------------------------------


def stream_xml(media_url: str, extra_headers: str) -> str:
    """The Plivo XML that connects the call to a bidirectional mu-law stream to `media_url`."""
    attributes = {
        "bidirectional": "true",
        "keepCallAlive": "true",
        "audioTrack": "inbound",
        "contentType": CONTENT_TYPE,
    }
    if extra_headers:
        attributes["extraHeaders"] = extra_headers
    response = ET.Element("Response")
    ET.SubElement(response, "Stream", attributes).text = media_url
    return XML_DECLARATION + ET.tostring(response, encoding="unicode")


def answer(request: HttpRequest, media_url: str, issue_token: TokenIssuer | None) -> Answer | Refusal:
    """Answer the answer webhook with a bidirectional `<Stream>` to `media_url`; the call's fields and the
    stream token travel hex-encoded in `extraHeaders` and come back in `start.extra_headers`."""
    call_uuid = request.form.get(_CALL_ID_HEADER)
    if not call_uuid:
        # Plivo always posts the call's fields; an empty or foreign body is not a call to answer.
        return Refusal(400, "no CallUUID")
    fields = [(_CALL_ID_HEADER, call_uuid)]
    if issue_token is not None:
        fields.append((STREAM_TOKEN_PARAMETER, issue_token(call_uuid)))
    fields += [(k, request.form[k]) for k in FORWARDED_CALL_FIELDS[1:] if k in request.form]
    return Answer("text/xml", stream_xml(media_url, encode_extra_headers(fields)), call_uuid)


def _sorted_query(params: Mapping[str, list[str]]) -> str:
    return "&".join(f"{name}={value}" for name in sorted(params) for value in sorted(params[name]))


def signed_string(method: str, url: str, params: Mapping[str, str], nonce: str) -> str:
    """What Plivo signs for a request to `url` with POST `params` (see the module docstring)."""
    parts = urlparse(url)
    base = urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))
    query = parse_qs(parts.query, keep_blank_values=True)
    if method.upper() == "GET":
        merged = {**{k: [v] for k, v in params.items()}, **query}
        base += f"?{_sorted_query(merged)}" if merged else ""
    elif params:
        sorted_query = _sorted_query(query)
        base += f"?{sorted_query}" + ("." if sorted_query else "")
        base += "".join(name + params[name] for name in sorted(params))
    elif query:
        base += f"?{_sorted_query(query)}"
    return f"{base}.{nonce}"


def compute_signature(auth_token: str, method: str, url: str, params: Mapping[str, str], nonce: str) -> str:
    """The `X-Plivo-Signature-V3` Plivo sends for this request."""
    message = signed_string(method, url, params, nonce).encode("utf-8")
    digest = hmac.new(auth_token.encode("utf-8"), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def validate_signature(
    auth_token: str, method: str, urls: Iterable[str], params: Mapping[str, str], nonce: str, header: str
) -> bool:
    """True if any signature in `header` (comma-separated) matches the request at any of `urls`."""
    given = [s.strip().encode("ascii", "replace") for s in header.split(",") if s.strip()]
    expected = [compute_signature(auth_token, method, url, params, nonce).encode("ascii") for url in urls]
    return any(hmac.compare_digest(e, g) for e in expected for g in given)


def _check(
    request: HttpRequest, secret: str, method: str, urls: Iterable[str], params: Mapping[str, str]
) -> str | None:
    nonce = request.header(NONCE_HEADER)
    header = ",".join(
        filter(None, (request.header(SIGNATURE_HEADER), request.header(MAIN_ACCOUNT_SIGNATURE_HEADER)))
    )
    if not nonce or not header:
        return f"missing {SIGNATURE_HEADER} or its nonce"
    return None if validate_signature(secret, method, urls, params, nonce, header) else "invalid signature"


def check_answer(request: HttpRequest, secret: str) -> str | None:
    """X-Plivo-Signature-V3 over the webhook URL and its form fields (a POST)."""
    return _check(request, secret, "POST", (request.url,), request.form)


def check_media(request: HttpRequest, secret: str) -> str | None:
    """X-Plivo-Signature-V3 over the stream URL (a GET), as written (`wss://`) or as `https://`."""
    https = "https://" + request.url.split("://", 1)[-1]
    return _check(request, secret, "GET", (request.url, https), {})


PROVIDER: Final = Provider(
    name="plivo",
    dialect=PlivoDialect,
    secret_setting="PLIVO_AUTH_TOKEN",
    answer=answer,
    check_answer=check_answer,
    check_media=check_media,
)
