"""G.711 mu-law and A-law, as whole-array table lookups.

The tables are built once, at import, from the ITU-T G.711 segment rules as written in the classic
Sun reference code that `audioop` also uses, so the results are bit-exact with `audioop.ulaw2lin`,
`lin2ulaw`, `alaw2lin` and `lin2alaw` (width 2) for every code and every 16-bit sample. Encoding is a
single 65,536-entry lookup indexed by the sample's bit pattern; decoding a 256-entry lookup.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALAW_DECODE_TABLE",
    "ALAW_ENCODE_TABLE",
    "ULAW_DECODE_TABLE",
    "ULAW_ENCODE_TABLE",
    "alaw_decode",
    "alaw_encode",
    "as_codes",
    "as_pcm16",
    "ulaw_decode",
    "ulaw_encode",
]

ULAW_BIAS = 0x84
ULAW_CLIP = 8159  # largest magnitude in the 14-bit domain mu-law encodes
ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)

Pcm16 = npt.NDArray[np.int16]
Codes = npt.NDArray[np.uint8]


def _build_ulaw_decode() -> Pcm16:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0x0F) << 3) + ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, ULAW_BIAS - t, t - ULAW_BIAS).astype(np.int16)


def _build_alaw_decode() -> Pcm16:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _all_samples() -> npt.NDArray[np.int32]:
    """Every int16 value, ordered by its uint16 bit pattern, so a table is indexed by `pcm.view(uint16)`."""
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _build_ulaw_encode() -> Codes:
    v = _all_samples() >> 2  # the reference works on 14-bit samples (arithmetic shift)
    mask = np.where(v < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(v), ULAW_CLIP) + (ULAW_BIAS >> 2)
    seg = np.searchsorted(ULAW_SEGMENT_ENDS, mag, side="left")
    code = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


def _build_alaw_encode() -> Codes:
    v = _all_samples() >> 3  # 13-bit samples
    mask = np.where(v >= 0, 0xD5, 0x55)
    mag = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(ALAW_SEGMENT_ENDS, mag, side="left")
    quant = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    code = (seg << 4) | quant
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


ULAW_DECODE_TABLE: Pcm16 = _build_ulaw_decode()
ALAW_DECODE_TABLE: Pcm16 = _build_alaw_decode()
ULAW_ENCODE_TABLE: Codes = _build_ulaw_encode()
ALAW_ENCODE_TABLE: Codes = _build_alaw_encode()
for _table in (ULAW_DECODE_TABLE, ALAW_DECODE_TABLE, ULAW_ENCODE_TABLE, ALAW_ENCODE_TABLE):
    _table.setflags(write=False)


def as_codes(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> Codes:
    """View G.711 bytes as a uint8 array without copying; reject arrays of any other dtype."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise TypeError(f"G.711 codes must be uint8, got {data.dtype}")
        return data
    return np.frombuffer(data, dtype=np.uint8)


def as_pcm16(pcm: npt.NDArray[np.int16] | bytes | bytearray | memoryview) -> Pcm16:
    """View PCM16 (native-endian int16 array, or little-endian bytes) as int16 samples.

    Raises ValueError for a byte string with an odd length and TypeError for any dtype but int16:
    converting floats or wider integers silently would hide a caller's scaling bug.
    """
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM16 samples must be int16, got {pcm.dtype}")
        return pcm
    if len(pcm) % 2:
        raise ValueError(f"PCM16 byte string has an odd length ({len(pcm)} bytes): not whole samples")
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)


def ulaw_decode(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> Pcm16:
    """Decode mu-law bytes to int16 samples (a new array; one sample per byte)."""
    return ULAW_DECODE_TABLE[as_codes(data)]


def alaw_decode(data: bytes | bytearray | memoryview | npt.NDArray[np.uint8]) -> Pcm16:
    """Decode A-law bytes to int16 samples (a new array; one sample per byte)."""
    return ALAW_DECODE_TABLE[as_codes(data)]


def ulaw_encode(pcm: npt.NDArray[np.int16] | bytes | bytearray | memoryview) -> bytes:
    """Encode int16 samples (or little-endian PCM16 bytes) to mu-law bytes."""
    return ULAW_ENCODE_TABLE[as_pcm16(pcm).view(np.uint16)].tobytes()


def alaw_encode(pcm: npt.NDArray[np.int16] | bytes | bytearray | memoryview) -> bytes:
    """Encode int16 samples (or little-endian PCM16 bytes) to A-law bytes."""
    return ALAW_ENCODE_TABLE[as_pcm16(pcm).view(np.uint16)].tobytes()
