"""Streaming resampler and fused codec paths: chunking never changes a sample, lengths, state, errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from telcodec import BatchCallerPath, BotPath, CallerPath, Resampler, ulaw_decode, ulaw_encode
from telcodec.filters import design_filter

PAIRS = [(8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000), (8000, 16000), (16000, 8000)]
Pcm16 = npt.NDArray[np.int16]

samples = st.one_of(st.integers(-32768, 32767), st.sampled_from([-32768, 32767, 0]))
signals = arrays(np.int16, st.integers(0, 1500), elements=samples)
chunk_sizes = st.lists(st.integers(0, 400), min_size=1, max_size=40)


def whole(in_rate: int, out_rate: int, x: Pcm16) -> Pcm16:
    """The signal converted in one piece, flushed."""
    r = Resampler(in_rate, out_rate)
    return np.concatenate([r.process(x), r.flush()])


def chunked(r: Resampler, x: Pcm16, sizes: list[int]) -> Pcm16:
    """The signal fed in chunks of the given sizes (cycled), flushed."""
    parts, i, k = [], 0, 0
    while i < len(x):
        n = sizes[k % len(sizes)]
        parts.append(r.process(x[i : i + n]))
        i, k = i + n, k + 1
        if k > 10 * len(x) + 10:  # all-zero sizes: finish in one piece
            parts.append(r.process(x[i:]))
            break
    parts.append(r.flush())
    return np.concatenate(parts)


def square(rate: int, seconds: float = 0.1) -> Pcm16:
    """A full-scale 500 Hz square wave: its filtered edges overshoot, so outputs clip."""
    n = np.arange(int(rate * seconds))
    return np.where((n * 500 // rate) % 2 == 0, 32767, -32768).astype(np.int16)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@settings(max_examples=30, deadline=None)
@given(x=signals, sizes=chunk_sizes)
def test_any_chunking_gives_identical_samples(
    in_rate: int, out_rate: int, x: Pcm16, sizes: list[int]
) -> None:
    """Feeding a signal in arbitrary chunks gives bit-identical output to feeding it whole."""
    assert np.array_equal(chunked(Resampler(in_rate, out_rate), x, sizes), whole(in_rate, out_rate, x))


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_clipping_signal_is_chunk_invariant_and_clips(in_rate: int, out_rate: int) -> None:
    """A full-scale square wave clips at the int16 limits, identically whole and in 1..7-sample chunks."""
    x = square(in_rate)
    ref = whole(in_rate, out_rate, x)
    assert ref.max() == 32767
    assert ref.min() == -32768
    assert np.array_equal(chunked(Resampler(in_rate, out_rate), x, [1, 7, 0, 3]), ref)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 159, 160, 161, 2400, 4801])
def test_total_length_after_flush_is_rounded_ratio(in_rate: int, out_rate: int, n: int) -> None:
    """process + flush return round(n * out / in) samples in total."""
    x = np.full(n, 1000, dtype=np.int16)
    assert len(whole(in_rate, out_rate, x)) == round(Fraction(n * out_rate, in_rate))


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_output_matches_float_convolution_reference(in_rate: int, out_rate: int) -> None:
    """Each sample equals the zero-stuffed, filtered, decimated signal shifted by the delay and rounded."""
    x = np.random.default_rng(3).integers(-32768, 32768, 3001).astype(np.int16)
    d = design_filter(in_rate, out_rate)
    u = np.zeros(len(x) * d.up)
    u[:: d.up] = x
    y = np.convolve(u, d.taps)[:: d.down][d.delay_out_samples :]
    out = whole(in_rate, out_rate, x)
    ref = np.clip(np.floor(y[: len(out)] + 0.5), -32768, 32767)
    assert np.array_equal(out, ref)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_reset_and_flush_restore_the_initial_state(in_rate: int, out_rate: int) -> None:
    """After reset (or flush) a resampler converts a signal exactly like a new one."""
    x = np.random.default_rng(4).integers(-30000, 30000, 777).astype(np.int16)
    ref = whole(in_rate, out_rate, x)
    r = Resampler(in_rate, out_rate)
    r.process(x[:300])
    r.reset()
    assert np.array_equal(np.concatenate([r.process(x), r.flush()]), ref)
    assert np.array_equal(np.concatenate([r.process(x), r.flush()]), ref)


def test_zero_and_one_sample_chunks() -> None:
    """An empty chunk returns nothing; one 8 kHz sample past the delay yields three 24 kHz samples."""
    r = Resampler(8000, 24000)
    assert len(r.process(np.zeros(0, np.int16))) == 0
    lengths = [len(r.process(np.array([100], np.int16))) for _ in range(30)]
    assert lengths[:20] == [0] * 20  # the 60-sample (2.5 ms) delay is held back
    assert lengths[20:] == [3] * 10
    assert r.process(b"").dtype == np.int16


def test_delay_is_reported_in_milliseconds() -> None:
    """delay_ms is 2.5 ms for 8 <-> 24 kHz and 1.25 ms for the 16 kHz pairs."""
    assert Resampler(8000, 24000).delay_ms == 2.5
    assert Resampler(24000, 8000).delay_ms == 2.5
    assert Resampler(16000, 24000).delay_ms == 1.25
    assert CallerPath().delay_ms == BotPath().delay_ms == 2.5


def test_bytes_input_equals_array_input() -> None:
    """Little-endian PCM16 bytes convert exactly like the int16 array."""
    x = np.random.default_rng(5).integers(-32768, 32768, 500).astype(np.int16)
    r = Resampler(24000, 8000)
    got = np.concatenate([r.process(x.astype("<i2").tobytes()), r.flush()])
    assert np.array_equal(got, whole(24000, 8000, x))


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 8000), (8000, 44100), (48000, 24000), (0, 8000)])
def test_unsupported_rates_are_rejected(in_rate: int, out_rate: int) -> None:
    """A rate pair without a design is a ValueError naming the supported rates."""
    with pytest.raises(ValueError, match="supported"):
        Resampler(in_rate, out_rate)


def test_bad_input_is_rejected() -> None:
    """Odd-length bytes are a ValueError and a non-int16 array a TypeError."""
    r = Resampler(8000, 24000)
    with pytest.raises(ValueError, match="odd"):
        r.process(b"\x00\x01\x02")
    with pytest.raises(TypeError, match="int16"):
        r.process(np.zeros(4, np.float64))


@settings(max_examples=40, deadline=None)
@given(codes=st.binary(max_size=1200), sizes=chunk_sizes)
def test_caller_path_equals_decode_then_resample(codes: bytes, sizes: list[int]) -> None:
    """CallerPath in any chunking equals ulaw_decode followed by Resampler(8000, 24000)."""
    path, parts, i, k = CallerPath(), [], 0, 0
    while i < len(codes) and k < 1000:
        n = sizes[k % len(sizes)]
        parts.append(path.process(codes[i : i + n]))
        i, k = i + n, k + 1
    parts.append(path.process(codes[i:]))
    parts.append(path.flush())
    assert b"".join(parts) == whole(8000, 24000, ulaw_decode(codes)).tobytes()


def test_caller_path_frames_equal_the_composition() -> None:
    """Whole 160-byte frames (the fast path) give the same bytes as decode + resample."""
    codes = np.random.default_rng(6).integers(0, 256, 160 * 30, dtype=np.uint8).tobytes()
    path = CallerPath()
    out = [path.process(codes[i : i + 160]) for i in range(0, len(codes), 160)]
    assert [len(o) for o in out[:3]] == [2 * (480 - 60), 960, 960]
    assert b"".join(out) + path.flush() == whole(8000, 24000, ulaw_decode(codes)).tobytes()


@settings(max_examples=40, deadline=None)
@given(pcm=st.binary(max_size=3000), sizes=chunk_sizes)
def test_bot_path_equals_resample_then_encode(pcm: bytes, sizes: list[int]) -> None:
    """BotPath, fed bytes in any chunking (odd lengths too), equals Resampler(24000, 8000) + ulaw_encode."""
    path, parts, i, k = BotPath(), [], 0, 0
    while i < len(pcm) and k < 1000:
        n = sizes[k % len(sizes)]
        parts.append(path.process(pcm[i : i + n]))
        i, k = i + n, k + 1
    parts.append(path.process(pcm[i:]))
    parts.append(path.flush())
    whole_samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], "<i2").astype(np.int16)
    assert b"".join(parts) == ulaw_encode(whole(24000, 8000, whole_samples))


def test_bot_path_flush_resets_for_the_next_response() -> None:
    """After flush (which drops a dangling odd byte) the next response converts like a fresh path."""
    pcm = np.random.default_rng(7).integers(-20000, 20000, 2400).astype("<i2").tobytes()
    path = BotPath()
    first = path.process(pcm + b"\x01") + path.flush()
    assert len(first) == 800
    assert path.process(pcm) + path.flush() == first


def test_batch_equals_per_call_paths() -> None:
    """BatchCallerPath gives each slot CallerPath's samples, preceded by the 60 that CallerPath skips."""
    rng = np.random.default_rng(8)
    batch = BatchCallerPath(200)
    slots = np.array([batch.open_slot() for _ in range(150)], dtype=np.intp)
    frames = rng.integers(0, 256, (6, 150, 160), dtype=np.uint8)
    outs = [batch.process(frames[t], slots) for t in range(6)]
    for call in (0, 63, 64, 149):
        path = CallerPath()
        ref = b"".join(path.process(frames[t, call].tobytes()) for t in range(6))
        got = np.concatenate([o[call] for o in outs])
        assert got[60:].tobytes() == ref


