"""WireFormat: the supported (encoding, rate) pairs, their sizes, their silence, and what is refused."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

import telcodec
from telcodec import SESSION_FORMAT, SUPPORTED_FORMATS, Encoding, WireFormat, alaw_decode, ulaw_decode

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

UNSUPPORTED = [("ulaw", 16000), ("alaw", 16000), ("alaw", 24000), ("l16", 44100), ("l16", 48000)]
UNKNOWN = [("opus", 8000), ("ULAW", 8000), ("pcmu", 8000), ("", 8000), ("l16", 8000.0)]


def test_supported_formats_are_the_providers_pairs() -> None:
    """G.711 is supported at 8 kHz only, L16 at 8, 16 and 24 kHz, and nothing else."""
    assert [str(f) for f in SUPPORTED_FORMATS] == [
        "ulaw/8000",
        "alaw/8000",
        "l16/8000",
        "l16/16000",
        "l16/24000",
    ]
    assert WireFormat(Encoding.L16, 24000) == SESSION_FORMAT


@pytest.mark.parametrize(
    ("fmt", "per_ms", "frame"),
    [
        (WireFormat(Encoding.ULAW, 8000), 8, 160),
        (WireFormat(Encoding.ALAW, 8000), 8, 160),
        (WireFormat(Encoding.L16, 8000), 16, 320),
        (WireFormat(Encoding.L16, 16000), 32, 640),
        (WireFormat(Encoding.L16, 24000), 48, 960),
    ],
)
def test_sizes(fmt: WireFormat, per_ms: int, frame: int) -> None:
    """bytes_per_ms and frame_bytes(20) give the providers' 20 ms frame sizes; duration_ms inverts them."""
    assert fmt.bytes_per_ms == per_ms
    assert fmt.frame_bytes(20) == frame
    assert fmt.duration_ms(frame) == 20.0
    assert fmt.duration_ms(frame + 1) == 20.0 + (0.0 if fmt.bytes_per_sample == 2 else 1000 / fmt.rate)
    assert fmt.bytes_per_sample == (2 if fmt.encoding is Encoding.L16 else 1)


def test_silence_decodes_to_the_quietest_sample() -> None:
    """Silence is mu-law 0xFF (decodes to 0), A-law 0xD5 (+8, what lin2alaw gives for 0) and L16 zeros."""
    ulaw = WireFormat(Encoding.ULAW, 8000).silence(20)
    alaw = WireFormat(Encoding.ALAW, 8000).silence(20)
    assert ulaw == b"\xff" * 160
    assert not ulaw_decode(ulaw).any()
    assert alaw == b"\xd5" * 160 == audioop.lin2alaw(bytes(320), 2)
    assert set(alaw_decode(alaw).tolist()) == {8}
    assert WireFormat(Encoding.L16, 16000).silence(20) == bytes(640)
    assert WireFormat(Encoding.ULAW, 8000).silence(0) == b""


def test_of_takes_names_and_normalizes_them() -> None:
    """WireFormat.of and an untyped WireFormat("alaw", ...) both hold the Encoding member, not the string."""
    for fmt in (WireFormat.of("alaw", 8000), WireFormat("alaw", 8000)):  # type: ignore[arg-type]
        assert fmt.encoding is Encoding.ALAW
        assert fmt == WireFormat(Encoding.ALAW, 8000)
        assert hash(fmt) == hash(WireFormat(Encoding.ALAW, 8000))
        assert str(fmt) == "alaw/8000"


def test_is_frozen() -> None:
    """A format cannot be changed after it is made (it keys dispatch tables)."""
    fmt = WireFormat(Encoding.L16, 16000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.rate = 8000  # type: ignore[misc]


@pytest.mark.parametrize(("encoding", "rate"), UNSUPPORTED + UNKNOWN)
def test_unsupported_pairs_are_refused_by_name(encoding: str, rate: int) -> None:
    """An unknown encoding or an unsupported rate is a ValueError naming the pair and the supported ones."""
    with pytest.raises(
        ValueError, match=rf"unsupported wire format {encoding}/{rate}: supported are ulaw/8000"
    ):
        WireFormat.of(encoding, rate)


def test_exported() -> None:
    """The format helpers are part of telcodec's public surface."""
    assert {"Encoding", "WireFormat", "SUPPORTED_FORMATS", "SESSION_FORMAT"} <= set(telcodec.__all__)
