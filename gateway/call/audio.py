"""Per-call audio conversion between the caller leg's wire format and the realtime session's format.

The leg's format is whatever its dialect read from the stream's start (`telcodec.WireFormat`: G.711
mu-law or A-law at 8 kHz, L16 at 8, 16 or 24 kHz). Two session modes: `pcm16` transcodes with telcodec's
fused paths (any leg format <-> PCM16 24 kHz, streaming resamplers that keep their state across frames;
L16 at 24 kHz passes through), `g711` passes mu-law through untouched, which only a mu-law 8 kHz leg
allows. Both directions keep state, so one `CallAudio` belongs to exactly one call.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gateway.realtime.session import AudioFormat
from telcodec import BotPath, CallerPath, Encoding, WireFormat, alaw_decode, ulaw_decode

__all__ = ["PROVIDER_RATE", "TWILIO_FORMAT", "CallAudio"]

PROVIDER_RATE = 8000  # Twilio: G.711 mu-law, 8 kHz, mono
TWILIO_FORMAT = WireFormat(Encoding.ULAW, PROVIDER_RATE)


class CallAudio:
    """Convert caller frames up to the session's input format and bot audio down to the leg's format."""

    def __init__(self, session_format: AudioFormat, leg_format: WireFormat = TWILIO_FORMAT) -> None:
        if session_format not in (AudioFormat.PCM16, AudioFormat.G711_ULAW):
            raise ValueError(f"unsupported session audio format: {session_format}")
        if session_format is AudioFormat.G711_ULAW and leg_format != TWILIO_FORMAT:
            raise ValueError(f"AUDIO_MODE=g711 passes mu-law 8 kHz through; this leg sends {leg_format}")
        self.session_format = session_format
        self.leg_format = leg_format
        self._transcode = session_format is AudioFormat.PCM16
        if self._transcode:
            self._up = CallerPath(leg_format.encoding, leg_format.rate)
            self._down = BotPath(leg_format.encoding, leg_format.rate)

    @property
    def session_rate(self) -> int:
        """Sample rate of the realtime session's audio."""
        return self.session_format.sample_rate

    def caller_to_session(self, frame: bytes) -> bytes:
        """One caller frame (the leg's format) in the session's input format."""
        return self._up.process(frame) if self._transcode else frame

    def caller_samples(self, frame: bytes) -> npt.NDArray[np.int16]:
        """One caller frame as PCM16 samples at the leg's rate (for the local speech detector)."""
        encoding = self.leg_format.encoding
        if encoding is Encoding.ULAW:
            return ulaw_decode(frame)
        if encoding is Encoding.ALAW:
            return alaw_decode(frame)
        return np.frombuffer(frame, dtype="<i2", count=len(frame) // 2).astype(np.int16, copy=False)

    def session_samples(self, audio: bytes) -> int:
        """Whole samples in a piece of bot audio in the session's output format."""
        return len(audio) // self.session_format.bytes_per_sample

    def bot_to_provider(self, audio: bytes) -> bytes:
        """Bot audio (session format, any length) in the leg's format; a resampler holds back its delay."""
        return self._down.process(audio) if self._transcode else audio

    def end_bot_item(self) -> bytes:
        """The held-back tail of the bot item that just finished; the next item starts from a clean state."""
        if not self._transcode:
            return b""
        return self._down.flush()

    def drop_bot_audio(self) -> None:
        """Forget bot audio not yet emitted (on barge-in: it must never be played)."""
        if self._transcode:
            self._down.reset()
