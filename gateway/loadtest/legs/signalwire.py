"""A fake SignalWire leg: the Twilio client with SignalWire's upgrade headers and stream formats.

SignalWire's cXML streams speak Twilio's Media Streams messages (PROTOCOLS.md 2.4), so the load
generator's `TwilioCall` (real-time playout, marks echoed once their audio has played, flushed on clear)
is the fake, with two differences: the upgrade carries `Authorization: Bearer <authBearerToken>` (what
the `<Stream>` attribute asks SignalWire to send) instead of a signature, and `start.mediaFormat` says
what `codec` the stream uses: `audio/x-mulaw` at 8 kHz, or `audio/x-L16` at 16 or 24 kHz.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from gateway.loadtest.client import TwilioCall

__all__ = ["FORMATS", "SignalWireCall"]

# `codec` attribute -> start.mediaFormat (the docs' spelling, capital L included) and bytes per ms.
FORMATS = {
    "PCMU": ({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}, 8),
    "L16@16000h": ({"encoding": "audio/x-L16", "sampleRate": 16000, "channels": 1}, 32),
    "L16@24000h": ({"encoding": "audio/x-L16", "sampleRate": 24000, "channels": 1}, 48),
}


@dataclass(slots=True, eq=False)
class SignalWireCall(TwilioCall):
    """One simulated SignalWire stream: `async with SignalWireCall(url, bearer=..., codec=...) as call`."""

    bearer: str | None = None  # the answer's authBearerToken
    codec: str = "PCMU"

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.bearer}"} if self.bearer else {}

    @property
    def bytes_per_ms(self) -> int:
        """Bytes of one millisecond of this stream's audio."""
        return FORMATS[self.codec][1]

    async def start(self) -> None:
        """Send `start` with this call's ids, custom parameters and the codec's media format."""
        start = {
            "streamSid": self.stream_sid,
            "accountSid": self.account_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": dict(self.custom_parameters),
            "mediaFormat": FORMATS[self.codec][0],
        }
        await self.send_text(json.dumps({"event": "start", "sequenceNumber": "1", "start": start}))

    async def send_pcm(self, pcm: bytes, frame_ms: int = 20) -> None:
        """Send L16 (or any) audio in `frame_ms` media messages, as fast as the socket takes them."""
        size = frame_ms * self.bytes_per_ms
        for at in range(0, len(pcm), size):
            await self.send_payload(base64.b64encode(pcm[at : at + size]).decode(), n_bytes=size)
