"""Telnyx Media Streaming (TeXML `<Connect><Stream>`, bidirectional RTP mode), sans-I/O.

The TeXML voice webhook (`POST /telnyx/answer`, form-encoded like Twilio's: `CallSid`, `From`, `To`,
...) is answered with `<Connect><Stream>`, which holds the call while the stream runs, asking for PCMU at
8 kHz both ways (`codec`, `bidirectionalMode="rtp"`, `bidirectionalCodec`, `bidirectionalSamplingRate`).
The call's fields and the stream token travel as `<Parameter>`s and come back in
`start.custom_parameters`.

`TelnyxDialect` turns each text frame Telnyx sends into one provider-neutral event and each command into
the JSON texts to send back. Inbound: `connected`, `start` (`stream_id` at the top level; the call's
`call_control_id`, `custom_parameters` and `media_format {encoding, sample_rate, channels}` under
`start`), `media`, `dtmf`, `mark` (the echo of ours), `error` and `stop`. Outbound: `media`
(`{"media": {"payload"}}`, no stream id), `mark` and `clear`; `clear` makes Telnyx echo the marks still
pending, which the playback tracker recognises as flushes.

Format: read from `start.media_format` every time. PCMU or PCMA at 8000 Hz, mono, is taken (both ways in
that codec); anything else, L16 included (its byte order on this socket is undocumented), is refused
(fatal). In RTP mode a media message may hold 20 ms to 30 s: bot audio goes out in whole 20 ms frames.

The call id is the TeXML `CallSid` the answer forwarded as a parameter (the stream token is bound to it;
Telnyx does not document that `start.call_control_id` equals it), else `start.call_control_id` (a stream
started by Call Control). Telnyx does not guarantee frame order; media is handed on as it arrives (the
caller path does not need `chunk` order, and one 20 ms frame out of place is below what the model hears).

Peer garbage never raises; it comes back as `ProtocolViolation(reason, fatal)`:

* fatal: text that is not a JSON object; a binary frame; `media`/`mark`/`dtmf` before `start`; a `start`
  that is malformed or announces an unsupported format; a second `start`.
* not fatal (that one message is dropped): a missing or unknown `event`; a malformed `media`, `mark` or
  `dtmf`; a mark we did not send; a `stream_id` other than the one in `start`; a duplicate `connected`;
  anything after `stop`; Telnyx's own `error` frame (it says what Telnyx refused of ours).

Signatures: Telnyx signs webhooks with ed25519 (`telnyx-signature-ed25519`, base64, over
`f"{telnyx-timestamp}|{raw body}"`, verified with the account's public key, TELNYX_PUBLIC_KEY); a
request stamped more than the tolerance (5 minutes) before or after it arrived (`HttpRequest.received_s`)
is refused as a replay. The media upgrade is not signed in TeXML, so
the per-call stream token is that route's check.
"""

from __future__ import annotations

