"""Local speech-start detector for barge-in: frame energy against a tracked noise floor.

A sans-I/O core: feed it the caller's PCM frames (int16, mono, any rate; 8 kHz or 24 kHz in practice)
in order, with whether bot audio is audible right now, and it says True on the frame where speech
starts. Frame durations come from sample counts; nothing in here reads a clock.

A frame is voiced when its energy (dBFS) is at least `margin_db` above the noise floor and above
`min_dbfs`. Speech starts after `attack_ms` of consecutive voiced frames and ends after `hangover_ms`
of consecutive unvoiced ones; only the start is reported. The noise floor drops at once to a quieter
frame and rises slowly (`floor_rise_db_per_s`), so steady line noise is absorbed within seconds while
short pauses between words pull the floor back down (minimum tracking).

Echo. On a phone line the caller's side often sends back part of the bot's own audio (hybrid/acoustic
echo, speakerphones), typically 10 to 30 dB below the bot's level and delayed by the round trip. An
energy detector cannot tell that from the caller talking, so while the bot is audible the threshold
is raised by `echo_guard_db`. That trades sensitivity for safety: a caller who speaks softly over the
bot is caught by server VAD instead (its model is trained to ignore this). A real fix would be an echo
canceller fed with the bot audio we sent (the far-end reference), which this module does not do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["FULL_SCALE", "LocalVad", "LocalVadSettings", "frame_dbfs"]

FULL_SCALE = 32768.0
SILENCE_DBFS = -120.0
"""What an all-zero frame measures (log of zero has no value)."""


@dataclass(frozen=True, slots=True)
class LocalVadSettings:
    """Tuning of the detector; the defaults suit 20 ms frames of telephone speech."""

    attack_ms: int = 60
    hangover_ms: int = 300
    margin_db: float = 12.0
    echo_guard_db: float = 10.0
    min_dbfs: float = -45.0
    floor_rise_db_per_s: float = 2.0


def frame_dbfs(pcm: NDArray[np.int16]) -> float:
    """RMS level of a frame in dBFS (a full-scale square wave is 0 dBFS)."""
    if pcm.size == 0:
        return SILENCE_DBFS
    samples = pcm.astype(np.float32)
    mean_square = float(np.dot(samples, samples)) / pcm.size
    if mean_square <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(mean_square / (FULL_SCALE * FULL_SCALE)))


class LocalVad:
    """Energy speech-start detector for one call's caller audio at `sample_rate`."""

    def __init__(self, sample_rate: int, settings: LocalVadSettings | None = None) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate}")
        self._rate = sample_rate
        self._settings = settings or LocalVadSettings()
        self._attack = self._settings.attack_ms * sample_rate // 1000
        self._hangover = self._settings.hangover_ms * sample_rate // 1000
        self._floor: float | None = None
        self._voiced_run = 0
        self._unvoiced_run = 0
        self._speaking = False

    @property
    def speaking(self) -> bool:
        """Speech started and has not yet been followed by `hangover_ms` of unvoiced frames."""
        return self._speaking

    @property
    def noise_floor_dbfs(self) -> float | None:
        """The tracked noise floor (None before the first frame)."""
        return self._floor

    def threshold_dbfs(self, bot_audible: bool) -> float:
        """The level a frame must reach to count as voiced now."""
        floor = self._floor if self._floor is not None else SILENCE_DBFS
        base = max(self._settings.min_dbfs, floor + self._settings.margin_db)
        return base + (self._settings.echo_guard_db if bot_audible else 0.0)

    def on_frame(self, pcm: NDArray[np.int16], *, bot_audible: bool) -> bool:
        """Take the next caller frame; True exactly on the frame where speech starts."""
        n = int(pcm.size)
        if n == 0:
            return False
        level = frame_dbfs(pcm)
        if self._floor is None:
            self._floor = level  # the first frame (line noise, usually) seeds the floor
        voiced = level >= self.threshold_dbfs(bot_audible)
        self._track_floor(level, n)
        if voiced:
            self._voiced_run += n
            self._unvoiced_run = 0
        else:
            self._unvoiced_run += n
            self._voiced_run = 0
        if self._speaking:
            self._speaking = self._unvoiced_run < self._hangover
            return False
        self._speaking = self._voiced_run >= self._attack
        return self._speaking

    def _track_floor(self, level: float, samples: int) -> None:
        assert self._floor is not None
        if level <= self._floor:
            self._floor = level
        else:
            rise = self._settings.floor_rise_db_per_s * samples / self._rate
            self._floor = min(level, self._floor + rise)
