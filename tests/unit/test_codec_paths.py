"""Per-call paths for every wire format: exact against audioop + Resampler, chunk-invariant, tone-true."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telcodec import (
    SESSION_FORMAT,
    SUPPORTED_FORMATS,
    BotPath,
    CallerPath,
    Encoding,
    Resampler,
    WireFormat,
    quality,
)
from telcodec.filters import row_matrix
from telcodec.resample import BLOCKS_PER_ROW, _output_tables

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

Pcm16 = npt.NDArray[np.int16]
SESSION_RATE = 24000
RESAMPLED = [f for f in SUPPORTED_FORMATS if f.rate != SESSION_RATE]
L16 = [f for f in SUPPORTED_FORMATS if f.encoding is Encoding.L16]
L16_RESAMPLED = [f for f in L16 if f.rate != SESSION_RATE]
UNSUPPORTED = [("ulaw", 16000), ("alaw", 16000), ("alaw", 24000), ("l16", 48000), ("opus", 8000)]
chunk_sizes = st.lists(st.integers(0, 700), min_size=1, max_size=40)


def ids(fmt: WireFormat) -> str:
    """Test ids like alaw/8000."""
    return str(fmt)


def decode(fmt: WireFormat, data: bytes) -> Pcm16:
    """The wire bytes as int16 samples, decoded by audioop (the reference), whole samples only."""
    if fmt.encoding is Encoding.ULAW:
        data = audioop.ulaw2lin(data, 2)
    elif fmt.encoding is Encoding.ALAW:
        data = audioop.alaw2lin(data, 2)
    return np.frombuffer(data[: len(data) // 2 * 2], "<i2").astype(np.int16)


def encode(fmt: WireFormat, pcm: Pcm16) -> bytes:
    """int16 samples as wire bytes, encoded by audioop (the reference)."""
    data = pcm.astype("<i2").tobytes()
    if fmt.encoding is Encoding.ULAW:
        return audioop.lin2ulaw(data, 2)
    if fmt.encoding is Encoding.ALAW:
        return audioop.lin2alaw(data, 2)
    return data


def resampled(in_rate: int, out_rate: int, x: Pcm16) -> Pcm16:
    """The reference resampling: a fresh Resampler, fed whole and flushed (identity at equal rates)."""
    if in_rate == out_rate:
        return x
    r = Resampler(in_rate, out_rate)
    return np.concatenate([r.process(x), r.flush()])


def feed(
    convert: Callable[[bytes], bytes], flush: Callable[[], bytes], data: bytes, sizes: list[int]
) -> bytes:
    """The data fed in chunks of the given sizes (cycled, zeros included), then flushed."""
    parts, i, k = [], 0, 0
    while i < len(data) and k < 2000:
        n = sizes[k % len(sizes)]
        parts.append(convert(data[i : i + n]))
        i, k = i + n, k + 1
    parts.append(convert(data[i:]))
    parts.append(flush())
    return b"".join(parts)


def caller_reference(fmt: WireFormat, data: bytes) -> bytes:
    """What CallerPath must return for a whole stream: audioop decode, then Resampler to 24 kHz."""
    return resampled(fmt.rate, SESSION_RATE, decode(fmt, data)).tobytes()


def bot_reference(fmt: WireFormat, pcm: bytes) -> bytes:
    """What BotPath must return for a whole stream: Resampler from 24 kHz, then audioop encode."""
    return encode(fmt, resampled(SESSION_RATE, fmt.rate, decode(SESSION_FORMAT, pcm)))


# --- today's mu-law paths are unchanged -----------------------------------------------------------------


def test_defaults_are_mulaw_8k_and_bit_identical_to_before() -> None:
    """CallerPath() and BotPath() are mu-law 8 kHz and give the bytes the single-format version gave."""
    rng = np.random.default_rng(2024)
    codes = rng.integers(0, 256, 160 * 50 + 77, dtype=np.uint8).tobytes()
    pcm = (rng.standard_normal(24000) * 8000).clip(-32768, 32767).astype("<i2").tobytes() + b"\x07"
    caller, bot = CallerPath(), BotPath()
    assert caller.format == bot.format == WireFormat(Encoding.ULAW, 8000)
    up = feed(caller.process, caller.flush, codes, [160])
    down = feed(bot.process, bot.flush, pcm, [4801])
    # sha256 of the outputs of CallerPath() and BotPath() before they took a format (same inputs)
    assert (
        hashlib.sha256(up).hexdigest() == "eae9a294e37518a93582d046c21e71cb7381a1cc68623bd20172bf9310612327"
    )
    assert (
        hashlib.sha256(down).hexdigest() == "b83c015d581349c65ad6fa7b73f762515c968eb2404c6392c0f617dba6180bc8"
    )


# --- exact against the reference, in any chunking ------------------------------------------------------


def test_alaw_caller_is_exact_for_every_code() -> None:
    """All 256 A-law codes, in 20 ms frames, convert to audioop.alaw2lin then Resampler(8000, 24000)."""
    codes = np.random.default_rng(1).permutation(np.tile(np.arange(256, dtype=np.uint8), 10)).tobytes()
    fmt = WireFormat(Encoding.ALAW, 8000)
    path = CallerPath(fmt.encoding, fmt.rate)
    assert feed(path.process, path.flush, codes, [160]) == caller_reference(fmt, codes)


def test_alaw_bot_encodes_every_sample_like_audioop() -> None:
    """The bot path's final lookup gives audioop.lin2alaw's code for every int16 value, and clips beyond."""
    offset = row_matrix(24000, 8000, BLOCKS_PER_ROW).offset
    alaw = _output_tables(offset)[2]
    every = np.arange(-32768, 32768)
    assert alaw[every + offset].tobytes() == audioop.lin2alaw(every.astype("<i2").tobytes(), 2)
    assert set(alaw[: offset - 32768].tolist()) == {audioop.lin2alaw(b"\x00\x80", 2)[0]}  # below -32768
    assert set(alaw[offset + 32768 :].tolist()) == {audioop.lin2alaw(b"\xff\x7f", 2)[0]}  # above 32767


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=ids)
@settings(max_examples=30, deadline=None)
@given(data=st.binary(max_size=2400), sizes=chunk_sizes)
def test_caller_any_chunking_equals_reference(fmt: WireFormat, data: bytes, sizes: list[int]) -> None:
    """CallerPath fed whole samples in any chunking equals audioop decode + Resampler(rate, 24000)."""
    width = fmt.bytes_per_sample
    data = data[: len(data) // width * width]
    sizes = [n // width * width for n in sizes]
    path = CallerPath(fmt.encoding, fmt.rate)
    assert feed(path.process, path.flush, data, sizes) == caller_reference(fmt, data)


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=ids)
@settings(max_examples=30, deadline=None)
@given(pcm=st.binary(max_size=4000), sizes=chunk_sizes)
def test_bot_any_chunking_equals_reference(fmt: WireFormat, pcm: bytes, sizes: list[int]) -> None:
    """BotPath fed bytes in any chunking, odd lengths too, equals Resampler(24000, rate) + audioop encode."""
    path = BotPath(fmt.encoding, fmt.rate)
    assert feed(path.process, path.flush, pcm, sizes) == bot_reference(fmt, pcm)


@pytest.mark.parametrize("fmt", RESAMPLED, ids=ids)
def test_caller_fast_path_frames_equal_reference(fmt: WireFormat) -> None:
    """20 ms frames (the fast path) give the reference bytes; the first frame lacks the group delay."""
    rng = np.random.default_rng(5)
    data = encode(fmt, rng.integers(-32768, 32768, fmt.rate // 50 * 30).astype(np.int16))
    path = CallerPath(fmt.encoding, fmt.rate)
    frame = fmt.frame_bytes(20)
    out = [path.process(data[i : i + frame]) for i in range(0, len(data), frame)]
    delay = round(path.delay_ms * SESSION_RATE / 1000)
    assert [len(o) // 2 for o in out[:3]] == [480 - delay, 480, 480]
    assert b"".join(out) + path.flush() == caller_reference(fmt, data)


def test_clipping_is_exact_on_every_path() -> None:
    """A full-scale square wave overshoots and clips to the int16 limits exactly as the reference does."""
    n = np.arange(24000 // 5)
    square = np.where((n * 500 // 24000) % 2 == 0, 32767, -32768).astype("<i2").tobytes()
    for fmt in SUPPORTED_FORMATS:
        bot = BotPath(fmt.encoding, fmt.rate)
        wire = feed(bot.process, bot.flush, square, [960])
        assert wire == bot_reference(fmt, square), fmt
        caller = CallerPath(fmt.encoding, fmt.rate)
        back = feed(caller.process, caller.flush, wire, [fmt.frame_bytes(20)])
        assert back == caller_reference(fmt, wire), fmt
        if fmt.encoding is Encoding.L16:
            assert {32767, -32768} <= set(np.frombuffer(back, "<i2").tolist()), fmt


# --- tones arrive at the right frequency, level and time -----------------------------------------------


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=ids)
@pytest.mark.parametrize("freq", [300.0, 1000.0, 3000.0])
def test_tone_round_trip(fmt: WireFormat, freq: float) -> None:
    """A 24 kHz tone sent to the provider and back keeps frequency, level (0.2 dB) and timing (0.01 ms)."""

    def round_trip(x: Pcm16) -> Pcm16:
        bot, caller = BotPath(fmt.encoding, fmt.rate), CallerPath(fmt.encoding, fmt.rate)
        wire = feed(bot.process, bot.flush, x.astype("<i2").tobytes(), [4800])
        back = feed(caller.process, caller.flush, wire, [fmt.frame_bytes(20)])
        return np.frombuffer(back, "<i2").astype(np.int16)

    x = quality.tone(freq, SESSION_RATE)
    y = round_trip(x)
    assert len(y) == len(x)
    spectrum = np.abs(np.fft.rfft(y[SESSION_RATE // 4 : SESSION_RATE // 4 + SESSION_RATE].astype(np.float64)))
    assert int(np.argmax(spectrum)) == freq  # one-hertz bins over one second
    spur_db = 20 * np.log10(np.delete(spectrum, int(freq)).max() / spectrum[int(freq)])
    assert spur_db < (-30.0 if fmt.encoding is not Encoding.L16 else -85.0)
    assert abs(20 * np.log10(quality.tone_level(y, SESSION_RATE, freq) / quality.AMPLITUDE)) < 0.2
    assert abs(quality.group_delay_ms(round_trip, SESSION_RATE, SESSION_RATE)) < 0.01


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=ids)
def test_each_direction_keeps_the_tone(fmt: WireFormat) -> None:
    """One way only: a 1 kHz tone at the provider's rate reaches 24 kHz at 1 kHz, and back down likewise."""
    caller = CallerPath(fmt.encoding, fmt.rate)
    up = caller.process(encode(fmt, quality.tone(1000.0, fmt.rate))) + caller.flush()
    level_up = quality.tone_level(decode(SESSION_FORMAT, up), SESSION_RATE, 1000.0)
    bot = BotPath(fmt.encoding, fmt.rate)
    down = bot.process(quality.tone(1000.0, SESSION_RATE).astype("<i2").tobytes()) + bot.flush()
    level_down = quality.tone_level(decode(fmt, down), fmt.rate, 1000.0)
    for level in (level_up, level_down):
        assert abs(20 * np.log10(level / quality.AMPLITUDE)) < 0.2


