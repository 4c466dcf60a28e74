"""SignalWire cXML media streams (bidirectional `<Connect><Stream>`), sans-I/O.

SignalWire's compatibility API speaks Twilio's Media Streams wire (PROTOCOLS.md 2.4): the same
`connected`/`start`/`media`/`dtmf`/`mark`/`stop` messages with `streamSid`, the same `media`/`mark`/
`clear` replies, marks echoed once the audio before them has played (at once when nothing is queued,
and at once for every pending mark on `clear`). So `SignalWireDialect` is Twilio's dialect with
SignalWire's formats: the `<Stream codec>` attribute may ask for `L16@16000h` or `L16@24000h` (and the
SDK types name `PCMA` and `L16`), announced in `start.mediaFormat` as `audio/x-L16` at that rate. The
format is read from every `start` and refused (fatal) when it is not one telcodec carries, mono.

What differs from Twilio, from SignalWire's docs:

* Webhook signatures: `X-SignalWire-Signature` (the legacy `X-Twilio-Signature` is accepted as an
  alias), base64 HMAC-SHA1 over the URL and the sorted form fields exactly as Twilio's, keyed with the
  project's Signing Key (`SIGNALWIRE_SIGNING_KEY`).
* The media upgrade is not signed: the documented upgrade headers are the WebSocket ones plus
  `Authorization: Bearer <authBearerToken>` when the `<Stream>` sets that attribute. The answer sets
  it to `<CallSid>:<stream token>`, and `check_media` requires it (or, should SignalWire ever sign the
  upgrade, a valid signature over the stream URL). The token's expiry is checked at `start`, where the
  bridge reads the clock; here only that we issued it.
* The answer asks for PCMU (no `codec` attribute), SignalWire's default: see `answer` for why.
"""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any, Final

