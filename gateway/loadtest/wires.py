"""The provider's side of a media stream, sans-I/O: what each provider sends, and how it reads the gateway.

One `ProviderWire` per stream. The load generator (`gateway.loadtest.client.PhoneCall`) and the capacity
bench's lean client drive a call through it, so the same scenario runs on every provider the gateway
serves (`--provider P`). A wire knows, for its provider (PROTOCOLS.md section 2):

- the upgrade: the media path `/P/media` and any headers the provider sends with it (ACS names the call
  in `x-ms-call-connection-id`);
- what the provider sends: `opening()` (Twilio's `connected` + `start`, Plivo's `start`, Vonage's
  `websocket:connected`, ACS's `AudioMetadata`, ...), `media(frame)` for one frame of caller audio,
  `dtmf(digit)`, `played(name)` (the confirmation that the audio before the gateway's mark, checkpoint or
  notify has played), `flushed()` (what the provider answers a clear with), and `stop()` (hang-up);
- how it reads what the gateway sends: `read(message)` gives `BotAudio`, `PlayedRequest` (confirm
  `name` once the audio queued before it has played), `FLUSH` (drop the queue) or `Strange` (something
  the provider would not accept). `flush_confirms_pending` says whether a clear also confirms the pending
  requests at once (Twilio, SignalWire, Telnyx) or drops them (Plivo, Vonage, Exotel).

The call id (`call_id`) travels where the provider puts its own, so the gateway's `call_summary` and the
realtime session's `x-ms-client-request-id` name the load generator's call. Text frames are `str`,
binary frames `bytes`. Every wire streams 20 ms frames of caller audio (Exotel sends about 100 ms a
message; the gateway takes any size).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from gateway.telephony import twilio_wire
from telcodec import Encoding, WireFormat

__all__ = [
    "FLUSH",
    "PROVIDERS",
    "WIRES",
    "BotAudio",
    "BotMessage",
    "Flush",
    "PlayedRequest",
    "ProviderWire",
    "Strange",
    "WireFrame",
    "make_wire",
    "parse_format",
]

ULAW_8K: Final = WireFormat(Encoding.ULAW, 8000)


@dataclass(frozen=True, slots=True)
class WireFrame:
    """One frame of caller audio in the stream's format: its bytes and their base64 (computed once)."""

    audio: bytes
    payload: str

    @classmethod
    def of(cls, audio: bytes) -> WireFrame:
        """A frame from its bytes."""
        return cls(audio, base64.b64encode(audio).decode("ascii"))


@dataclass(frozen=True, slots=True)
class BotAudio:
    """Bot audio to queue and play (in the stream's format)."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class PlayedRequest:
    """The gateway asks to hear when the audio queued before `name` has played."""

    name: str


@dataclass(frozen=True, slots=True)
class Flush:
    """The gateway's clear: drop the queued audio."""


@dataclass(frozen=True, slots=True)
class Strange:
    """A message the provider would not accept (recorded as a protocol error)."""

    problem: str


FLUSH: Final = Flush()
BotMessage = BotAudio | PlayedRequest | Flush | Strange


