"""Wire formats: the audio encodings and rates that telephony providers send and expect.

A provider dialect declares its format as a `WireFormat`; `telcodec.CallerPath` and `telcodec.BotPath`
convert between it and the realtime session's PCM16 24 kHz (`SESSION_FORMAT`). Supported, with examples
of who sends what (the dialects own the details):

- G.711 mu-law at 8 kHz: Twilio and SignalWire; Telnyx, Plivo and Exotel by default; SIP PCMU
- G.711 A-law at 8 kHz: SIP PCMA, Telnyx (PCMA)
- L16 at 8 or 16 kHz (Vonage, Plivo, Exotel) or 24 kHz (Azure Communication Services)

"l16" here is 16-bit linear PCM, mono, **little-endian**, as the WebSocket media APIs send it. RTP's
L16 payload (RFC 3551) is big-endian: a leg that carries raw RTP payloads must swap bytes both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["SESSION_FORMAT", "SUPPORTED_FORMATS", "Encoding", "WireFormat"]

G711_RATE = 8000
L16_RATES = (8000, 16000, 24000)


class Encoding(StrEnum):
    """An audio encoding by its short name (the value), as provider configurations spell it."""

    ULAW = "ulaw"  # G.711 mu-law, one byte per sample
    ALAW = "alaw"  # G.711 A-law, one byte per sample
    L16 = "l16"  # linear PCM16 little-endian, two bytes per sample


_BYTES_PER_SAMPLE = {Encoding.ULAW: 1, Encoding.ALAW: 1, Encoding.L16: 2}
# The byte that encodes silence: mu-law 0xFF is +0; A-law has no zero and 0xD5 is +8, the smallest
# positive value (what audioop.lin2alaw gives for 0); L16 zeros are 0x00 0x00.
_SILENCE_BYTE = {Encoding.ULAW: 0xFF, Encoding.ALAW: 0xD5, Encoding.L16: 0x00}
_RATES = {Encoding.ULAW: (G711_RATE,), Encoding.ALAW: (G711_RATE,), Encoding.L16: L16_RATES}


def _check(encoding: Encoding | str, rate: int) -> None:
    """ValueError naming the combination and the supported ones, unless `encoding` at `rate` is supported."""
    if encoding not in _RATES or type(rate) is not int or rate not in _RATES[Encoding(encoding)]:
        supported = ", ".join(f"{e}/{r}" for e, rates in _RATES.items() for r in rates)
        raise ValueError(f"unsupported wire format {encoding}/{rate}: supported are {supported}")


@dataclass(frozen=True, slots=True)
class WireFormat:
    """One mono audio format on the wire: an encoding at a sample rate (ValueError if unsupported).

    Build it from names with `WireFormat.of("alaw", 8000)`; `str()` gives "alaw/8000".
    """

    encoding: Encoding
    rate: int

    def __post_init__(self) -> None:
        _check(self.encoding, self.rate)
        object.__setattr__(self, "encoding", Encoding(self.encoding))  # an untyped caller's "alaw"

    @classmethod
    def of(cls, encoding: Encoding | str, rate: int) -> WireFormat:
        """The format for an encoding name ("ulaw", "alaw", "l16") and a rate in Hz."""
        _check(encoding, rate)
        return cls(Encoding(encoding), rate)

    def __str__(self) -> str:
        return f"{self.encoding}/{self.rate}"

    @property
    def bytes_per_sample(self) -> int:
        """1 for G.711, 2 for L16."""
        return _BYTES_PER_SAMPLE[self.encoding]

    @property
    def bytes_per_ms(self) -> int:
        """Bytes of one millisecond of audio (8 for G.711, 16, 32 or 48 for L16)."""
        return self.rate // 1000 * self.bytes_per_sample

    def frame_bytes(self, ms: int) -> int:
        """Bytes of `ms` milliseconds of audio (a 20 ms frame: 160 for G.711, 640 for L16 at 16 kHz)."""
        return ms * self.bytes_per_ms

    def duration_ms(self, n_bytes: int) -> float:
        """Milliseconds of audio in `n_bytes` bytes (a trailing half L16 sample counts for nothing)."""
        return (n_bytes // self.bytes_per_sample) * 1000 / self.rate

    def silence(self, ms: int) -> bytes:
        """`ms` milliseconds of digital silence in this format (mu-law 0xFF, A-law 0xD5, L16 zeros)."""
        return bytes([_SILENCE_BYTE[self.encoding]]) * self.frame_bytes(ms)


SESSION_FORMAT = WireFormat(Encoding.L16, 24000)  # what the realtime session speaks in pcm16 mode
SUPPORTED_FORMATS = tuple(WireFormat(e, r) for e, rates in _RATES.items() for r in rates)
