"""Resampling quality by tone measurement: >= 85 dB image and alias rejection, flat passband."""

from __future__ import annotations

import warnings

import numpy as np
import numpy.typing as npt
import pytest

from telcodec import Resampler, quality

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Pcm16 = npt.NDArray[np.int16]
REQUIRED_DB = 85.0
MAX_RIPPLE_DB = 0.1


def ours(in_rate: int, out_rate: int) -> quality.Convert:
    """Whole-signal conversion through a fresh Resampler, flushed."""

    def convert(x: Pcm16) -> Pcm16:
        r = Resampler(in_rate, out_rate)
        return np.concatenate([r.process(x), r.flush()])

    return convert


def ratecv(in_rate: int, out_rate: int) -> quality.Convert:
    """Whole-signal conversion through audioop.ratecv (linear interpolation, no anti-alias filter)."""

    def convert(x: Pcm16) -> Pcm16:
        out, _ = audioop.ratecv(x.tobytes(), 2, 1, in_rate, out_rate, None)
        return np.frombuffer(out, np.int16)

    return convert


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 24000), (16000, 24000), (8000, 16000)])
def test_upsampling_rejects_images(in_rate: int, out_rate: int) -> None:
    """Every image of every passband tone lies >= 85 dB below the tone."""
    assert quality.image_rejection_db(ours(in_rate, out_rate), in_rate, out_rate) >= REQUIRED_DB


@pytest.mark.parametrize(("in_rate", "out_rate"), [(24000, 8000), (24000, 16000), (16000, 8000)])
def test_downsampling_rejects_aliases(in_rate: int, out_rate: int) -> None:
    """Every stopband tone's alias lies >= 85 dB below the tone."""
    assert quality.alias_rejection_db(ours(in_rate, out_rate), in_rate, out_rate) >= REQUIRED_DB


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000)]
)
def test_passband_is_flat(in_rate: int, out_rate: int) -> None:
    """Gain varies by at most 0.1 dB over the passband (to 3.4 kHz, or 6.8 kHz with 16 kHz)."""
    assert quality.passband_ripple_db(ours(in_rate, out_rate), in_rate, out_rate) <= MAX_RIPPLE_DB


def test_passband_gain_is_unity() -> None:
    """A 1 kHz tone keeps its level through 8k -> 24k (within 0.01 dB)."""
    level = quality.tone_level(ours(8000, 24000)(quality.tone(1000.0, 8000)), 24000, 1000.0)
    assert abs(20 * np.log10(level / quality.AMPLITUDE)) < 0.01


def test_output_is_time_aligned() -> None:
    """The delay-compensated output has no group delay left (the delay is held back, not embedded)."""
    assert abs(quality.group_delay_ms(ours(8000, 24000), 8000, 24000)) < 0.01


def test_audioop_fails_the_alias_test() -> None:
    """audioop.ratecv turns a 9 kHz tone at 24 kHz into a near full-level 1 kHz one: the test can fail."""
    x = quality.tone(9000.0, 24000)
    assert quality.tone_level(ratecv(24000, 8000)(x), 8000, 1000.0) > 0.5 * quality.AMPLITUDE
    assert quality.alias_rejection_db(ratecv(24000, 8000), 24000, 8000, [9000.0]) < 6.0
    assert quality.alias_rejection_db(ours(24000, 8000), 24000, 8000, [9000.0]) >= REQUIRED_DB


def test_audioop_fails_the_image_test() -> None:
    """audioop.ratecv's linear interpolation leaves images far above -85 dB: the image test discriminates."""
    assert quality.image_rejection_db(ratecv(8000, 24000), 8000, 24000) < 40.0
