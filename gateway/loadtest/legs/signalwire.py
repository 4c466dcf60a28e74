"""A fake SignalWire leg: the load generator's call with SignalWire's upgrade headers and stream formats.

SignalWire's cXML streams speak Twilio's Media Streams messages (PROTOCOLS.md 2.4), so the load
generator's `PhoneCall` with SignalWire's wire (`gateway.loadtest.wires.SignalWireWire`: real-time
playout, marks echoed once their audio has played, flushed on clear) is the fake, with two differences
from Twilio: the upgrade carries `Authorization: Bearer <authBearerToken>` (what the `<Stream>`
attribute asks SignalWire to send) instead of a signature, and `start.mediaFormat` says what `codec`
the stream uses: `audio/x-mulaw` at 8 kHz, or `audio/x-L16` at 16 or 24 kHz.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.loadtest.client import PhoneCall
from gateway.loadtest.wires import WireFrame
from telcodec import WireFormat

__all__ = ["CODECS", "SignalWireCall"]

# The `codec` attribute of the <Stream> -> the stream's format.
CODECS = {
    "PCMU": WireFormat.of("ulaw", 8000),
    "L16@16000h": WireFormat.of("l16", 16000),
    "L16@24000h": WireFormat.of("l16", 24000),
}


@dataclass(slots=True, eq=False)
class SignalWireCall(PhoneCall):
    """One simulated SignalWire stream: `async with SignalWireCall(url, bearer=..., codec=...) as call`."""

    bearer: str | None = None  # the answer's authBearerToken
    codec: str = "PCMU"

    def __post_init__(self) -> None:
        self.provider, self.media_format = "signalwire", CODECS[self.codec]
        PhoneCall.__post_init__(self)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}

    @property
    def bytes_per_ms(self) -> int:
        """Bytes of one millisecond of this stream's audio."""
        return self.format.bytes_per_ms

    async def send_pcm(self, pcm: bytes, frame_ms: int = 20) -> None:
        """Send L16 (or any) audio in `frame_ms` media messages, as fast as the socket takes them."""
        size = frame_ms * self.bytes_per_ms
        for at in range(0, len(pcm), size):
            await self.send_caller_frame(WireFrame.of(pcm[at : at + size]))