import base64
import binascii
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from typing import Any, Final, assert_never

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
    string_field,
)
from gateway.telephony.events import (
    MULAW_8K,
    CallStarted,
    CallStopped,
    ClearPlayback,
    MediaReceived,
    PlayAudio,
    PlayoutRule,
    ProtocolViolation,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Answer, HttpRequest, Provider, Refusal, TokenIssuer
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER
from gateway.telephony.twilio import (  # the reference dialect's message parsers: shared, not copied
    FORWARDED_CALL_FIELDS,
    StreamState,
    _parse_connected,
    _parse_dtmf,
    _parse_mark,
)
from gateway.telephony.twiml import XML_DECLARATION, connect_stream_twiml
from telcodec import Encoding, WireFormat

__all__ = [
    "CODECS",
    "FRAME_MS",
    "PROVIDER",
    "SAMPLE_RATE",
    "SIGNATURE_HEADER",
    "STREAM_ATTRIBUTES",
    "TIMESTAMP_HEADER",
    "TIMESTAMP_TOLERANCE_S",
    "TelnyxDialect",
    "answer",
    "check_answer",
    "texml",
    "verify_signature",
]

SAMPLE_RATE: Final = 8000
FRAME_MS: Final = 20  # an RTP-mode media message holds 20 ms to 30 s: we send whole 20 ms frames
# The codecs a stream may announce in start.media_format, and what telcodec calls them.
CODECS: Final[Mapping[str, Encoding]] = {"PCMU": Encoding.ULAW, "PCMA": Encoding.ALAW}
# What the answer asks for: PCMU both ways (`codec` is the inbound one; Telnyx transcodes PCMA<->PCMU).
STREAM_ATTRIBUTES: Final[Mapping[str, str]] = {
    "track": "inbound_track",
    "codec": "PCMU",
    "bidirectionalMode": "rtp",
    "bidirectionalCodec": "PCMU",
    "bidirectionalSamplingRate": str(SAMPLE_RATE),
}
SIGNATURE_HEADER: Final = "telnyx-signature-ed25519"
TIMESTAMP_HEADER: Final = "telnyx-timestamp"
TIMESTAMP_TOLERANCE_S: Final = 300  # a signed request older (or newer) than this is a replay
_ED25519_KEY_BYTES: Final = 32
_ED25519_SIGNATURE_BYTES: Final = 64
# A DER SubjectPublicKeyInfo for ed25519 is this prefix and the 32 raw key bytes (some tools export it).
_ED25519_SPKI_PREFIX: Final = bytes.fromhex("302a300506032b6570032100")
_CLEAR_JSON: Final = '{"event":"clear"}'
_CALL_ID_PARAMETER: Final = "CallSid"

_S = StreamState
# Every legal (state, inbound event) pair and the state it leads to. Any other pair is a violation.
_TRANSITIONS: Final[Mapping[tuple[StreamState, str], StreamState]] = {
    (_S.AWAITING_CONNECTED, "connected"): _S.AWAITING_START,
    (_S.AWAITING_CONNECTED, "start"): _S.STREAMING,
    (_S.AWAITING_CONNECTED, "stop"): _S.STOPPED,
    (_S.AWAITING_CONNECTED, "error"): _S.AWAITING_CONNECTED,
    (_S.AWAITING_START, "start"): _S.STREAMING,
    (_S.AWAITING_START, "stop"): _S.STOPPED,
    (_S.AWAITING_START, "error"): _S.AWAITING_START,
    (_S.STREAMING, "media"): _S.STREAMING,
    (_S.STREAMING, "mark"): _S.STREAMING,
    (_S.STREAMING, "dtmf"): _S.STREAMING,
    (_S.STREAMING, "error"): _S.STREAMING,
    (_S.STREAMING, "stop"): _S.STOPPED,
}
_KNOWN_EVENTS: Final = frozenset(name for _, name in _TRANSITIONS)


def _custom_parameters(value: object) -> dict[str, str]:
    """`start.custom_parameters`: an object of strings (TeXML `<Parameter>`s), or a list of name/value
    objects (the shape Call Control takes them in)."""
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    if isinstance(value, list) and all(
        isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("value"), str)
        for p in value
    ):
        return {p["name"]: p["value"] for p in value}
    raise ViolationError("start.custom_parameters must map names to strings")


def _media_format(start: Mapping[str, Any]) -> tuple[str, int, int, WireFormat]:
    """The stream's own format from `start.media_format`: (encoding, rate, channels, wire format)."""
    fmt = start.get("media_format")
    if not isinstance(fmt, dict):
        raise ViolationError("start.media_format is missing: the stream's format cannot be known")
    encoding = string_field(fmt, "encoding", "start.media_format")
    rate = counter_field(fmt, "sample_rate", "start.media_format")
    channels = counter_field(fmt, "channels", "start.media_format") if "channels" in fmt else 1
    codec = CODECS.get(encoding.upper())
    if codec is None or rate != SAMPLE_RATE or channels != 1:
        # Decoding anything else as G.711 would feed the model noise: refuse the stream instead.
        raise ViolationError(
            f"unsupported media format {encoding[:40]} at {rate} Hz with {channels} channel(s); the "
            f"gateway takes PCMU or PCMA at {SAMPLE_RATE} Hz, mono (L16's byte order is undocumented)"
        )
    return encoding.upper(), rate, channels, WireFormat(codec, rate)