@pytest.mark.parametrize("fmt", L16_RESAMPLED, ids=ids)
def test_resampling_quality_carries_over(fmt: WireFormat) -> None:
    """The L16 paths keep the resampler's >= 85 dB image and alias rejection (G.711's noise would hide it)."""

    def up(x: Pcm16) -> Pcm16:
        path = CallerPath(fmt.encoding, fmt.rate)
        return decode(SESSION_FORMAT, path.process(x.astype("<i2").tobytes()) + path.flush())

    def down(x: Pcm16) -> Pcm16:
        path = BotPath(fmt.encoding, fmt.rate)
        return decode(fmt, path.process(x.astype("<i2").tobytes()) + path.flush())

    assert quality.image_rejection_db(up, fmt.rate, SESSION_RATE) >= 85.0
    assert quality.alias_rejection_db(down, SESSION_RATE, fmt.rate) >= 85.0


# --- lengths, odd bytes, pass-through, state -----------------------------------------------------------


@pytest.mark.parametrize("fmt", L16, ids=ids)
def test_caller_refuses_half_samples_and_keeps_its_state(fmt: WireFormat) -> None:
    """An odd-length L16 chunk is a ValueError, and the stream goes on as if it had never been offered."""
    rng = np.random.default_rng(6)
    data = rng.integers(-20000, 20000, fmt.rate // 50 * 4).astype("<i2").tobytes()
    path = CallerPath(fmt.encoding, fmt.rate)
    frame = fmt.frame_bytes(20)
    out = path.process(data[:frame])
    with pytest.raises(ValueError, match="odd length"):
        path.process(data[frame : 2 * frame - 1])
    out += path.process(data[frame:]) + path.flush()
    assert out == caller_reference(fmt, data)


def test_l16_24k_passes_through_without_copying() -> None:
    """At 24 kHz both paths return the very bytes object given (bytes-like inputs become bytes), delay 0."""
    data = np.arange(480, dtype="<i2").tobytes()
    caller, bot = CallerPath("l16", 24000), BotPath("l16", 24000)
    assert caller.process(data) is data
    assert bot.process(data) is data
    assert caller.process(bytearray(data)) == bot.process(memoryview(data)) == data
    assert caller.delay_ms == bot.delay_ms == 0.0
    assert caller.flush() == bot.flush() == b""


def test_l16_24k_bot_carries_the_odd_byte() -> None:
    """The pass-through bot path holds a trailing odd byte for the next delta; flush and reset drop it."""
    bot = BotPath("l16", 24000)
    assert bot.process(b"\x01\x02\x03") == b"\x01\x02"
    assert bot.process(b"\x04") == b"\x03\x04"
    assert bot.process(b"\x05") == b""
    assert bot.flush() == b""
    assert bot.process(b"\x06\x07") == b"\x06\x07"
    bot.process(b"\x08")
    bot.reset()
    assert bot.process(b"\x09\x0a") == b"\x09\x0a"


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=ids)
def test_reset_and_flush_start_a_new_stream(fmt: WireFormat) -> None:
    """After reset or flush either path converts a stream exactly like a fresh one."""
    rng = np.random.default_rng(7)
    wire = encode(fmt, rng.integers(-20000, 20000, fmt.rate // 10).astype(np.int16))
    pcm = rng.integers(-20000, 20000, 2400).astype("<i2").tobytes()
    for path, data in ((CallerPath(fmt.encoding, fmt.rate), wire), (BotPath(fmt.encoding, fmt.rate), pcm)):
        fresh = path.process(data) + path.flush()
        path.process(data[: len(data) // 3 * 2 + 1] if isinstance(path, BotPath) else data[:100])
        path.reset()
        assert path.process(data) + path.flush() == fresh
        assert path.process(data) + path.flush() == fresh


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS, ids=ids)
def test_rates_delay_and_repr(fmt: WireFormat) -> None:
    """Each path reports its rates, its group delay (2.5, 1.25 or 0 ms) and its format."""
    caller, bot = (
        CallerPath(encoding=fmt.encoding, rate=fmt.rate),
        BotPath(encoding=str(fmt.encoding), rate=fmt.rate),
    )
    assert (caller.in_rate, caller.out_rate, bot.in_rate, bot.out_rate) == (fmt.rate, 24000, 24000, fmt.rate)
    assert caller.delay_ms == bot.delay_ms == {8000: 2.5, 16000: 1.25, 24000: 0.0}[fmt.rate]
    assert caller.format == bot.format == fmt
    assert repr(caller) == f"CallerPath(encoding='{fmt.encoding}', rate={fmt.rate})"
    assert isinstance(caller, CallerPath)
    assert isinstance(bot, BotPath)


@pytest.mark.parametrize(("encoding", "rate"), UNSUPPORTED)
def test_unsupported_pairs_are_refused(encoding: str, rate: int) -> None:
    """A pair no provider uses is a ValueError naming it, from either path's constructor."""
    for path in (CallerPath, BotPath):
        with pytest.raises(ValueError, match=f"unsupported wire format {encoding}/{rate}"):
            path(encoding, rate)
