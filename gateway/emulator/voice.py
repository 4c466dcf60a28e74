"""The emulator's audio: wire formats, and the bot's deterministic, speech-like reply voice.

The reply is synthesized at 24 kHz: syllables are harmonic, vowel-like tones (two formant bumps over a
falling pitch contour, raised-cosine amplitude envelope), grouped into words with short pauses between
them. It has speech's energy pattern (loud vowels, gaps) so VADs and codecs behave as with a voice, and
it is the same every time, so tests can compare bytes. G.711 output is resampled to 8 kHz with
`telcodec.resample.Resampler` (>= 92 dB alias rejection), then encoded with telcodec's bit-exact tables.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from gateway.realtime.session import AudioFormat
from telcodec import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from telcodec.resample import Resampler

__all__ = [
    "REPLY_SAMPLE_RATE",
    "decimate_24k_to_8k",
    "decode_audio",
    "encode_24k",
    "reply_audio",
    "synthesize_voice",
]

REPLY_SAMPLE_RATE = 24000
G711_RATE = 8000
TOP_HARMONIC_HZ = 3600.0  # keep the voice inside the telephone band
PEAK = 0.3 * 32767  # about -10 dBFS: loud enough for any VAD, far from clipping after filtering

# (F1, F2) in Hz for a handful of vowels; the syllables cycle through them.
VOWEL_FORMANTS = ((730.0, 1090.0), (270.0, 2290.0), (530.0, 1840.0), (570.0, 840.0), (440.0, 1020.0))
SYLLABLE_MS = (180, 140, 220, 160, 200, 150, 190)
WORD_SYLLABLES = (2, 1, 3, 1, 2, 2, 1)
PAUSE_MS = (110, 90, 140, 100, 120)

Pcm16 = npt.NDArray[np.int16]


def decode_audio(fmt: AudioFormat, data: bytes) -> Pcm16:
    """Wire bytes to int16 samples at the format's rate (a trailing odd PCM byte is ignored)."""
    if fmt is AudioFormat.PCM16:
        return np.frombuffer(data[: len(data) & ~1], dtype="<i2").astype(np.int16)
    return ulaw_decode(data) if fmt is AudioFormat.G711_ULAW else alaw_decode(data)


def encode_24k(fmt: AudioFormat, pcm: Pcm16) -> bytes:
    """24 kHz int16 samples to wire bytes (decimated to 8 kHz for G.711)."""
    if fmt is AudioFormat.PCM16:
        return pcm.astype("<i2").tobytes()
    narrow = decimate_24k_to_8k(pcm)
    return ulaw_encode(narrow) if fmt is AudioFormat.G711_ULAW else alaw_encode(narrow)


def decimate_24k_to_8k(pcm: Pcm16) -> Pcm16:
    """24 kHz to 8 kHz with telcodec's anti-aliasing resampler; output length is round(len(pcm) / 3)."""
    resampler = Resampler(REPLY_SAMPLE_RATE, G711_RATE)
    return np.concatenate([resampler.process(pcm), resampler.flush()])


def _syllable(n: int, index: int) -> npt.NDArray[np.float64]:
    t = np.arange(n) / REPLY_SAMPLE_RATE
    f0_start = 125.0 + 25.0 * math.sin(index * 1.7)
    f0 = f0_start * (1.0 - 0.15 * t / max(t[-1], 1e-9))  # declination within the syllable
    phase = 2 * np.pi * np.cumsum(f0) / REPLY_SAMPLE_RATE
    f1, f2 = VOWEL_FORMANTS[index % len(VOWEL_FORMANTS)]
    wave = np.zeros(n)
    for k in range(1, int(TOP_HARMONIC_HZ // f0_start) + 1):
        freq = k * f0_start
        gain = (
            np.exp(-(((freq - f1) / 150.0) ** 2)) + 0.6 * np.exp(-(((freq - f2) / 200.0) ** 2))
        ) + 0.05 / k
        wave += gain * np.sin(k * phase)
    envelope = np.sin(np.pi * np.arange(n) / n) ** 0.6
    return wave * envelope


def _words() -> list[tuple[int, int]]:
    """An endless-enough list of (kind, ms): kind 1 is a syllable, 0 a pause."""
    pattern: list[tuple[int, int]] = []
    syllable = 0
    for word, count in enumerate(WORD_SYLLABLES * 8):
        for _ in range(count):
            pattern.append((1, SYLLABLE_MS[syllable % len(SYLLABLE_MS)]))
            syllable += 1
        pattern.append((0, PAUSE_MS[word % len(PAUSE_MS)]))
    return pattern


@functools.cache
def synthesize_voice(duration_ms: int) -> Pcm16:
    """The reply voice: exactly `duration_ms` of 24 kHz int16 samples, identical on every call.

    The result is cached and read-only; copy it before changing it.
    """
    total = duration_ms * REPLY_SAMPLE_RATE // 1000
    out = np.zeros(total)
    pos = 0
    index = 0
    while pos < total:
        for kind, ms in _words():
            n = min(ms * REPLY_SAMPLE_RATE // 1000, total - pos)
            if n <= 0:
                break
            if kind:
                out[pos : pos + n] = _syllable(n, index)
                index += 1
            pos += n
    peak = float(np.max(np.abs(out))) or 1.0
    pcm = np.round(out * (PEAK / peak)).astype(np.int16)
    pcm.setflags(write=False)
    return pcm


@functools.cache
def reply_audio(duration_ms: int, fmt: AudioFormat) -> bytes:
    """The reply voice encoded in `fmt`: exactly `duration_ms * fmt.bytes_per_ms` bytes."""
    return encode_24k(fmt, synthesize_voice(duration_ms))