def _parse_start(msg: Mapping[str, Any]) -> CallStarted:
    stream_id = string_field(msg, "stream_id", "start")
    if not stream_id:
        raise ViolationError("start.stream_id is empty")
    start = object_field(msg, "start")
    params = _custom_parameters(start.get("custom_parameters", {}))
    encoding, rate, channels, wire = _media_format(start)
    call_id = params.get(_CALL_ID_PARAMETER) or string_field(start, "call_control_id", "start", "")
    if not call_id:
        raise ViolationError("start has neither a CallSid parameter nor a call_control_id")
    return CallStarted(
        stream_id=stream_id,
        call_id=call_id,
        account_id=string_field(start, "user_id", "start", ""),
        tracks=("inbound",),
        custom_parameters=params,
        encoding=encoding,
        sample_rate=rate,
        channels=channels,
        format=wire,
    )


def _parse_media(msg: Mapping[str, Any]) -> MediaReceived:
    media = object_field(msg, "media")
    payload = decode_base64(string_field(media, "payload", "media"), "media.payload")
    return MediaReceived(
        payload=payload,
        timestamp_ms=counter_field(media, "timestamp", "media") if "timestamp" in media else 0,
        chunk=counter_field(media, "chunk", "media") if "chunk" in media else 0,
        track=string_field(media, "track", "media", "inbound"),
    )


def _parse_error(msg: Mapping[str, Any]) -> ProtocolViolation:
    """Telnyx refused something we sent; the call goes on. Its body is undocumented: report what is there."""
    body = msg.get("payload", msg.get("error"))
    details = body if isinstance(body, dict) else {"detail": body}
    said = " ".join(str(details[k]) for k in ("code", "title", "detail") if details.get(k) is not None)
    return ProtocolViolation(reason=f"Telnyx reported an error: {said[:200] or 'no details'}")


_PARSERS: Final[Mapping[str, Callable[[Mapping[str, Any]], TelephonyEvent]]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
    "error": _parse_error,
    "stop": lambda _msg: CallStopped(),
}


