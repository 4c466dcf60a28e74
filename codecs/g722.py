"""G.722 (ITU-T, 64 kbit/s): wideband audio for SIP, 16 kHz PCM16 <-> G.722 codes, one stream per object.

G.722 splits 16 kHz audio into two sub-bands and codes each with ADPCM: every pair of samples becomes one
byte, so 20 ms (320 samples) is 160 bytes, and the codec carries state from frame to frame. An encoder or
a decoder therefore belongs to one direction of one call: make one per stream, feed it the stream in
order, and never share it.

The work is done in C by libg722 (the `G722` package from PyPI: Sippy Software's packaging of the ITU
reference-derived code from spandsp; public domain, bit-exact, passes the ITU test vectors). Here it is only
wrapped so that both sides speak little-endian PCM16 bytes, like the rest of telcodec.

RTP quirk (RFC 3551 section 4.5.2): G.722's RTP clock rate is 8000 although the audio is sampled at
16 kHz, so one byte of payload is one RTP timestamp unit, exactly as with G.711.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from G722 import G722

__all__ = ["BIT_RATE", "BYTES_PER_MS", "RATE", "SILENCE_CODE", "G722Decoder", "G722Encoder"]

RATE = 16000  # the audio's sample rate (the RTP clock is 8000: see the module docstring)
BIT_RATE = 64000  # mode 1, the only one SIP peers use (RFC 3551 names no other)
BYTES_PER_MS = BIT_RATE // 8 // 1000  # 8: a 20 ms frame is 160 bytes
# A code byte that decodes to (nearly) nothing: |sample| <= 3 from a fresh decoder, about 50 right after
# loud speech. Used to fill gaps in received audio; the encoder's own output for silence varies.
SILENCE_CODE = 0xFF


def _samples(pcm: bytes | bytearray | memoryview | npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
    """PCM16 (little-endian bytes or an int16 array) as native int16 samples, an even number of them."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM16 samples must be int16, got {pcm.dtype}")
        samples = pcm
    else:
        if len(pcm) % 2:
            raise ValueError(f"PCM16 byte string has an odd length ({len(pcm)} bytes): not whole samples")
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)
    if len(samples) % 2:
        raise ValueError(f"G.722 codes samples in pairs: got {len(samples)} samples")
    return samples


class G722Encoder:
    """One outgoing G.722 stream: `encode()` successive 16 kHz PCM16 chunks (even sample counts)."""

    def __init__(self) -> None:
        self._codec = G722(RATE, BIT_RATE)

    def encode(self, pcm: bytes | bytearray | memoryview | npt.NDArray[np.int16]) -> bytes:
        """The G.722 codes of `pcm` (one byte per two samples), continuing the stream."""
        samples = _samples(pcm)
        if not len(samples):
            return b""
        return self._codec.encode(np.ascontiguousarray(samples))


class G722Decoder:
    """One incoming G.722 stream: `decode()` successive payloads, lost ones replaced (`SILENCE_CODE`)."""

    def __init__(self) -> None:
        self._codec = G722(RATE, BIT_RATE)

    def decode(self, codes: bytes | bytearray | memoryview) -> bytes:
        """16 kHz little-endian PCM16 for `codes` (two samples per byte), continuing the stream."""
        if not len(codes):
            return b""
        samples = np.frombuffer(self._codec.decode(bytes(codes)), dtype=np.int16)
        return samples.astype("<i2", copy=False).tobytes()
