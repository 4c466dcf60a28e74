"""Caller recordings: WAV files read into 8 kHz mu-law and pre-encoded as Twilio `media` payloads.

Accepted: mu-law WAV (format tag 7), A-law WAV (6), and PCM WAV (1, or WAVE_FORMAT_EXTENSIBLE with a
PCM sub-format) of 8 or 16 bits; mono or stereo (channels are averaged); at 8, 16 or 24 kHz (16 and
24 kHz are resampled with `telcodec.Resampler`). Any other rate (44.1 kHz, 48 kHz) is refused with a
message saying how to convert the file: a load generator should not hide a resampling of its own.

A `Recording` is built once per file and shared by every call that plays it: each 20 ms frame's base64
payload is computed once, and its last voiced frame (RMS above -40 dBFS) is found once, so response
latency can be measured from the end of speech rather than from trailing silence.
"""

from __future__ import annotations

import base64
import functools
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.call.localvad import frame_dbfs
from gateway.loadtest.wires import WireFrame
from telcodec import Encoding, Resampler, WireFormat, alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SILENCE_FRAME",
    "SILENCE_PAYLOAD",
    "Recording",
    "RecordingError",
    "decode_wav",
    "frames_in",
    "load_recording",
    "silence_in",
    "ulaw_in",
    "wire_frames",
]

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
SAMPLE_RATE = 8000
SUPPORTED_RATES = (8000, 16000, 24000)
SILENCE_FRAME = b"\xff" * FRAME_BYTES
SILENCE_PAYLOAD = base64.b64encode(SILENCE_FRAME).decode("ascii")
VOICED_DBFS = -40.0  # the emulator's and the realtime API's default VAD threshold (0.5)

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_ALAW = 6
WAVE_FORMAT_MULAW = 7
WAVE_FORMAT_EXTENSIBLE = 0xFFFE


