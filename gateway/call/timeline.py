"""When did the caller's audio at a given position of the realtime input buffer reach the gateway?

A sans-I/O core. The service's VAD reports where the caller stopped talking as a position in the
session's input audio (`speech_stopped.audio_end_ms`, which includes VAD's silence window). Response
latency is defined from the moment the caller really stopped talking, so the bridge records each frame's
arrival here and asks for the arrival of the frame that holds the end of speech:
`arrival_of(audio_end_ms - silence_duration_ms)`. A new realtime session starts its buffer at 0: `reset`.
"""

from __future__ import annotations

from collections import deque

__all__ = ["HISTORY_FRAMES", "CallerTimeline"]

HISTORY_FRAMES = 1500  # 30 s of 20 ms frames: far longer than any VAD silence window


class CallerTimeline:
    """Frames appended to the current session's input buffer: (start ms, end ms, arrival seconds)."""

    def __init__(self, history: int = HISTORY_FRAMES) -> None:
        self._frames: deque[tuple[float, float, float]] = deque(maxlen=history)
        self._position_ms = 0.0

    @property
    def position_ms(self) -> float:
        """Audio appended to the current session so far."""
        return self._position_ms

    def on_audio(self, duration_ms: float, arrived_s: float) -> None:
        """`duration_ms` of caller audio that arrived at `arrived_s` goes into the input buffer."""
        start = self._position_ms
        self._position_ms += duration_ms
        self._frames.append((start, self._position_ms, arrived_s))

    def arrival_of(self, position_ms: float) -> float | None:
        """Arrival time of the frame whose audio ends at or just after `position_ms` (the frame holding
        the last sample before it); None if that frame is not in the kept history."""
        for start, end, arrived_s in reversed(self._frames):
            if start < position_ms <= end:
                return arrived_s
            if end < position_ms:
                return None  # past the audio appended so far
        return None

    def reset(self, carried_ms: float = 0.0) -> None:
        """A new session: its buffer starts with `carried_ms` of audio whose arrival is not known."""
        self._frames.clear()
        self._position_ms = carried_ms