def test_batch_result_does_not_depend_on_batch_mates() -> None:
    """A call's output is the same whether its frame is converted alone or among others, in any order."""
    rng = np.random.default_rng(9)
    frames = rng.integers(0, 256, (3, 100, 160), dtype=np.uint8)
    a, b = BatchCallerPath(100), BatchCallerPath(100)
    sa = np.array([a.open_slot() for _ in range(100)], dtype=np.intp)
    sb = np.array([b.open_slot() for _ in range(100)], dtype=np.intp)
    perm = rng.permutation(100)
    for t in range(3):
        together = a.process(frames[t], sa)
        alone = b.process(frames[t][perm], sb[perm])
        assert np.array_equal(together[perm], alone)


def test_batch_slots_are_recycled_with_silent_history() -> None:
    """A closed slot reopens with silent history; a full batch refuses a new slot; bad frames are refused."""
    batch = BatchCallerPath(1)
    slot = batch.open_slot()
    frame = np.full((1, 160), 0x80, dtype=np.uint8)  # loud
    first = batch.process(frame, np.array([slot]))
    with pytest.raises(IndexError):
        batch.open_slot()
    batch.close_slot(slot)
    again = batch.open_slot()
    assert np.array_equal(batch.process(frame, np.array([again])), first)
    with pytest.raises(ValueError, match="uint8"):
        batch.process(np.zeros((1, 160), np.int16), np.array([again]))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("in_rate", "out_rate"), [(24000, 8000), (24000, 16000), (8000, 24000), (16000, 24000)]
)
def test_chunks_larger_than_the_initial_buffer_of_any_size(in_rate: int, out_rate: int) -> None:
    """A chunk that grows the input buffer, of any length (a realtime delta longer than about 170 ms at
    24 kHz), must not read past it: the last, partial row's window is gathered whole. Every size from
    4,000 to 4,400 samples (the buffer starts at 4,096), twice in a row, then a flush, as BotPath does."""
    for n in range(4000, 4400):
        resampler, path = Resampler(in_rate, out_rate), BotPath()
        chunk = np.arange(n, dtype=np.int16)
        out = np.concatenate([resampler.process(chunk), resampler.process(chunk), resampler.flush()])
        assert len(out) == round(2 * n * out_rate / in_rate)
        if in_rate == 24000 and out_rate == 8000:
            assert len(path.process(chunk.tobytes()) + path.process(chunk.tobytes()) + path.flush()) == round(
                2 * n / 3
            )
