"""G.711 mu-law and A-law: bit-exact against audioop for every code and every 16-bit sample."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from telcodec import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Codec = Callable[[Any], Any]
ALL_CODES = bytes(range(256))
ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)


def test_ulaw_decode_matches_audioop_for_all_codes() -> None:
    """Every one of the 256 mu-law codes decodes to audioop.ulaw2lin's sample."""
    assert ulaw_decode(ALL_CODES).tobytes() == audioop.ulaw2lin(ALL_CODES, 2)


def test_alaw_decode_matches_audioop_for_all_codes() -> None:
    """Every one of the 256 A-law codes decodes to audioop.alaw2lin's sample."""
    assert alaw_decode(ALL_CODES).tobytes() == audioop.alaw2lin(ALL_CODES, 2)


def test_ulaw_encode_matches_audioop_for_all_samples() -> None:
    """Every int16 value encodes to audioop.lin2ulaw's mu-law code."""
    assert ulaw_encode(ALL_SAMPLES) == audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2)


def test_alaw_encode_matches_audioop_for_all_samples() -> None:
    """Every int16 value encodes to audioop.lin2alaw's A-law code."""
    assert alaw_encode(ALL_SAMPLES) == audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2)


@pytest.mark.parametrize("decode", [ulaw_decode, alaw_decode])
def test_decode_accepts_bytes_and_uint8_arrays_alike(decode: Codec) -> None:
    """Decoding bytes, a bytearray, a memoryview or a uint8 array gives the same int16 samples."""
    ref = decode(ALL_CODES)
    assert ref.dtype == np.int16
    for data in (bytearray(ALL_CODES), memoryview(ALL_CODES), np.frombuffer(ALL_CODES, np.uint8)):
        assert np.array_equal(decode(data), ref)


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_encode_accepts_little_endian_bytes_like_int16(encode: Codec) -> None:
    """Encoding little-endian PCM16 bytes gives the same codes as encoding the int16 array."""
    assert encode(ALL_SAMPLES.astype("<i2").tobytes()) == encode(ALL_SAMPLES)


@pytest.mark.parametrize("codec", [ulaw_decode, alaw_decode, ulaw_encode, alaw_encode])
def test_empty_input_gives_empty_output(codec: Codec) -> None:
    """Empty input converts to empty output rather than failing."""
    assert len(codec(b"")) == 0


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_encode_rejects_non_int16_arrays(encode: Codec) -> None:
    """A float or int32 array is a TypeError: silently converting would hide a scaling bug."""
    for bad in (np.zeros(4, np.float32), np.zeros(4, np.int32)):
        with pytest.raises(TypeError, match="int16"):
            encode(bad)


@pytest.mark.parametrize("decode", [ulaw_decode, alaw_decode])
def test_decode_rejects_non_uint8_arrays(decode: Codec) -> None:
    """An int16 array of codes is a TypeError."""
    with pytest.raises(TypeError, match="uint8"):
        decode(np.zeros(4, np.int16))


@pytest.mark.parametrize("encode", [ulaw_encode, alaw_encode])
def test_encode_rejects_odd_length_bytes(encode: Codec) -> None:
    """PCM16 bytes of odd length are a ValueError: they are not whole samples."""
    with pytest.raises(ValueError, match="odd"):
        encode(b"\x00\x01\x02")