class TelnyxDialect(TextDialect[StreamState]):
    """One Telnyx media stream's protocol state: feed it every text frame, send what it returns."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(StreamState.AWAITING_CONNECTED, StreamState.STREAMING)

    @property
    def playout(self) -> PlayoutRule:
        """Whole 20 ms frames, at least one per message (RTP mode takes 20 ms to 30 s per message)."""
        frame = (self._call.format if self._call is not None else MULAW_8K).frame_bytes(FRAME_MS)
        return PlayoutRule(min_bytes=frame, multiple_bytes=frame)

    def send(self, command: TelephonyCommand) -> tuple[str, ...]:
        """The frames that carry `command`; raises LocalProtocolError unless `can_send` (our bug). Audio is a
        `media` message and a `mark` named after its end position, which Telnyx echoes once the audio has
        played (or at once, when a `clear` flushes it)."""
        if self._state is not StreamState.STREAMING or self._call is None:
            raise LocalProtocolError(f"cannot send to a Telnyx stream in state {self._state.name}")
        if isinstance(command, PlayAudio):
            if len(command.payload) % self._call.format.bytes_per_sample:
                raise LocalProtocolError(
                    f"media payload of {len(command.payload)} bytes is not whole samples"
                )
            payload = base64.b64encode(command.payload).decode("ascii")
            return (
                f'{{"event":"media","media":{{"payload":"{payload}"}}}}',
                f'{{"event":"mark","mark":{{"name":"{command.end_position}"}}}}',
            )
        if isinstance(command, ClearPlayback):
            return (_CLEAR_JSON,)
        assert_never(command)

    def _receive(self, text: str) -> TelephonyEvent:
        msg = load_object(text)
        name = event_name(msg, _KNOWN_EVENTS)
        next_state = _TRANSITIONS.get((self._state, name))
        if next_state is None:
            raise out_of_order(name, stopped=self._state is StreamState.STOPPED)
        if (elsewhere := other_stream(msg, "stream_id", self._call, name)) is not None:
            raise elsewhere
        event = parse_or_fatal_start(_PARSERS[name], msg, name)
        if isinstance(event, CallStarted):
            self._call = event
        self._state = next_state
        return event


# -- the provider: the TeXML webhook and its signature ------------------------------------------------


def texml(media_url: str, parameters: Mapping[str, str]) -> str:
    """The TeXML document that connects the call to a bidirectional stream to `media_url` (PCMU at 8 kHz
    both ways), the `parameters` as `<Parameter>`s; raises ValueError on a URL Telnyx would refuse."""
    response = ET.fromstring(connect_stream_twiml(media_url, parameters).removeprefix(XML_DECLARATION))
    stream = response.find("./Connect/Stream")
    assert stream is not None  # connect_stream_twiml always writes it
    stream.attrib.update(STREAM_ATTRIBUTES)
    return XML_DECLARATION + ET.tostring(response, encoding="unicode")


def answer(request: HttpRequest, media_url: str, issue_token: TokenIssuer | None) -> Answer | Refusal:
    """Answer the TeXML voice webhook with `<Connect><Stream>` to `media_url`; the call's fields and the
    stream token travel as `<Parameter>`s and come back in `start.custom_parameters`."""
    call_sid = request.form.get(_CALL_ID_PARAMETER)
    if not call_sid:
        # TeXML always posts the call's fields; an empty or foreign body is not a call to answer.
        return Refusal(400, "no CallSid")
    parameters = {k: request.form[k] for k in FORWARDED_CALL_FIELDS if k in request.form}
    if issue_token is not None:
        parameters[STREAM_TOKEN_PARAMETER] = issue_token(call_sid)
    return Answer("text/xml", texml(media_url, parameters), call_sid)


def _public_key(encoded: str) -> Ed25519PublicKey | None:
    """The portal's base64 ed25519 public key (raw 32 bytes, or the DER form some tools export)."""
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) == len(_ED25519_SPKI_PREFIX) + _ED25519_KEY_BYTES and raw.startswith(_ED25519_SPKI_PREFIX):
        raw = raw[len(_ED25519_SPKI_PREFIX) :]
    if len(raw) != _ED25519_KEY_BYTES:
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def verify_signature(
    public_key: str,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    now_s: float,
    tolerance_s: float = TIMESTAMP_TOLERANCE_S,
) -> str | None:
    """None if `signature` (base64 ed25519 over `f"{timestamp}|"` + the raw body) is Telnyx's and
    `timestamp` (Unix seconds) is within `tolerance_s` of `now_s`; otherwise the problem."""
    if not signature or not timestamp:
        return f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER}"
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        return f"malformed {TIMESTAMP_HEADER}"
    key = _public_key(public_key)
    if key is None:
        return "TELNYX_PUBLIC_KEY is not a base64 ed25519 public key"
    try:
        raw = base64.b64decode(signature.strip(), validate=True)
    except (binascii.Error, ValueError):
        return "invalid signature"
    if len(raw) != _ED25519_SIGNATURE_BYTES:
        return "invalid signature"
    try:
        key.verify(raw, timestamp.encode("ascii") + b"|" + body)
    except InvalidSignature:
        return "invalid signature"
    if abs(now_s - int(timestamp)) > tolerance_s:
        return f"{TIMESTAMP_HEADER} is more than {tolerance_s:g} s away (a replay?)"
    return None


def check_answer(request: HttpRequest, secret: str) -> str | None:
    """The webhook's ed25519 signature, checked against TELNYX_PUBLIC_KEY and the time it arrived."""
    signature, timestamp = request.header(SIGNATURE_HEADER), request.header(TIMESTAMP_HEADER)
    return verify_signature(secret, request.body, signature, timestamp, request.received_s)


PROVIDER: Final = Provider(
    name="telnyx",
    dialect=TelnyxDialect,
    secret_setting="TELNYX_PUBLIC_KEY",
    answer=answer,
    check_answer=check_answer,
    # TeXML does not sign the media upgrade: the stream token (checked at `start`) is that route's check,
    # keyed with STREAM_TOKEN_SECRET since the Telnyx setting is a public key.
    check_media=None,
    secret_is_public=True,
)
