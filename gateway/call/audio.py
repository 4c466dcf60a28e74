"""Per-call audio conversion between the provider (mu-law 8 kHz) and the realtime session's format.

Two modes: `pcm16` transcodes with telcodec (mu-law 8 kHz <-> PCM16 24 kHz, streaming resamplers that
keep their state across frames), `g711` passes mu-law through untouched. Either way the bridge calls
the same four methods. Both directions keep state, so one `CallAudio` belongs to exactly one call.
"""

from __future__ import annotations

from gateway.realtime.session import AudioFormat
from telcodec.resample import BotPath, CallerPath

__all__ = ["PROVIDER_RATE", "CallAudio"]

PROVIDER_RATE = 8000  # Twilio: G.711 mu-law, 8 kHz, mono


class CallAudio:
    """Convert caller frames up to the session's input format and bot audio down to mu-law."""

    def __init__(self, session_format: AudioFormat) -> None:
        if session_format not in (AudioFormat.PCM16, AudioFormat.G711_ULAW):
            raise ValueError(f"unsupported session audio format for a mu-law provider: {session_format}")
        self.session_format = session_format
        self._transcode = session_format is AudioFormat.PCM16
        if self._transcode:
            self._up = CallerPath()
            self._down = BotPath()

    @property
    def session_rate(self) -> int:
        """Sample rate of the realtime session's audio."""
        return self.session_format.sample_rate

    def caller_to_session(self, ulaw: bytes) -> bytes:
        """One caller frame (mu-law) in the session's input format."""
        return self._up.process(ulaw) if self._transcode else ulaw

    def session_samples(self, audio: bytes) -> int:
        """Whole samples in a piece of bot audio in the session's output format."""
        return len(audio) // self.session_format.bytes_per_sample

    def bot_to_provider(self, audio: bytes) -> bytes:
        """Bot audio (session format, any length) as mu-law; a resampler holds back its filter's delay."""
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
