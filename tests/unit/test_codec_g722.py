"""G.722 (telcodec.g722): frame sizes, pitch and wideband content through a round trip, streaming state."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telcodec.g722 import BYTES_PER_MS, RATE, SILENCE_CODE, G722Decoder, G722Encoder

FRAME_SAMPLES = RATE * 20 // 1000  # 320 samples of 16 kHz audio per 20 ms


def tone(hz: float, ms: int, level: float = 0.3) -> bytes:
    """A sine at `hz` as 16 kHz little-endian PCM16."""
    samples = np.sin(2 * np.pi * hz * np.arange(ms * RATE // 1000) / RATE) * level * 32767
    return samples.astype("<i2").tobytes()


def round_trip(pcm: bytes, frame_bytes: int = 2 * FRAME_SAMPLES) -> bytes:
    """`pcm` encoded and decoded 20 ms at a time, as the SIP channel does."""
    encoder, decoder = G722Encoder(), G722Decoder()
    chunks = [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]
    return b"".join(decoder.decode(encoder.encode(chunk)) for chunk in chunks)


def spectrum_peak(pcm: bytes) -> float:
    """The strongest frequency of 16 kHz PCM16, to a fraction of a bin (parabolic interpolation)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    magnitude = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    k = int(np.argmax(magnitude[1:-1])) + 1
    a, b, c = np.log(magnitude[k - 1 : k + 2] + 1e-9)
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / len(samples))


def test_frame_sizes() -> None:
    """20 ms of 16 kHz audio (640 bytes of PCM16) is 160 bytes of G.722 (64 kbit/s), and back."""
    encoder, decoder = G722Encoder(), G722Decoder()
    codes = encoder.encode(bytes(2 * FRAME_SAMPLES))
    assert len(codes) == 20 * BYTES_PER_MS == 160
    assert len(decoder.decode(codes)) == 640
    assert encoder.encode(b"") == b""
    assert decoder.decode(b"") == b""


@pytest.mark.parametrize("hz", [300, 600, 1000, 3000, 5000, 7000])
def test_round_trip_keeps_the_pitch(hz: int) -> None:
    """A tone comes back at its own frequency (within 1 Hz), from telephone band to 7 kHz."""
    heard = round_trip(tone(hz, 1000))
    assert abs(spectrum_peak(heard[len(heard) // 5 :]) - hz) < 1.0


def test_content_above_4khz_survives() -> None:
    """What G.711 cannot carry at all (6 kHz) keeps most of its level through G.722 (the upper sub-band)."""
    sent = tone(6000, 500)
    heard = np.frombuffer(round_trip(sent), dtype="<i2")[1600:].astype(np.float64)
    level_in = np.sqrt(np.mean(np.frombuffer(sent, dtype="<i2")[1600:].astype(np.float64) ** 2))
    assert np.sqrt(np.mean(heard**2)) > 0.7 * level_in


def test_round_trip_is_faithful() -> None:
    """A mix of a low and a high tone comes back with a signal-to-noise ratio above 20 dB (after aligning
    for the codec's delay, a few samples)."""
    sent = np.frombuffer(tone(440, 1000), dtype="<i2").astype(np.float64)
    sent += np.frombuffer(tone(5500, 1000, 0.1), dtype="<i2")
    pcm = np.clip(sent, -32768, 32767).astype("<i2").tobytes()
    heard = np.frombuffer(round_trip(pcm), dtype="<i2").astype(np.float64)
    best = max(range(40), key=lambda d: float(np.dot(sent[2000 : 14000 - d], heard[2000 + d : 14000])))
    error = heard[2000 + best : 14000] - sent[2000 : 14000 - best]
    snr = 10 * np.log10(np.mean(sent[2000:14000] ** 2) / np.mean(error**2))
    assert snr > 20
    assert best < 40


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=20))
def test_streaming_does_not_depend_on_chunking(sizes: list[int]) -> None:
    """The encoder and the decoder carry their state across calls: any split into chunks (whole sample
    pairs) gives the same bytes as one call."""
    pcm = tone(1234, 200)
    whole_codes = G722Encoder().encode(pcm)
    encoder, decoder, offset, codes = G722Encoder(), G722Decoder(), 0, b""
    for size in sizes:
        codes += encoder.encode(pcm[offset : offset + 4 * size])
        offset += 4 * size
    codes += encoder.encode(pcm[offset:])
    assert codes == whole_codes
    decoded = b"".join(decoder.decode(codes[i : i + 37]) for i in range(0, len(codes), 37))
    assert decoded == G722Decoder().decode(whole_codes)


def test_silence_code_decodes_to_near_silence() -> None:
    """The jitter buffer's filler for lost G.722 frames decodes to almost nothing, also right after speech."""
    decoder = G722Decoder()
    assert np.abs(np.frombuffer(decoder.decode(bytes([SILENCE_CODE]) * 800), dtype="<i2")).max() < 10
    decoder.decode(G722Encoder().encode(tone(800, 200, 0.9)))
    after = np.frombuffer(decoder.decode(bytes([SILENCE_CODE]) * 800), dtype="<i2")
    assert np.abs(after[320:]).max() < 200  # -44 dBFS within 20 ms


def test_odd_input_is_refused() -> None:
    """G.722 codes pairs of samples: half a sample or an odd sample count is a caller's bug, refused."""
    with pytest.raises(ValueError, match="odd length"):
        G722Encoder().encode(b"\x00" * 3)
    with pytest.raises(ValueError, match="pairs"):
        G722Encoder().encode(b"\x00" * 6)
    with pytest.raises(TypeError, match="int16"):
        G722Encoder().encode(np.zeros(4, dtype=np.int32))  # type: ignore[arg-type]
