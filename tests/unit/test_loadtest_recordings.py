"""WAV reading: mu-law as it is, PCM at 8/16/24 kHz resampled to 8 kHz, other rates refused clearly."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from gateway.emulator.vad import EnergyVad, VadSettings, VadSpeechStarted
from gateway.loadtest.recordings import (
    FRAME_BYTES,
    SILENCE_FRAME,
    Recording,
    RecordingError,
    decode_wav,
    load_recording,
)
from gateway.loadtest.script import SHIPPED_RECORDINGS
from telcodec import Resampler, alaw_encode, ulaw_decode, ulaw_encode

RECORDINGS = SHIPPED_RECORDINGS


def pcm_wav(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def g711_wav(data: bytes, tag: int) -> bytes:
    fmt = struct.pack("<HHIIHHH", tag, 1, 8000, 8000, 1, 8, 0)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    if len(data) % 2:
        body += b"\x00"
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(rate: int, ms: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return np.round(8000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def test_mulaw_wav_is_read_byte_for_byte() -> None:
    """A mu-law WAV (format 7, odd length, padded chunk) gives exactly its data bytes."""
    data = bytes(range(255))  # odd length: the chunk carries a pad byte
    assert decode_wav(g711_wav(data, 7)) == data


def test_alaw_wav_is_transcoded_to_mulaw() -> None:
    """An A-law WAV comes out as the mu-law encoding of the same samples."""
    samples = tone(8000, 100)
    assert decode_wav(g711_wav(alaw_encode(samples), 6)) == ulaw_encode(
        np.frombuffer(_alaw_roundtrip(samples), dtype=np.int16)
    )


def _alaw_roundtrip(samples: np.ndarray) -> bytes:
    from telcodec import alaw_decode

    return alaw_decode(alaw_encode(samples)).tobytes()


def test_pcm_16k_is_resampled_to_8k() -> None:
    """16 kHz PCM is resampled with telcodec's resampler to half as many mu-law samples."""
    samples = tone(16000, 200)
    resampler = Resampler(16000, 8000)
    expected = ulaw_encode(np.concatenate([resampler.process(samples), resampler.flush()]))
    out = decode_wav(pcm_wav(samples, 16000))
    assert len(out) == 1600
    assert out == expected


def test_pcm_8k_stereo_is_averaged() -> None:
    """Stereo channels are averaged into one."""
    left, right = tone(8000, 40), np.zeros(320, dtype=np.int16)
    stereo = np.column_stack([left, right]).reshape(-1)
    assert decode_wav(pcm_wav(stereo, 8000, channels=2)) == ulaw_encode(np.round(left / 2).astype(np.int16))


def test_pcm_44k1_is_refused_with_a_conversion_hint() -> None:
    """44.1 kHz is refused (not silently resampled): the message says which rates work and how to convert."""
    with pytest.raises(RecordingError) as error:
        decode_wav(pcm_wav(tone(44100, 50), 44100), "/x/music.wav")
    assert "44100 Hz is not supported (8000, 16000 or 24000 Hz only)" in str(error.value)
    assert "sox music.wav -r 8000 -c 1 -e mu-law out.wav" in str(error.value)


def test_garbage_and_unsupported_encodings_are_refused() -> None:
    """Not RIFF, a missing data chunk and 24-bit PCM each get their own message."""
    with pytest.raises(RecordingError, match="not a RIFF/WAVE file"):
        decode_wav(b"ID3 not a wav")
    with pytest.raises(RecordingError, match="no 'data' chunk"):
        decode_wav(g711_wav(b"", 7)[:36])
    fmt24 = pcm_wav(tone(8000, 20), 8000).replace(struct.pack("<HH", 2, 16), struct.pack("<HH", 3, 24), 1)
    with pytest.raises(RecordingError, match="format tag 1, 24 bits"):
        decode_wav(fmt24)


def test_shipped_recordings_are_short_8k_mulaw_speech() -> None:
    """The shipped recordings are 8 kHz mu-law, under 40 KB, with speech that ends before their end."""
    paths = sorted(RECORDINGS.glob("*.wav"))
    assert len(paths) >= 3
    for path in paths:
        recording = load_recording(path)
        assert path.stat().st_size < 40_000
        assert path.read_bytes()[20:22] == b"\x07\x00"  # format tag 7: mu-law
        assert 0 < recording.last_voiced_frame < recording.frames


def test_recording_frames_are_padded_and_pre_encoded() -> None:
    """Audio is cut into 160-byte frames, the last padded with mu-law silence, each base64-encoded once."""
    recording = Recording.from_ulaw("x", b"\x00" * 170)
    assert recording.frames == 2
    assert recording.ulaw[170:] == b"\xff" * (2 * FRAME_BYTES - 170)
    assert recording.payloads[0] == "AAAA" * 53 + "AA=="
    assert recording.last_voiced_frame == 1  # 0x00 is full scale: both frames are loud


@pytest.mark.parametrize(("dbfs", "voiced"), [(-39.5, True), (-40.5, False), (-90.0, False)])
def test_voiced_means_what_the_emulator_vad_hears(dbfs: float, voiced: bool) -> None:
    """A frame just above -40 dBFS is the recording's last voiced frame and speech to the emulator's
    default VAD; just below, it is neither (both measure the level with the same `frame_dbfs`)."""
    t = np.arange(FRAME_BYTES) / 8000
    amplitude = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)  # 400 Hz: whole periods, so RMS is exact
    frame = ulaw_encode(np.round(amplitude * np.sin(2 * np.pi * 400 * t)).astype(np.int16))
    recording = Recording.from_ulaw("x", b"\x00" * FRAME_BYTES + frame + SILENCE_FRAME)
    assert recording.last_voiced_frame == (1 if voiced else 0)
    events = EnergyVad(VadSettings()).feed(ulaw_decode(frame), 8000)
    assert events == ([VadSpeechStarted(audio_start_ms=0, onset_ms=0)] if voiced else [])
