"""Energy-based voice activity detection for the emulator's server VAD (sans-I/O).

Audio is cut into 20 ms frames on the appended-audio clock. A frame is voiced when its RMS level, in
dBFS (`gateway.call.localvad.frame_dbfs`, the project's one level measure), reaches the threshold;
`threshold` (0..1, as in the realtime API's `turn_detection.threshold`) maps linearly onto levels:
`dbfs = -70 + 60 * threshold`, so 0.5 (the API default) means -40 dBFS, 0.0 means -70 dBFS (almost
anything) and 1.0 means -10 dBFS (shouting). An all-zero frame measures -120 dBFS, below every
threshold. Speech starts on the first voiced frame: `audio_start_ms` is that frame's start minus
`prefix_padding_ms` (not below 0). It stops once `silence_duration_ms` of unvoiced frames follow:
`audio_end_ms` is the end of that silence, as the real service reports it (the value includes the
silence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.call.localvad import frame_dbfs

__all__ = [
    "FRAME_MS",
    "EnergyVad",
    "VadSettings",
    "VadSpeechStarted",
    "VadSpeechStopped",
    "threshold_dbfs",
]

FRAME_MS = 20
MIN_DBFS = -70.0
DBFS_SPAN = 60.0


def threshold_dbfs(threshold: float) -> float:
    """The RMS level (dBFS) a frame must reach to count as speech, for an API threshold in 0..1."""
    return MIN_DBFS + DBFS_SPAN * threshold


@dataclass(frozen=True, slots=True)
class VadSettings:
    """The server-VAD knobs the emulator honours (API defaults)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500


@dataclass(frozen=True, slots=True)
class VadSpeechStarted:
    """Speech began; `onset_ms` is the first voiced frame, `audio_start_ms` includes the padding."""

    audio_start_ms: int
    onset_ms: int


@dataclass(frozen=True, slots=True)
class VadSpeechStopped:
    """Speech ended; `audio_end_ms` is the end of the closing silence."""

    audio_end_ms: int


VadEvent = VadSpeechStarted | VadSpeechStopped


class EnergyVad:
    """Feed int16 samples with `feed`; act on the events it returns. Reads no clock."""

    def __init__(self, settings: VadSettings, *, start_ms: float = 0.0) -> None:
        self.settings = settings
        self.clock_ms = start_ms  # ms of audio consumed into whole frames, plus any discarded remainder
        self.speaking = False
        self._silence_ms = 0
        self._level = threshold_dbfs(settings.threshold)
        self._rate = 0
        self._pending = np.zeros(0, dtype=np.int16)

    def feed(self, samples: npt.NDArray[np.int16], sample_rate: int) -> list[VadEvent]:
        """Consume samples at `sample_rate`; return the speech events they complete, in order."""
        if sample_rate != self._rate:
            self.clock_ms += len(self._pending) * 1000 / self._rate if self._rate else 0.0
            self._pending = np.zeros(0, dtype=np.int16)
            self._rate = sample_rate
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        frame = sample_rate * FRAME_MS // 1000
        whole = len(data) - len(data) % frame
        self._pending = data[whole:].copy()
        events: list[VadEvent] = []
        for start in range(0, whole, frame):
            event = self._frame(data[start : start + frame])
            if event is not None:
                events.append(event)
        return events

    def _frame(self, frame: npt.NDArray[np.int16]) -> VadEvent | None:
        voiced = frame_dbfs(frame) >= self._level
        onset = self.clock_ms
        self.clock_ms += FRAME_MS
        if voiced:
            self._silence_ms = 0
            if not self.speaking:
                self.speaking = True
                start = max(0, round(onset) - self.settings.prefix_padding_ms)
                return VadSpeechStarted(audio_start_ms=start, onset_ms=round(onset))
            return None
        if not self.speaking:
            return None
        self._silence_ms += FRAME_MS
        if self._silence_ms >= self.settings.silence_duration_ms:
            self.speaking = False
            self._silence_ms = 0
            return VadSpeechStopped(audio_end_ms=round(self.clock_ms))
        return None