def _json(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError("payload is not a string")
    return base64.b64decode(value, validate=True)


class ProviderWire:
    """One stream's provider side (see the module docstring); subclasses speak one provider each."""

    provider: ClassVar[str]
    formats: ClassVar[tuple[WireFormat, ...]] = (ULAW_8K,)  # what the provider can stream; first: default
    flush_confirms_pending: ClassVar[bool] = False
    message_ms: ClassVar[int] = 0  # bot messages must be whole multiples of this (the gateway pads replies)
    min_message_bytes: ClassVar[int] = 0  # ... and at least this long

    def __init__(
        self,
        call_id: str,
        parameters: Mapping[str, str] | None = None,
        fmt: WireFormat | None = None,
        stream_id: str | None = None,
    ) -> None:
        self.call_id = call_id
        self.parameters = dict(parameters or {})
        self.format = fmt or self.formats[0]
        if self.format not in self.formats:
            offered = ", ".join(map(str, self.formats))
            raise ValueError(f"{self.provider} streams {offered}, not {self.format}")
        self.stream_id = stream_id or str(uuid.uuid4())
        self.sequence = 0
        self.chunk = 0
        self.caller_ms = 0.0  # caller audio sent so far

    @property
    def path(self) -> str:
        """The gateway's media route for this provider."""
        return f"/{self.provider}/media"

    def upgrade_headers(self) -> dict[str, str]:
        """Headers the provider sends with the WebSocket upgrade (signatures are the caller's business)."""
        return {}

    @property
    def max_padding(self) -> int:
        """The most silence (bytes) the gateway may add to the end of a reply to meet the message rules."""
        return max(self.format.frame_bytes(self.message_ms), self.min_message_bytes)

    def next_sequence(self) -> int:
        self.sequence += 1
        return self.sequence

    stream_key: ClassVar[str] = ""  # snake_case providers (Telnyx, Exotel): the stream id's field name

    def _envelope(self, event: str, **body: Any) -> str:
        """A snake_case message: event, sequence number as a string, stream id, then `body`."""
        message = {
            "event": event,
            "sequence_number": str(self.next_sequence()),
            self.stream_key: self.stream_id,
        }
        return _json(message | body)

    def _count(self, frame: WireFrame) -> int:
        """Count one caller frame; its timestamp (ms of caller audio before it)."""
        self.chunk += 1
        timestamp = int(self.caller_ms)
        self.caller_ms += self.format.duration_ms(len(frame.audio))
        return timestamp

    def opening(self) -> list[str | bytes]:
        """What the provider sends as soon as the socket is open."""
        raise NotImplementedError

    def media(self, frame: WireFrame) -> str | bytes:
        """One frame of caller audio."""
        raise NotImplementedError

    def dtmf(self, digit: str) -> str:
        """The caller pressed `digit`."""
        raise NotImplementedError

    def played(self, name: str) -> str:
        """The audio before the gateway's request `name` has played."""
        raise NotImplementedError

    def flushed(self) -> list[str]:
        """What the provider answers a clear with (besides confirmations)."""
        return []

    def stop(self) -> list[str]:
        """What the provider sends when the caller hangs up, before it closes the socket."""
        return []

    def read(self, message: str | bytes) -> BotMessage:
        """What one message from the gateway means (never raises)."""
        if isinstance(message, bytes):
            return Strange(f"binary frame of {len(message)} bytes")
        try:
            data = json.loads(message)
            return self._read(data)
        except (ValueError, KeyError, TypeError, AttributeError):
            return Strange(f"unparseable message {message[:80]!r}")

    def _read(self, data: dict[str, Any]) -> BotMessage:
        raise NotImplementedError


class TwilioWire(ProviderWire):
    """Twilio Media Streams (mu-law 8 kHz; marks echoed, and all echoed at once on clear).

    Bot media in the gateway's own layout is recognised by its prefix, its payload sliced out: the load
    generator reads 50 of them a second per call."""

    provider = "twilio"
    flush_confirms_pending = True
    account_sid: ClassVar[str] = "AC" + "0" * 32

    def __init__(
        self,
        call_id: str,
        parameters: Mapping[str, str] | None = None,
        fmt: WireFormat | None = None,
        stream_id: str | None = None,
    ) -> None:
        super().__init__(call_id, parameters, fmt, stream_id or "MZ" + uuid.uuid4().hex)
        self.quoted = twilio_wire.quote_sid(self.stream_id)
        self._prefix = twilio_wire.bot_media_prefix(self.quoted)
        self._suffix = twilio_wire.MESSAGE_SUFFIX

    def start(self) -> str:
        """The `start` message."""
        return twilio_wire.start(
            self.quoted,
            call_sid=self.call_id,
            account_sid=self.account_sid,
            custom_parameters=self.parameters,
            sequence=self.next_sequence(),
        )

    def opening(self) -> list[str | bytes]:
        """`connected`, then `start`."""
        return [twilio_wire.connected(), self.start()]

    def media(self, frame: WireFrame) -> str:
        """A `media` message (counters as strings)."""
        timestamp = self._count(frame)
        return twilio_wire.caller_media(
            self.quoted,
            frame.payload,
            sequence=self.next_sequence(),
            chunk=self.chunk,
            timestamp_ms=timestamp,
        )

    def dtmf(self, digit: str) -> str:
        """A `dtmf` message."""
        return twilio_wire.dtmf(self.quoted, digit, sequence=self.next_sequence())

    def played(self, name: str) -> str:
        """A mark echo."""
        return twilio_wire.mark_echo(self.quoted, name, sequence=self.next_sequence())

    def stop(self) -> list[str]:
        """`stop`."""
        stop = twilio_wire.stop(
            self.quoted, call_sid=self.call_id, account_sid=self.account_sid, sequence=self.next_sequence()
        )
        return [stop]

    def read(self, message: str | bytes) -> BotMessage:
        """Media by prefix; anything else parsed."""
        if isinstance(message, str) and message.startswith(self._prefix) and message.endswith(self._suffix):
            try:
                return BotAudio(_b64(message[len(self._prefix) : -len(self._suffix)]))
            except ValueError:
                return Strange(f"bad base64 in media {message[:80]!r}")
        return super().read(message)

    def _read(self, data: dict[str, Any]) -> BotMessage:
        event = data["event"]
        if data.get("streamSid") != self.stream_id:
            return Strange(f"{event} for streamSid {data.get('streamSid')!r}")
        if event == "media":
            return BotAudio(_b64(data["media"]["payload"]))
        if event == "mark":
            return PlayedRequest(str(data["mark"]["name"]))
        if event == "clear":
            return FLUSH
        return Strange(f"unexpected event {event!r}")


# `codec` attribute of SignalWire's <Stream> -> start.mediaFormat (the docs' spelling, capital L included).
SIGNALWIRE_MEDIA_FORMATS: Final = {
    ULAW_8K: {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    WireFormat(Encoding.L16, 16000): {"encoding": "audio/x-L16", "sampleRate": 16000, "channels": 1},
    WireFormat(Encoding.L16, 24000): {"encoding": "audio/x-L16", "sampleRate": 24000, "channels": 1},
}


class SignalWireWire(TwilioWire):
    """SignalWire cXML streams: Twilio's messages, with `start.mediaFormat` naming mu-law or L16."""

    provider = "signalwire"
    formats = tuple(SIGNALWIRE_MEDIA_FORMATS)

    def start(self) -> str:
        """`start` with the codec's media format."""
        start = {
            "streamSid": self.stream_id,
            "accountSid": self.account_sid,
            "callSid": self.call_id,
            "tracks": ["inbound"],
            "customParameters": self.parameters,
            "mediaFormat": SIGNALWIRE_MEDIA_FORMATS[self.format],
        }
        return _json({"event": "start", "sequenceNumber": str(self.next_sequence()), "start": start})


class TelnyxWire(ProviderWire):
    """Telnyx media streaming, bidirectional RTP mode (PCMU or PCMA at 8 kHz); counters as strings."""

    provider = "telnyx"
    formats = (ULAW_8K, WireFormat(Encoding.ALAW, 8000))
    flush_confirms_pending = True
    message_ms = 20  # RTP mode: whole 20 ms packets

    stream_key = "stream_id"

    def opening(self) -> list[str | bytes]:
        """`connected`, then `start` with the TeXML `<Parameter>`s and the media format."""
        encoding = "PCMU" if self.format.encoding is Encoding.ULAW else "PCMA"
        start = {
            "user_id": "3e6f995f-85f7-4705-9741-53b116d28237",
            "call_control_id": self.call_id,
            "call_session_id": self.stream_id,
            "from": "+13122010094",
            "to": "+13122123456",
            "custom_parameters": self.parameters,
            "media_format": {"encoding": encoding, "sample_rate": 8000, "channels": 1},
        }
        return [_json({"event": "connected", "version": "1.0.0"}), self._envelope("start", start=start)]

    def media(self, frame: WireFrame) -> str:
        """A `media` message."""
        timestamp = self._count(frame)
        media = {"track": "inbound", "chunk": str(self.chunk), "timestamp": str(timestamp)}
        return self._envelope("media", media=media | {"payload": frame.payload})

    def dtmf(self, digit: str) -> str:
        """A `dtmf` message."""
        return self._envelope("dtmf", dtmf={"digit": digit})

    def played(self, name: str) -> str:
        """A mark echo."""
        return self._envelope("mark", mark={"name": name})

    def stop(self) -> list[str]:
        """`stop`."""
        return [self._envelope("stop", stop={"call_control_id": self.call_id})]

    def _read(self, data: dict[str, Any]) -> BotMessage:
        event = data["event"]
        if event == "media":
            return BotAudio(_b64(data["media"]["payload"]))
        if event == "mark":
            return PlayedRequest(str(data["mark"]["name"]))
        if event == "clear":
            return FLUSH
        return Strange(f"unexpected event {event!r}")


_PLIVO_TYPES: Final = {Encoding.ULAW: "audio/x-mulaw", Encoding.L16: "audio/x-l16"}


class PlivoWire(ProviderWire):
    """Plivo audio streams: no `connected`; `playAudio` in the stream's format; a `checkpoint` answered
    with `playedStream`; `clearAudio` answered with `clearedAudio`, the dropped checkpoints never."""

    provider = "plivo"
    formats = (ULAW_8K, WireFormat(Encoding.L16, 8000), WireFormat(Encoding.L16, 16000))

    @property
    def content_type(self) -> str:
        """The stream's `contentType`."""
        return _PLIVO_TYPES[self.format.encoding]

    def _epoch_ms(self) -> str:
        return str(int(time.time() * 1000))

    def _headers(self) -> str:
        """The answer's extraHeaders as Plivo hands them back. The call's own CallUUID is hex, as the
        gateway's answer writes it (sent raw, an id that happens to be valid hex would be decoded into
        garbage); `parameters` go as given (a fake answer's pairs are already encoded)."""
        pairs = {"CallUUID": self.call_id.encode("utf-8").hex(), **self.parameters}
        return ";".join(f"{key}={value}" for key, value in pairs.items())

    def opening(self) -> list[str | bytes]:
        """`start`: ids, the format, and the answer's extraHeaders as `k=v;k=v`."""
        start = {
            "callId": self.call_id,
            "streamId": self.stream_id,
            "accountId": "MAXXXXXXXXXXXXXXXXXX",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": self.content_type, "sampleRate": self.format.rate},
        }
        message = {"event": "start", "sequenceNumber": self.next_sequence(), "start": start}
        return [_json(message | {"extra_headers": self._headers()})]

    def media(self, frame: WireFrame) -> str:
        """A `media` message (numeric counters, an epoch-ms timestamp as a string)."""
        self._count(frame)
        media = {
            "track": "inbound",
            "timestamp": self._epoch_ms(),
            "chunk": self.chunk,
            "payload": frame.payload,
        }
        message = {"event": "media", "sequenceNumber": self.next_sequence(), "streamId": self.stream_id}
        return _json(message | {"media": media, "extra_headers": self._headers()})

    def dtmf(self, digit: str) -> str:
        """A `dtmf` message."""
        dtmf = {"track": "inbound", "digit": digit, "timestamp": self._epoch_ms()}
        message = {"event": "dtmf", "sequenceNumber": self.next_sequence(), "streamId": self.stream_id}
        return _json(message | {"dtmf": dtmf, "extra_headers": self._headers()})

    def played(self, name: str) -> str:
        """`playedStream`."""
        message = {
            "event": "playedStream",
            "sequenceNumber": self.next_sequence(),
            "streamId": self.stream_id,
        }
        return _json(message | {"name": name})

    def flushed(self) -> list[str]:
        """`clearedAudio`."""
        message = {
            "event": "clearedAudio",
            "sequenceNumber": self.next_sequence(),
            "streamId": self.stream_id,
        }
        return [_json(message)]

    def _read(self, data: dict[str, Any]) -> BotMessage:
        event = data["event"]
        if event == "playAudio":
            media = data["media"]
            if (media["contentType"], media["sampleRate"]) != (self.content_type, self.format.rate):
                return Strange(f"playAudio in {media['contentType']} at {media['sampleRate']} Hz")
            return BotAudio(_b64(media["payload"]))
        if data.get("streamId") != self.stream_id:
            return Strange(f"{event} for stream {data.get('streamId')!r}")
        if event == "checkpoint":
            return PlayedRequest(str(data["name"]))
        if event == "clearAudio":
            return FLUSH
        return Strange(f"unexpected event {event!r}")


class VonageWire(ProviderWire):
    """Vonage WebSockets: `websocket:connected` echoing the NCCO's headers, raw L16 in binary frames of
    exactly 20 ms both ways, a `notify` action echoed as `websocket:notify`, `clear` answered with
    `websocket:cleared` (pending notifies dropped)."""

    provider = "vonage"
    formats = (
        WireFormat(Encoding.L16, 16000),
        WireFormat(Encoding.L16, 8000),
        WireFormat(Encoding.L16, 24000),
    )

    def opening(self) -> list[str | bytes]:
        """`websocket:connected` with the content type and the NCCO's headers (the call's uuid among them)."""
        content_type = f"audio/l16;rate={self.format.rate}"
        return [
            _json(
                {
                    "event": "websocket:connected",
                    "content-type": content_type,
                    "uuid": self.call_id,
                    **self.parameters,
                }
            )
        ]

    def media(self, frame: WireFrame) -> bytes:
        """A binary frame."""
        self._count(frame)
        return frame.audio

    def dtmf(self, digit: str) -> str:
        """`websocket:dtmf`."""
        return _json({"event": "websocket:dtmf", "digit": digit, "duration": 260})

    def played(self, name: str) -> str:
        """`websocket:notify` with the payload the gateway gave (`name` is its JSON)."""
        return _json({"event": "websocket:notify", "payload": json.loads(name)})

    def flushed(self) -> list[str]:
        """`websocket:cleared`."""
        return [_json({"event": "websocket:cleared"})]

    def read(self, message: str | bytes) -> BotMessage:
        """Binary frames are audio (exactly 20 ms); text frames are actions."""
        if isinstance(message, bytes):
            size = self.format.frame_bytes(20)
            if len(message) != size:
                return Strange(f"binary frame of {len(message)} bytes, not {size}")
            return BotAudio(message)
        return super().read(message)

    def _read(self, data: dict[str, Any]) -> BotMessage:
        if data == {"action": "clear"}:
            return FLUSH
        if data.get("action") == "notify" and set(data) == {"action", "payload"}:
            return PlayedRequest(_json(data["payload"]))
        return Strange(f"unexpected text frame {_json(data)[:60]!r}")


MIN_EXOTEL_CHUNK, EXOTEL_CHUNK_MULTIPLE = 3200, 320  # Exotel's rules for the audio it is sent


class ExotelWire(ProviderWire):
    """Exotel Voicebot streams: snake_case, counters as strings, L16 (`audio/x-raw`) at 8 kHz by default;
    bot media in chunks of at least 3,200 bytes and a multiple of 320; pending marks dropped on clear."""

    provider = "exotel"
    min_message_bytes = MIN_EXOTEL_CHUNK
    formats = (
        WireFormat(Encoding.L16, 8000),
        WireFormat(Encoding.L16, 16000),
        WireFormat(Encoding.L16, 24000),
        ULAW_8K,
    )

    stream_key = "stream_sid"

    def opening(self) -> list[str | bytes]:
        """`connected`, then `start`."""
        encoding = "audio/x-raw" if self.format.encoding is Encoding.L16 else "audio/x-mulaw"
        start = {
            "stream_sid": self.stream_id,
            "call_sid": self.call_id,
            "account_sid": "exotel-account",
            "from": "+919876543210",
            "to": "+918047491899",
            "custom_parameters": self.parameters,
            "media_format": {
                "encoding": encoding,
                "sample_rate": str(self.format.rate),
                "bit_rate": str(8 * self.format.bytes_per_sample),
            },
        }
        return [_json({"event": "connected"}), self._envelope("start", start=start)]

    def media(self, frame: WireFrame) -> str:
        """A `media` message."""
        timestamp = self._count(frame)
        media = {"chunk": str(self.chunk), "timestamp": str(timestamp), "payload": frame.payload}
        return self._envelope("media", media=media)

    def dtmf(self, digit: str) -> str:
        """A `dtmf` message."""
        return self._envelope("dtmf", dtmf={"digit": digit, "duration": "100"})

    def played(self, name: str) -> str:
        """A mark echo."""
        return self._envelope("mark", mark={"name": name})

    def stop(self) -> list[str]:
        """`stop`."""
        stop = {"call_sid": self.call_id, "account_sid": "exotel-account", "reason": "callended"}
        return [self._envelope("stop", stop=stop)]

    def _read(self, data: dict[str, Any]) -> BotMessage:
        event = data["event"]
        if data.get("stream_sid") != self.stream_id:
            return Strange(f"{event} for stream_sid {data.get('stream_sid')!r}")
        if event == "media":
            audio = _b64(data["media"]["payload"])
            if len(audio) < MIN_EXOTEL_CHUNK or len(audio) % EXOTEL_CHUNK_MULTIPLE:
                return Strange(f"media chunk of {len(audio)} bytes")
            return BotAudio(audio)
        if event == "mark":
            return PlayedRequest(str(data["mark"]["name"]))
        if event == "clear":
            return FLUSH
        return Strange(f"unexpected event {event!r}")


ACS_AUDIO_PREFIX: Final = '{"Kind":"AudioData","AudioData":{"Data":"'
ACS_AUDIO_SUFFIX: Final = '"},"StopAudio":null}'
ACS_STOP_AUDIO: Final = '{"Kind":"StopAudio","AudioData":null,"StopAudio":{}}'


class AcsWire(ProviderWire):
    """Azure Communication Services bidirectional media streaming: PCM16 at 24 kHz (or 16 kHz),
    `AudioMetadata` first, `AudioData` frames, `DtmfData`; the gateway's `StopAudio` drops the queue and
    nothing confirms playback. The upgrade names the call in `x-ms-call-connection-id`."""

    provider = "acs"
    formats = (WireFormat(Encoding.L16, 24000), WireFormat(Encoding.L16, 16000))

    def upgrade_headers(self) -> dict[str, str]:
        """The call's ids, as ACS sends them."""
        return {"x-ms-call-connection-id": self.call_id, "x-ms-call-correlation-id": self.stream_id}

    def opening(self) -> list[str | bytes]:
        """`AudioMetadata`."""
        meta = {
            "subscriptionId": self.stream_id,
            "encoding": "PCM",
            "sampleRate": self.format.rate,
            "channels": 1,
            "length": self.format.frame_bytes(20),
        }
        return [_json({"kind": "AudioMetadata", "audioMetadata": meta})]

    def media(self, frame: WireFrame) -> str:
        """`AudioData` (flagged silent when every sample is zero, as ACS does)."""
        self._count(frame)
        audio = {
            "timestamp": "2024-11-15T19:16:12.925Z",
            "participantRawID": "4:+14255550123",
            "data": frame.payload,
            "silent": not any(frame.audio),
        }
        return _json({"kind": "AudioData", "audioData": audio})

    def dtmf(self, digit: str) -> str:
        """`DtmfData`."""
        return _json({"kind": "DtmfData", "dtmfData": {"data": digit}})

    def played(self, name: str) -> str:
        """ACS confirms nothing (the gateway asks for nothing)."""
        raise NotImplementedError("ACS confirms no playback")

    def read(self, message: str | bytes) -> BotMessage:
        """`AudioData` by prefix (the gateway's own layout), `StopAudio`; anything else is strange."""
        if isinstance(message, str):
            if message.startswith(ACS_AUDIO_PREFIX) and message.endswith(ACS_AUDIO_SUFFIX):
                try:
                    return BotAudio(_b64(message[len(ACS_AUDIO_PREFIX) : -len(ACS_AUDIO_SUFFIX)]))
                except ValueError:
                    return Strange(f"bad base64 in AudioData {message[:80]!r}")
            if message == ACS_STOP_AUDIO:
                return FLUSH
        return Strange(f"not an ACS outbound message: {str(message)[:80]}")


WIRES: Final[Mapping[str, Callable[..., ProviderWire]]] = {
    wire.provider: wire
    for wire in (TwilioWire, SignalWireWire, TelnyxWire, PlivoWire, VonageWire, ExotelWire, AcsWire)
}
PROVIDERS: Final = tuple(WIRES)


def make_wire(
    provider: str,
    call_id: str,
    parameters: Mapping[str, str] | None = None,
    fmt: WireFormat | None = None,
    stream_id: str | None = None,
) -> ProviderWire:
    """A fresh wire for one stream (ValueError for an unknown provider or a format it does not stream)."""
    if provider not in WIRES:
        raise ValueError(f"unknown provider {provider!r}: one of {', '.join(PROVIDERS)}")
    return WIRES[provider](call_id, parameters, fmt, stream_id)


def parse_format(text: str | None) -> WireFormat | None:
    """A format written as ENCODING/RATE (`l16/16000`, `alaw/8000`); None stays None (ValueError if bad)."""
    if text is None:
        return None
    encoding, _, rate = text.partition("/")
    if not rate.isdigit():
        raise ValueError(f"format {text!r}: expected ENCODING/RATE, e.g. l16/16000")
    return WireFormat.of(encoding, int(rate))
