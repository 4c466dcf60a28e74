"""The local speech-start detector: energy against a noise floor, attack, hangover and the echo guard."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from gateway.call.localvad import SILENCE_DBFS, LocalVad, LocalVadSettings, frame_dbfs

RATES = [8000, 24_000]


def tone(dbfs: float, ms: int, rate: int, hz: float = 440.0) -> NDArray[np.int16]:
    """A sine whose RMS level is `dbfs`."""
    amplitude = 32768.0 * 10 ** (dbfs / 20) * np.sqrt(2)
    t = np.arange(ms * rate // 1000) / rate
    samples: NDArray[np.int16] = np.round(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return samples


def noise(dbfs: float, ms: int, rate: int, seed: int = 1) -> NDArray[np.int16]:
    """White noise whose RMS level is about `dbfs`."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0.0, 32768.0 * 10 ** (dbfs / 20), ms * rate // 1000)).astype(np.int16)


def run(vad: LocalVad, signal: NDArray[np.int16], rate: int, bot_audible: bool = False) -> list[int]:
    """Feed `signal` in 20 ms frames; return the indices of the frames that reported a start."""
    n = rate // 50
    return [
        i
        for i in range(len(signal) // n)
        if vad.on_frame(signal[i * n : (i + 1) * n], bot_audible=bot_audible)
    ]


def test_frame_level_in_dbfs() -> None:
    """RMS level: full-scale square 0 dBFS, half-scale sine -9.03 dBFS, silence a fixed floor."""
    square = np.array([32767, -32768] * 80, dtype=np.int16)
    assert frame_dbfs(square) == pytest.approx(0.0, abs=1e-3)
    assert frame_dbfs(tone(-9.03, 20, 8000)) == pytest.approx(-9.03, abs=0.02)
    assert frame_dbfs(np.zeros(160, dtype=np.int16)) == SILENCE_DBFS
    assert frame_dbfs(np.zeros(0, dtype=np.int16)) == SILENCE_DBFS


@pytest.mark.parametrize("rate", RATES)
def test_line_noise_alone_never_starts_speech(rate: int) -> None:
    """Five seconds of quiet line noise produce no speech start."""
    assert run(LocalVad(rate), noise(-60, 5000, rate), rate) == []


@pytest.mark.parametrize("rate", RATES)
def test_speech_starts_after_the_attack_time(rate: int) -> None:
    """A loud onset after noise is reported on its third 20 ms frame (60 ms attack), once."""
    signal = np.concatenate([noise(-60, 1000, rate), tone(-20, 500, rate)])
    vad = LocalVad(rate)
    assert run(vad, signal, rate) == [50 + 2]
    assert vad.speaking


@pytest.mark.parametrize("rate", RATES)
def test_click_shorter_than_attack_is_ignored(rate: int) -> None:
    """A 40 ms burst is not speech."""
    signal = np.concatenate([noise(-60, 500, rate), tone(-20, 40, rate), noise(-60, 500, rate, seed=2)])
    assert run(LocalVad(rate), signal, rate) == []


def test_pause_within_hangover_is_the_same_utterance() -> None:
    """A 100 ms pause between words does not start speech again; a 400 ms pause does."""
    rate = 8000
    word = tone(-20, 200, rate)
    short = np.concatenate([noise(-60, 500, rate), word, noise(-60, 100, rate, seed=2), word])
    long = np.concatenate([noise(-60, 500, rate), word, noise(-60, 400, rate, seed=2), word])
    assert run(LocalVad(rate), short, rate) == [25 + 2]
    assert run(LocalVad(rate), long, rate) == [25 + 2, 25 + 10 + 20 + 2]


def test_echo_guard_raises_the_threshold_while_the_bot_is_audible() -> None:
    """A level 20 dB over the noise starts speech when the bot is silent but not while it is audible."""
    rate = 8000
    signal = np.concatenate([noise(-60, 500, rate), tone(-40, 300, rate)])
    assert run(LocalVad(rate), signal, rate, bot_audible=True) == []
    assert run(LocalVad(rate), signal, rate, bot_audible=False) == [25 + 2]
    loud = np.concatenate([noise(-60, 500, rate), tone(-25, 300, rate)])
    assert run(LocalVad(rate), loud, rate, bot_audible=True) == [25 + 2]


def test_threshold_values() -> None:
    """Threshold is max(min level, floor + margin), plus the echo guard while the bot is audible."""
    vad = LocalVad(8000, LocalVadSettings(margin_db=12, echo_guard_db=10, min_dbfs=-45))
    vad.on_frame(tone(-30, 20, 8000), bot_audible=False)
    assert vad.threshold_dbfs(bot_audible=False) == pytest.approx(-18.0, abs=0.05)
    assert vad.threshold_dbfs(bot_audible=True) == pytest.approx(-8.0, abs=0.05)
    quiet = LocalVad(8000)
    quiet.on_frame(np.zeros(160, dtype=np.int16), bot_audible=False)
    assert quiet.threshold_dbfs(bot_audible=False) == -45.0


def test_noise_floor_rises_slowly_and_falls_at_once() -> None:
    """The floor climbs 2 dB per second under a louder signal and drops to a quieter frame immediately."""
    rate = 8000
    vad = LocalVad(rate)
    run(vad, noise(-60, 20, rate), rate)
    start = vad.noise_floor_dbfs
    assert start is not None
    run(vad, tone(-20, 1000, rate), rate)
    assert vad.noise_floor_dbfs == pytest.approx(start + 2.0, abs=1e-9)
    run(vad, tone(-70, 20, rate), rate)
    assert vad.noise_floor_dbfs == pytest.approx(-70.0, abs=0.05)


def test_steady_loud_noise_is_absorbed() -> None:
    """A hum appearing mid-call is one start; once the floor has risen, speech over it starts again."""
    rate = 8000
    signal = np.concatenate([noise(-60, 500, rate), tone(-30, 12_000, rate, hz=120.0), tone(-5, 200, rate)])
    vad = LocalVad(rate)
    assert run(vad, signal, rate) == [25 + 2, 25 + 600 + 2]