class RecordingError(ValueError):
    """A recording that cannot be used; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class Recording:
    """A caller recording as 20 ms mu-law frames (the last one padded with silence)."""

    name: str
    ulaw: bytes
    payloads: tuple[str, ...]  # base64 of each 160-byte frame, ready for a `media` message
    last_voiced_frame: int  # index of the last frame with speech (-1: none)

    @property
    def frames(self) -> int:
        """Number of 20 ms frames."""
        return len(self.payloads)

    @property
    def duration_ms(self) -> int:
        """Duration in milliseconds (whole frames)."""
        return self.frames * FRAME_MS

    @classmethod
    def from_ulaw(cls, name: str, ulaw: bytes) -> Recording:
        """Cut mu-law audio into frames, pre-encode them and find the last voiced one."""
        pad = (-len(ulaw)) % FRAME_BYTES
        padded = ulaw + b"\xff" * pad
        frames = [padded[i : i + FRAME_BYTES] for i in range(0, len(padded), FRAME_BYTES)]
        payloads = tuple(base64.b64encode(frame).decode("ascii") for frame in frames)
        return cls(name, padded, payloads, _last_voiced(padded))


def ulaw_in(ulaw: bytes, fmt: WireFormat) -> bytes:
    """8 kHz mu-law audio in another wire format: decoded, resampled whole (one resampler, no seams) and
    encoded; mu-law 8 kHz comes back as it is. Its length is the same duration (rounded to a sample)."""
    if fmt.encoding is Encoding.ULAW:
        return ulaw
    pcm = ulaw_decode(ulaw)
    if fmt.encoding is Encoding.ALAW:
        return alaw_encode(pcm)
    if fmt.rate != SAMPLE_RATE:
        resampler = Resampler(SAMPLE_RATE, fmt.rate)
        pcm = np.concatenate([resampler.process(pcm), resampler.flush()])
    return pcm.astype("<i2").tobytes()


def wire_frames(audio: bytes, fmt: WireFormat) -> tuple[WireFrame, ...]:
    """`audio` (in `fmt`) cut into 20 ms frames, each with its base64."""
    size = fmt.frame_bytes(FRAME_MS)
    return tuple(WireFrame.of(audio[i : i + size]) for i in range(0, len(audio), size))


@functools.lru_cache(maxsize=64)
def frames_in(recording: Recording, fmt: WireFormat) -> tuple[WireFrame, ...]:
    """The recording's 20 ms frames in another wire format, converted once per format and shared: exactly
    as many frames as the recording has, each exactly 20 ms."""
    size = fmt.frame_bytes(FRAME_MS)
    data = ulaw_in(recording.ulaw, fmt)[: recording.frames * size]
    return wire_frames(data.ljust(recording.frames * size, fmt.silence(1)[:1]), fmt)


@functools.lru_cache(maxsize=16)
def silence_in(fmt: WireFormat) -> WireFrame:
    """20 ms of silence in `fmt`."""
    return WireFrame.of(fmt.silence(FRAME_MS))


def _last_voiced(ulaw: bytes) -> int:
    # The level measure of the emulator's VAD and the gateway's local VAD, so "voiced" means the same here.
    frames = ulaw_decode(ulaw).reshape(-1, FRAME_BYTES)
    for index in range(len(frames) - 1, -1, -1):
        if frame_dbfs(frames[index]) >= VOICED_DBFS:
            return index
    return -1


def _chunks(data: bytes, where: str) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise RecordingError(f"{where}: not a RIFF/WAVE file")
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        tag, size = data[offset : offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        body = data[offset + 8 : offset + 8 + size]
        chunks.setdefault(tag, body)
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    for tag in (b"fmt ", b"data"):
        if tag not in chunks:
            raise RecordingError(f"{where}: no {tag.decode().strip()!r} chunk")
    return chunks


def _to_mono(samples: npt.NDArray[np.int32], channels: int, where: str) -> npt.NDArray[np.int16]:
    if channels not in (1, 2):
        raise RecordingError(f"{where}: {channels} channels; only mono or stereo is supported")
    usable = len(samples) - len(samples) % channels
    mono = samples[:usable].reshape(-1, channels).mean(axis=1)
    out: npt.NDArray[np.int16] = np.clip(np.round(mono), -32768, 32767).astype(np.int16)
    return out


def _pcm_samples(fmt_tag: int, bits: int, body: bytes, where: str) -> npt.NDArray[np.int32]:
    if fmt_tag == WAVE_FORMAT_MULAW and bits == 8:
        return ulaw_decode(body).astype(np.int32)
    if fmt_tag == WAVE_FORMAT_ALAW and bits == 8:
        return alaw_decode(body).astype(np.int32)
    if fmt_tag == WAVE_FORMAT_PCM and bits == 16:
        return np.frombuffer(body[: len(body) - len(body) % 2], dtype="<i2").astype(np.int32)
    if fmt_tag == WAVE_FORMAT_PCM and bits == 8:
        return (np.frombuffer(body, dtype=np.uint8).astype(np.int32) - 128) * 256
    raise RecordingError(
        f"{where}: unsupported encoding (format tag {fmt_tag}, {bits} bits); use mu-law, A-law or "
        "8/16-bit PCM"
    )


def decode_wav(data: bytes, where: str = "<wav>") -> bytes:
    """A WAV file's audio as 8 kHz mono mu-law; raises RecordingError with a clear reason otherwise."""
    chunks = _chunks(data, where)
    fmt = chunks[b"fmt "]
    if len(fmt) < 16:
        raise RecordingError(f"{where}: truncated 'fmt' chunk")
    fmt_tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", fmt)
    if fmt_tag == WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        fmt_tag = struct.unpack_from("<H", fmt, 24)[0]  # the sub-format GUID starts with the tag
    if rate not in SUPPORTED_RATES:
        raise RecordingError(
            f"{where}: {rate} Hz is not supported (8000, 16000 or 24000 Hz only); convert it first, "
            f"e.g. `sox {Path(where).name} -r 8000 -c 1 -e mu-law out.wav`"
        )
    body = chunks[b"data"]
    if fmt_tag == WAVE_FORMAT_MULAW and channels == 1 and rate == SAMPLE_RATE:
        return bytes(body)  # already what Twilio sends: no decode/encode round trip
    pcm = _to_mono(_pcm_samples(fmt_tag, bits, body, where), channels, where)
    if rate != SAMPLE_RATE:
        resampler = Resampler(rate, SAMPLE_RATE)
        pcm = np.concatenate([resampler.process(pcm), resampler.flush()])
    return ulaw_encode(pcm)


def load_recording(path: str | Path) -> Recording:
    """Read a WAV file into a `Recording` named after the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read ({exc.strerror})") from None
    return Recording.from_ulaw(path.name, decode_wav(data, str(path)))