from gateway.errors import LocalProtocolError
from gateway.telephony import twilio
from gateway.telephony.events import (
    CallStarted,
    MediaReceived,
    PlayAudio,
    PlayoutRule,
    ProtocolViolation,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Answer, HttpRequest, Provider, Refusal, TokenIssuer
from gateway.telephony.signature import validate_signature
from gateway.telephony.streamtoken import verify_stream_token
from gateway.telephony.twiml import XML_DECLARATION
from telcodec import Encoding, WireFormat

__all__ = [
    "BEARER_SEPARATOR",
    "ENCODINGS",
    "PROVIDER",
    "SIGNATURE_HEADERS",
    "SignalWireDialect",
    "answer",
    "check_answer",
    "check_media",
    "media_format",
]

# SignalWire's header first; the Twilio name is the documented alias of the compatibility API.
SIGNATURE_HEADERS: Final = ("X-SignalWire-Signature", "X-Twilio-Signature")
# start.mediaFormat.encoding (compared lower-case: the docs write "audio/x-L16") -> telcodec's name.
ENCODINGS: Final[Mapping[str, Encoding]] = {
    "audio/x-mulaw": Encoding.ULAW,
    "audio/x-alaw": Encoding.ALAW,
    "audio/x-l16": Encoding.L16,
}
BEARER_SEPARATOR: Final = ":"  # authBearerToken = CallSid + ":" + stream token (which has no ":")
SIGNALWIRE_PLAYOUT: Final = PlayoutRule()  # SignalWire queues media like Twilio: any size, in order
# What the Twilio dialect is told a start carried, once the real format has been judged here.
_TWILIO_FORMAT: Final = {"encoding": twilio.ENCODING, "sampleRate": twilio.SAMPLE_RATE, "channels": 1}
# A start's expiry is checked by the bridge; at the upgrade only the MAC is (no clock in this module).
_NO_EXPIRY_CHECK: Final = 0.0


def media_format(fmt: object) -> WireFormat:
    """The wire format a `start.mediaFormat` announces; ValueError (its message says what is supported)
    for anything but mono mu-law, A-law or L16 at a rate telcodec carries."""
    if not isinstance(fmt, dict):
        raise ValueError("start.mediaFormat must be an object")
    encoding, rate, channels = fmt.get("encoding"), fmt.get("sampleRate"), fmt.get("channels", 1)
    name = encoding.lower() if isinstance(encoding, str) else ""
    if isinstance(rate, str) and rate.isascii() and rate.isdigit() and len(rate) < 7:
        rate = int(rate)
    elif rate is None and name in ("audio/x-mulaw", "audio/x-alaw"):
        rate = twilio.SAMPLE_RATE  # G.711 has one rate; L16 must say which
    if name not in ENCODINGS or type(rate) is not int or channels not in (1, "1"):
        raise ValueError(
            f"unsupported media format {str(encoding)[:40]!r} at {str(rate)[:12]} Hz with "
            f"{str(channels)[:4]} channel(s); SignalWire streams are mono {', '.join(ENCODINGS)}"
        )
    return WireFormat.of(ENCODINGS[name], rate)  # ValueError names the rates telcodec supports


class SignalWireDialect:
    """One SignalWire stream: Twilio's dialect, judging the announced format itself.

    Before `start` each message is read here: a `start` in a supported format goes on to the Twilio
    dialect as if it were mu-law (Twilio's accepts nothing else), and the `CallStarted` it returns gets
    the real format back. After `start` frames pass straight through; L16 payloads are checked for
    whole samples here, since the Twilio dialect counts one byte per sample.
    """

    __slots__ = ("_call", "_sample_bytes", "_twilio")

    def __init__(self) -> None:
        self._twilio = twilio.TwilioDialect()
        self._call: CallStarted | None = None
        self._sample_bytes = 1

    @property
    def state(self) -> twilio.StreamState:
        """The current state of the stream."""
        return self._twilio.state

    @property
    def call(self) -> CallStarted | None:
        """The `start` metadata, with the announced format, once it has arrived."""
        return self._call

    @property
    def can_send(self) -> bool:
        """True while `send` may be called: after `start` and before `stop`."""
        return self._twilio.can_send

    @property
    def playout(self) -> PlayoutRule:
        """Any size of media message: SignalWire queues them and plays them in order."""
        return SIGNALWIRE_PLAYOUT

    def receive_text(self, text: str) -> TelephonyEvent:
        """Parse one text frame. A `ProtocolViolation` with `fatal=True` means: close the socket."""
        if self._call is None:
            return self._receive_before_start(text)
        event = self._twilio.receive_text(text)
        if isinstance(event, MediaReceived) and len(event.payload) % self._sample_bytes:
            return ProtocolViolation(f"media.payload of {len(event.payload)} bytes is not whole samples")
        return event

    def receive_bytes(self, data: bytes) -> ProtocolViolation:
        """SignalWire never sends binary frames; the caller hands them here and closes the socket."""
        return self._twilio.receive_bytes(data)

    def send(self, command: TelephonyCommand) -> tuple[str, ...]:
        """The frames that carry `command` (Twilio's `media` + `mark`, or `clear`); raises
        LocalProtocolError unless `can_send`, or for audio that is not whole samples (our bug)."""
        if isinstance(command, PlayAudio) and len(command.payload) % self._sample_bytes:
            raise LocalProtocolError(f"media payload of {len(command.payload)} bytes is not whole samples")
        return self._twilio.send(command)

    def _receive_before_start(self, text: str) -> TelephonyEvent:
        try:
            msg = json.loads(text)
        except (ValueError, RecursionError):
            msg = None
        start = msg.get("start") if isinstance(msg, dict) and msg.get("event") == "start" else None
        if not isinstance(start, dict):
            return self._twilio.receive_text(text)  # everything else is judged as Twilio judges it
        try:
            fmt = media_format(start.get("mediaFormat", _TWILIO_FORMAT))
        except ValueError as exc:
            # Decoding another format as the leg's would feed the model noise: refuse the stream.
            return ProtocolViolation(str(exc), fatal=True)
        announced = start.get("mediaFormat", _TWILIO_FORMAT)
        event = self._twilio.receive_text(json.dumps(_with_format(msg, _TWILIO_FORMAT)))
        if isinstance(event, CallStarted):
            event = dataclasses.replace(
                event, encoding=announced["encoding"], sample_rate=fmt.rate, channels=1, format=fmt
            )
            self._call, self._sample_bytes = event, fmt.bytes_per_sample
        return event


def _with_format(msg: Mapping[str, Any], fmt: Mapping[str, Any]) -> dict[str, Any]:
    return {**msg, "start": {**msg["start"], "mediaFormat": dict(fmt)}}


# -- the provider: the voice webhook and the checks ----------------------------------------------------


def answer(
    request: HttpRequest, media_url: str, issue_token: TokenIssuer | None, *, codec: str | None = None
) -> Answer | Refusal:
    """Answer the voice webhook with cXML `<Connect><Stream>` to `media_url` (Twilio's TwiML: the call's
    fields and the stream token as `<Parameter>`s), plus `authBearerToken` when tokens are on.

    `codec=None` asks for PCMU, SignalWire's default. `L16@24000h` is documented and matches the
    realtime session's 24 kHz PCM16 with no resampling, but it cannot serve AUDIO_MODE=g711 (a mu-law
    session) and carries six times the bytes; a PSTN caller's audio is 8 kHz either way.
    """
    answered = twilio.answer(request, media_url, issue_token)
    if isinstance(answered, Refusal):
        return answered
    attributes = {} if codec is None else {"codec": codec}
    if issue_token is not None:
        call_sid = answered.call_id
        attributes["authBearerToken"] = call_sid + BEARER_SEPARATOR + issue_token(call_sid)
    if not attributes:
        return answered
    response = ET.fromstring(answered.body)
    stream = response.find("./Connect/Stream")
    assert stream is not None  # twilio.answer always writes one
    stream.attrib.update(attributes)
    body = XML_DECLARATION + ET.tostring(response, encoding="unicode")
    return dataclasses.replace(answered, body=body)


def _signature(request: HttpRequest) -> str:
    """The request's signature header: SignalWire's, else its Twilio alias (empty if neither)."""
    for name in SIGNATURE_HEADERS:
        value = request.header(name)
        if value:
            return value
    return ""


def check_answer(request: HttpRequest, secret: str) -> str | None:
    """X-SignalWire-Signature (or X-Twilio-Signature) over the webhook URL and its form fields."""
    valid = validate_signature(secret, request.url, request.form, _signature(request))
    return None if valid else "invalid signature"


def _bearer_problem(authorization: str, secret: str) -> str | None:
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return "no bearer token"
    call_sid, separator, token = credentials.strip().rpartition(BEARER_SEPARATOR)
    if not separator or not call_sid:
        return "malformed bearer token"
    if verify_stream_token(secret, call_sid, token, _NO_EXPIRY_CHECK) is not None:
        return "invalid bearer token"
    return None


def check_media(request: HttpRequest, secret: str) -> str | None:
    """The upgrade's `Authorization: Bearer` (the `authBearerToken` the answer set), or a signature over
    the stream URL should SignalWire send one."""
    problem = _bearer_problem(request.header("Authorization") or "", secret)
    if problem is not None and validate_signature(secret, request.url, {}, _signature(request)):
        return None
    return problem


PROVIDER: Final = Provider(
    name="signalwire",
    dialect=SignalWireDialect,
    secret_setting="SIGNALWIRE_SIGNING_KEY",
    answer=answer,
    check_answer=check_answer,
    check_media=check_media,
)
