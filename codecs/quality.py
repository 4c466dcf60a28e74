"""Tone measurements of any resampling callable: image and alias rejection, passband ripple, delay.

A callable maps a whole int16 signal at `in_rate` to int16 at `out_rate` (wrap a streaming converter
by feeding it chunks and flushing). Each figure is measured with steady sine tones at -3 dBFS whose
frequencies are whole hertz, analysed over exactly one second of output (after a quarter second of
settling), so every tone, image and alias falls on its own FFT bin and a rectangular window leaks
nothing. The bench and the tests share these definitions:

- image rejection (upsampling): for each passband tone f, the output level at f over the largest output
  level at any image k*in_rate +- f below out_rate/2; the worst tone counts.
- alias rejection (downsampling): for each tone between the stopband edge (1.15 x the output Nyquist
  frequency: 4.6 kHz for 8 kHz out) and the input Nyquist frequency, the input level over the output
  level at the tone's alias (its frequency folded into 0 .. out_rate/2); the worst tone counts.
- passband ripple: peak-to-peak spread in dB of the gain at the passband tones (up to 0.85 x the lower
  Nyquist frequency: 3.4 kHz for 8 kHz).
- delay: the group delay of the output signal, from the phase slope between two tones. A delay-
  compensated stream (ours, soxr's) measures ~0 here; its latency is the samples it holds back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "AMPLITUDE",
    "Convert",
    "alias_rejection_db",
    "alias_tones",
    "group_delay_ms",
    "image_rejection_db",
    "passband_ripple_db",
    "passband_tones",
    "tone",
    "tone_level",
]

AMPLITUDE = 0.7079 * 32767  # -3 dBFS: room for the filter's overshoot
SETTLE_S = 0.25
ANALYSIS_S = 1.0
FLOOR = 1e-9  # amplitude floor so a perfect null reads as a finite (huge) rejection

Pcm16 = npt.NDArray[np.int16]
Convert = Callable[[Pcm16], Pcm16]


def tone(freq: float, rate: int, seconds: float = SETTLE_S + ANALYSIS_S + 0.1, phase: float = 0.0) -> Pcm16:
    """A sine at `freq` Hz, -3 dBFS, rounded to int16."""
    n = np.arange(round(seconds * rate))
    return np.round(AMPLITUDE * np.sin(2 * np.pi * freq * n / rate + phase)).astype(np.int16)


def _spectrum(y: Pcm16, rate: int) -> npt.NDArray[np.complex128]:
    start = round(SETTLE_S * rate)
    seg = y[start : start + round(ANALYSIS_S * rate)].astype(np.float64)
    if len(seg) < round(ANALYSIS_S * rate):
        raise ValueError(f"output too short to analyse: {len(y)} samples at {rate} Hz")
    spec: npt.NDArray[np.complex128] = np.fft.rfft(seg) * (2.0 / len(seg))
    return spec


def tone_level(y: Pcm16, rate: int, freq: float) -> float:
    """The amplitude of the component of `y` at `freq` (a whole number of hertz) over the analysis second."""
    return float(abs(_spectrum(y, rate)[round(freq * ANALYSIS_S)]))


def passband_tones(in_rate: int, out_rate: int, step: float = 100.0) -> list[float]:
    """Test tones from `step` Hz up to the passband edge (0.85 x the lower Nyquist frequency)."""
    edge = 0.85 * min(in_rate, out_rate) / 2
    return [float(f) for f in np.arange(step, edge + 1, step)]


def alias_tones(in_rate: int, out_rate: int, step: float = 100.0) -> list[float]:
    """Input tones from the stopband edge (1.15 x the output Nyquist frequency) to below the input's."""
    start = np.ceil(1.15 * out_rate / 2 / step) * step
    return [float(f) for f in np.arange(start, in_rate / 2, step)]


def _db(ratio: float) -> float:
    return float(20 * np.log10(ratio))


def image_rejection_db(
    convert: Convert, in_rate: int, out_rate: int, tones: Sequence[float] | None = None
) -> float:
    """Worst ratio (dB) of a passband tone to its largest image in the output of an upsampler."""
    worst = np.inf
    for f in tones if tones is not None else passband_tones(in_rate, out_rate):
        spec = np.abs(_spectrum(convert(tone(f, in_rate)), out_rate))
        images = [
            g
            for k in range(1, out_rate // in_rate + 2)
            for g in (k * in_rate - f, k * in_rate + f)
            if 0 < g < out_rate / 2
        ]
        if not images:
            continue
        image = max(float(spec[round(g * ANALYSIS_S)]) for g in images)
        worst = min(worst, _db(float(spec[round(f * ANALYSIS_S)]) / max(image, FLOOR)))
    return float(worst)


def _alias_of(freq: float, out_rate: int) -> float:
    folded = freq % out_rate
    return min(folded, out_rate - folded)


def alias_rejection_db(
    convert: Convert, in_rate: int, out_rate: int, tones: Sequence[float] | None = None
) -> float:
    """Worst ratio (dB) of a stopband input tone to its alias in the output of a downsampler."""
    worst = np.inf
    for f in tones if tones is not None else alias_tones(in_rate, out_rate):
        level = tone_level(convert(tone(f, in_rate)), out_rate, _alias_of(f, out_rate))
        worst = min(worst, _db(AMPLITUDE / max(level, FLOOR)))
    return float(worst)


def passband_ripple_db(
    convert: Convert, in_rate: int, out_rate: int, tones: Sequence[float] | None = None
) -> float:
    """Peak-to-peak spread (dB) of the gain over the passband tones."""
    gains = [
        _db(tone_level(convert(tone(f, in_rate)), out_rate, f) / AMPLITUDE)
        for f in (tones if tones is not None else passband_tones(in_rate, out_rate))
    ]
    return max(gains) - min(gains)


def group_delay_ms(
    convert: Convert, in_rate: int, out_rate: int, f1: float = 1000.0, f2: float = 1100.0
) -> float:
    """The output signal's group delay (ms) from the phase slope between two tones (unambiguous < 10 ms)."""
    phases = []
    for f in (f1, f2):
        out = _spectrum(convert(tone(f, in_rate)), out_rate)[round(f * ANALYSIS_S)]
        ref = _spectrum(tone(f, out_rate), out_rate)[round(f * ANALYSIS_S)]
        phases.append(np.angle(out / ref))
    slope = (phases[1] - phases[0] + np.pi) % (2 * np.pi) - np.pi
    return float(-slope / (2 * np.pi * (f2 - f1)) * 1000.0)
