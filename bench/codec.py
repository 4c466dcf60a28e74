"""Codec benchmark: cost per 20 ms frame and quality of audioop, soxr and telcodec, both directions.

Run from the repository root: `.venv/bin/python -m bench.codec` (about a minute). Prints a table and
writes the same figures to bench/out/codec.json. Numbers, not assertions.

How it is measured:
- N independent streams (N = 1, 100, 1000) live in one process; a "tick" gives every stream one input
  chunk: a 20 ms mu-law frame (160 bytes) in the caller direction, a 100 ms PCM16 24 kHz delta (2400
  samples) in the bot direction. The time of a tick over N (and over 5 for the bot direction) is the cost
  per 20 ms of audio; the figure is the median of REPEATS runs of TICKS ticks (after a warm-up tick).
  OpenBLAS is held to one thread: a gateway process uses one core.
- "batched" converts the tick's N frames in one `BatchCallerPath.process` call.
- Every wire format (mu-law and A-law 8 kHz, L16 8/16/24 kHz) gets one row per direction at N = 1, in a
  second block: `CallerPath(encoding, rate)` fed 20 ms frames of that format, `BotPath(encoding, rate)`
  fed the same 100 ms deltas; the figure is the best of REPEATS runs of FORMAT_TICKS chunks (one
  stream for 5 ticks is all noise, and other load on the machine only ever adds time). Compare them
  with this block's mu-law row, measured the same way, not with the N=1 column above.
  Quality is measured through the path itself for L16 and on the linear-PCM resampling stage for
  G.711 (as above).
- Quality comes from `telcodec.quality` (tones on exact FFT bins; see its docstring), measured on the
  linear-PCM resampling stage (mu-law's own noise would bury a 90 dB measurement): image rejection for the
  caller direction (8 kHz -> 24 kHz), alias rejection for the bot direction (24 kHz -> 8 kHz), passband
  ripple up to 3.4 kHz, and latency = the signal's group delay + the most output the stream holds back
  while fed 20 ms chunks (soxr and telcodec compensate their delay by holding samples back).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS

import gc
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr

import telcodec
from telcodec import quality
from telcodec.g711 import ULAW_DECODE_TABLE, ulaw_encode
from telcodec.resample import _ULAW_DECODE_F64, _output_tables, _UlawCaller

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = ["main"]

CALLS = (1, 100, 1000)
REPEATS = 7
TICKS = 5
FRAME_BYTES = 160
DELTA_SAMPLES = 2400  # 100 ms at 24 kHz
FRAMES_PER_DELTA = 5
TARGET_CALLER_US = 4.0
TARGET_BOT_US = 7.0
TARGET_DB = 85.0
SESSION_RATE = 24000
FORMAT_TICKS = 400  # chunks per run in the per-format block (one stream: 5 chunks would be all noise)
OUT = Path(__file__).parent / "out" / "codec.json"

Pcm16 = npt.NDArray[np.int16]
_ULAW_F32 = (ULAW_DECODE_TABLE.astype(np.float32) / 32768.0).astype(np.float32)


@dataclass
class Row:
    """One method in one direction: cost per 20 ms at each N, and its quality."""

    direction: str
    method: str
    us_per_frame: dict[int, float] = field(default_factory=dict)
    rejection_db: float = float("nan")
    ripple_db: float = float("nan")
    latency_ms: float = float("nan")


# --- per-frame converters: factories of stateful callables ------------------------------------------


def audioop_caller() -> Callable[[bytes], bytes]:
    state: Any = None

    def convert(frame: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(audioop.ulaw2lin(frame, 2), 2, 1, 8000, 24000, state)
        return bytes(out)

    return convert


def audioop_bot() -> Callable[[bytes], bytes]:
    state: Any = None

    def convert(delta: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(delta, 2, 1, 24000, 8000, state)
        return bytes(audioop.lin2ulaw(out, 2))

    return convert


def _to_int16(y: npt.NDArray[np.float32]) -> Pcm16:
    scaled: npt.NDArray[np.float64] = np.rint(y * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def soxr_caller(q: str) -> Callable[[], Callable[[bytes], bytes]]:
    def make() -> Callable[[bytes], bytes]:
        stream = soxr.ResampleStream(8000, 24000, 1, dtype="float32", quality=q)
        return lambda frame: _to_int16(
            stream.resample_chunk(_ULAW_F32[np.frombuffer(frame, np.uint8)])
        ).tobytes()

    return make


def soxr_bot(q: str) -> Callable[[], Callable[[bytes], bytes]]:
    def make() -> Callable[[bytes], bytes]:
        stream = soxr.ResampleStream(24000, 8000, 1, dtype="float32", quality=q)
        scale = np.float32(1 / 32768)

        def convert(delta: bytes) -> bytes:
            x = np.frombuffer(delta, "<i2").astype(np.float32) * scale
            return ulaw_encode(_to_int16(stream.resample_chunk(x)))

        return convert

    return make


def ours_caller() -> Callable[[bytes], bytes]:
    return telcodec.CallerPath().process


def ours_bot() -> Callable[[bytes], bytes]:
    return telcodec.BotPath().process


# --- timing -------------------------------------------------------------------------------------------


def time_streams(make: Callable[[], Callable[[bytes], bytes]], chunks: list[bytes], calls: int) -> float:
    """Median seconds of one tick (every stream converts one chunk), over REPEATS runs of TICKS ticks."""
    streams = [make() for _ in range(calls)]
    for convert, chunk in zip(streams, chunks, strict=False):
        convert(chunk)  # warm-up, and past soxr's / our first (shorter) output
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(TICKS):
            for convert, chunk in zip(streams, chunks, strict=False):
                convert(chunk)
        runs.append((time.perf_counter() - t0) / TICKS)
    return statistics.median(runs)


def time_one_stream(make: Callable[[], Callable[[bytes], bytes]], chunk: bytes) -> float:
    """Seconds per chunk of one stream: the best of REPEATS runs of FORMAT_TICKS chunks."""
    convert = make()
    for _ in range(FORMAT_TICKS):  # warm-up: past the first (shorter) output, caches and branch predictors
        convert(chunk)
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(FORMAT_TICKS):
            convert(chunk)
        runs.append((time.perf_counter() - t0) / FORMAT_TICKS)
    return min(runs)


def time_batched(frames: npt.NDArray[np.uint8], calls: int) -> float:
    """Median seconds of one tick of `BatchCallerPath.process` over `calls` frames."""
    batch = telcodec.BatchCallerPath(calls)
    slots = np.array([batch.open_slot() for _ in range(calls)], dtype=np.intp)
    batch.process(frames, slots)
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(TICKS):
            batch.process(frames, slots)
        runs.append((time.perf_counter() - t0) / TICKS)
    return statistics.median(runs)


# --- quality: whole-signal int16 converters of the resampling stage ------------------------------------


def q_audioop(a: int, b: int) -> quality.Convert:
    def convert(x: Pcm16) -> Pcm16:
        out, _ = audioop.ratecv(x.tobytes(), 2, 1, a, b, None)
        return np.frombuffer(out, np.int16)

    return convert


def q_soxr(a: int, b: int, q: str) -> quality.Convert:
    def convert(x: Pcm16) -> Pcm16:
        s = soxr.ResampleStream(a, b, 1, dtype="float32", quality=q)
        y = np.concatenate(
            [
                s.resample_chunk(x.astype(np.float32) / 32768),
                s.resample_chunk(np.zeros(0, np.float32), last=True),
            ]
        )
        return _to_int16(y)

    return convert


def q_ours(a: int, b: int) -> quality.Convert:
    def convert(x: Pcm16) -> Pcm16:
        r = telcodec.Resampler(a, b)
        return np.concatenate([r.process(x), r.flush()])

    return convert


def holdback_ms(make_chunked: Callable[[], Callable[[Pcm16], Pcm16]], a: int, b: int) -> float:
    """The most output (ms) a stream owes while fed 20 ms chunks of a tone for half a second."""
    convert, x, step = make_chunked(), quality.tone(440.0, a, 0.5), a // 50
    got, worst = 0, 0.0
    for i in range(0, len(x), step):
        got += len(convert(x[i : i + step]))
        worst = max(worst, (i + step) * b / a - got)
    return 1000.0 * worst / b


def chunked_audioop(a: int, b: int) -> Callable[[], Callable[[Pcm16], Pcm16]]:
    def make() -> Callable[[Pcm16], Pcm16]:
        state: Any = None

        def convert(x: Pcm16) -> Pcm16:
            nonlocal state
            out, state = audioop.ratecv(x.tobytes(), 2, 1, a, b, state)
            return np.frombuffer(out, np.int16)

        return convert

    return make


def chunked_soxr(a: int, b: int, q: str) -> Callable[[], Callable[[Pcm16], Pcm16]]:
    def make() -> Callable[[Pcm16], Pcm16]:
        s = soxr.ResampleStream(a, b, 1, dtype="float32", quality=q)
        return lambda x: _to_int16(s.resample_chunk(x.astype(np.float32) / 32768))

    return make


def chunked_ours(a: int, b: int) -> Callable[[], Callable[[Pcm16], Pcm16]]:
    return lambda: telcodec.Resampler(a, b).process


def measure_quality(
    row: Row,
    conv: quality.Convert,
    chunked: Callable[[], Callable[[Pcm16], Pcm16]],
    rate: int = 8000,
) -> None:
    """Fill in a row's rejection, ripple and latency; `rate` is the provider side's (24 kHz on the other)."""
    a, b = (rate, SESSION_RATE) if row.direction == "caller" else (SESSION_RATE, rate)
    if row.direction == "caller":
        row.rejection_db = quality.image_rejection_db(conv, a, b)
    else:
        row.rejection_db = quality.alias_rejection_db(conv, a, b)
    row.ripple_db = quality.passband_ripple_db(conv, a, b)
    row.latency_ms = quality.group_delay_ms(conv, a, b) + holdback_ms(chunked, a, b)


# --- every wire format: per-call paths at N = 1 -----------------------------------------------------------


def _as_pcm(data: bytes) -> Pcm16:
    return np.frombuffer(data, "<i2").astype(np.int16)


def _path(fmt: telcodec.WireFormat, direction: str) -> telcodec.CallerPath | telcodec.BotPath:
    if direction == "caller":
        return telcodec.CallerPath(fmt.encoding, fmt.rate)
    return telcodec.BotPath(fmt.encoding, fmt.rate)


def path_factory(fmt: telcodec.WireFormat, direction: str) -> Callable[[], Callable[[bytes], bytes]]:
    """New per-call paths for `fmt`, as the stateful byte converters the timers take."""
    return lambda: _path(fmt, direction).process


def path_chunked(fmt: telcodec.WireFormat, direction: str) -> Callable[[], Callable[[Pcm16], Pcm16]]:
    """An L16 path as a streaming int16 converter (for the hold-back measurement)."""

    def make() -> Callable[[Pcm16], Pcm16]:
        convert = _path(fmt, direction).process
        return lambda x: _as_pcm(convert(x.tobytes()))

    return make


def path_whole(fmt: telcodec.WireFormat, direction: str) -> quality.Convert:
    """An L16 path as a whole-signal int16 converter, flushed."""

    def convert(x: Pcm16) -> Pcm16:
        path = _path(fmt, direction)
        return _as_pcm(path.process(x.tobytes()) + path.flush())

    return convert


def format_rows(rng: np.random.Generator, delta: bytes) -> list[Row]:
    """Cost (N = 1) and quality of CallerPath and BotPath for each wire format, mu-law 8 kHz included."""
    frames = {
        fmt: (rng.standard_normal(fmt.rate // 50) * 3000).astype("<i2").tobytes()
        if fmt.encoding is telcodec.Encoding.L16
        else rng.integers(0, 256, fmt.rate // 50, dtype=np.uint8).tobytes()
        for fmt in telcodec.SUPPORTED_FORMATS
    }
    rows = []
    gc.collect()  # the thousands of streams of the table above are garbage now: collect them before timing
    for direction in ("caller", "bot"):
        for fmt in telcodec.SUPPORTED_FORMATS:
            row = Row(direction, f"telcodec {direction.capitalize()}Path {fmt}")
            chunk, per = (frames[fmt], 1) if direction == "caller" else (delta, FRAMES_PER_DELTA)
            row.us_per_frame[1] = 1e6 * time_one_stream(path_factory(fmt, direction), chunk) / per
            if fmt.rate == SESSION_RATE:
                row.ripple_db, row.latency_ms = 0.0, 0.0  # pass-through: nothing to reject, no delay
            elif fmt.encoding is telcodec.Encoding.L16:
                measure_quality(row, path_whole(fmt, direction), path_chunked(fmt, direction), fmt.rate)
            else:  # G.711's own noise would bury the measurement: the linear-PCM stage, as for mu-law
                a, b = (fmt.rate, SESSION_RATE) if direction == "caller" else (SESSION_RATE, fmt.rate)
                measure_quality(row, q_ours(a, b), chunked_ours(a, b), fmt.rate)
            rows.append(row)
    return rows


# --- the per-call floor: what each numpy call of CallerPath's fast path costs ---------------------------


def caller_floor() -> dict[str, float]:
    """Microseconds per step of CallerPath's 160-byte fast path, each timed alone (min of 7 x 2000)."""
    path = telcodec.CallerPath()
    assert isinstance(path, _UlawCaller)  # the mu-law 8 kHz implementation, whose steps are timed here
    frame = bytes(range(160))
    path.process(frame)
    s = path._stream
    index, matrix, pcm = path._frame_index, path._matrix, _output_tables(s.rm.offset)[0]
    codes = s.arr[index]
    ci = codes.astype(np.intp)
    w = _ULAW_DECODE_F64[ci]
    z = np.dot(w, matrix)
    zi = z.astype(np.intp)
    out = pcm[zi]
    h = 1 + s.rm.history
    steps: dict[str, Callable[[], object]] = {
        "bytearray writes (frame in, history shift)": lambda: (
            s.raw.__setitem__(slice(h, h + 160), frame),
            s.raw.__setitem__(slice(1, h), s.raw[161 : h + 160]),
        ),
        "gather windows (codes[index])": lambda: s.arr[index],
        "codes.astype(intp)": lambda: codes.astype(np.intp),
        "mu-law decode lookup": lambda: _ULAW_DECODE_F64[ci],
        f"np.dot {w.shape} x {matrix.shape}": lambda: np.dot(w, matrix),
        "z.astype(intp) (floor)": lambda: z.astype(np.intp),
        "round/clip lookup": lambda: pcm[zi],
        "tobytes": lambda: out.tobytes(),
        "whole CallerPath.process": lambda: path.process(frame),
    }
    return {name: _best_us(fn) for name, fn in steps.items()}


def _best_us(fn: Callable[[], object], number: int = 2000) -> float:
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, time.perf_counter() - t0)
    return 1e6 * best / number


# --- main -----------------------------------------------------------------------------------------------


def main() -> None:
    """Run everything, print the table, write bench/out/codec.json."""
    rng = np.random.default_rng(7)
    max_calls = max(CALLS)
    frames = rng.integers(0, 256, (max_calls, FRAME_BYTES), dtype=np.uint8)
    frame_bytes = [f.tobytes() for f in frames]
    speech_like = (rng.standard_normal((max_calls, DELTA_SAMPLES)) * 3000).astype(np.int16)
    deltas = [d.tobytes() for d in speech_like]

    caller: list[tuple[str, Callable[[], Callable[[bytes], bytes]], quality.Convert, Any]] = [
        ("audioop ulaw2lin+ratecv", audioop_caller, q_audioop(8000, 24000), chunked_audioop(8000, 24000)),
        ("soxr HQ per call", soxr_caller("HQ"), q_soxr(8000, 24000, "HQ"), chunked_soxr(8000, 24000, "HQ")),
        (
            "soxr VHQ per call",
            soxr_caller("VHQ"),
            q_soxr(8000, 24000, "VHQ"),
            chunked_soxr(8000, 24000, "VHQ"),
        ),
        ("telcodec CallerPath", ours_caller, q_ours(8000, 24000), chunked_ours(8000, 24000)),
    ]
    bot: list[tuple[str, Callable[[], Callable[[bytes], bytes]], quality.Convert, Any]] = [
        ("audioop ratecv+lin2ulaw", audioop_bot, q_audioop(24000, 8000), chunked_audioop(24000, 8000)),
        ("soxr HQ per call", soxr_bot("HQ"), q_soxr(24000, 8000, "HQ"), chunked_soxr(24000, 8000, "HQ")),
        ("soxr VHQ per call", soxr_bot("VHQ"), q_soxr(24000, 8000, "VHQ"), chunked_soxr(24000, 8000, "VHQ")),
        ("telcodec BotPath", ours_bot, q_ours(24000, 8000), chunked_ours(24000, 8000)),
    ]
    rows: list[Row] = []
    for name, make, conv, chunked in caller:
        row = Row("caller", name)
        for n in CALLS:
            row.us_per_frame[n] = 1e6 * time_streams(make, frame_bytes[:n], n) / n
        measure_quality(row, conv, chunked)
        rows.append(row)
    batched = Row("caller", "telcodec BatchCallerPath (one call per tick)")
    for n in CALLS:
        batched.us_per_frame[n] = 1e6 * time_batched(frames[:n], n) / n
    ours = rows[-1]
    batched.rejection_db, batched.ripple_db, batched.latency_ms = (
        ours.rejection_db,
        ours.ripple_db,
        ours.latency_ms,
    )
    rows.append(batched)
    for name, make, conv, chunked in bot:
        row = Row("bot", name)
        for n in CALLS:
            row.us_per_frame[n] = 1e6 * time_streams(make, deltas[:n], n) / n / FRAMES_PER_DELTA
        measure_quality(row, conv, chunked)
        rows.append(row)
    formats = format_rows(rng, deltas[0])
    floor = caller_floor()
    report(rows, formats, floor)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "soxr": soxr.__version__,
                "how": __doc__,
                "targets": {
                    "caller_us": TARGET_CALLER_US,
                    "bot_us": TARGET_BOT_US,
                    "rejection_db": TARGET_DB,
                },
                "rows": [asdict(r) for r in rows],
                "format_rows": [asdict(r) for r in formats],
                "caller_path_floor_us": floor,
            },
            indent=2,
        )
    )


def _print_row(r: Row) -> None:
    cost = "".join(f"{r.us_per_frame[n]:11.2f}" if n in r.us_per_frame else f"{'-':>11}" for n in CALLS)
    reject = f"{r.rejection_db:11.1f}" if np.isfinite(r.rejection_db) else f"{'-':>11}"
    print(f"{r.direction:8} {r.method:46}{cost}{reject}{r.ripple_db:11.3f}{r.latency_ms:12.2f}")


def report(rows: list[Row], formats: list[Row], floor: dict[str, float]) -> None:
    """Print the table, the other formats' rows, the targets and the per-call floor."""
    head = f"{'direction':8} {'method':46}" + "".join(f"{f'N={n} us':>11}" for n in CALLS)
    print(head + f"{'reject dB':>11}{'ripple dB':>11}{'latency ms':>12}")
    print("-" * (len(head) + 34))
    for r in rows:
        _print_row(r)
    print("-" * (len(head) + 34))
    for r in formats:
        _print_row(r)
    print(
        f"\nus per 20 ms of audio (bot: 100 ms deltas / 5); median of {REPEATS} x {TICKS} ticks"
        f" (per-format block: best of {REPEATS} x {FORMAT_TICKS}); one BLAS thread."
        f"\nreject dB: image rejection (caller, to 24k) / alias rejection (bot, from 24k), worst tone; see"
        " telcodec.quality; '-': a pass-through, nothing to reject."
        f"\nTargets: caller <= {TARGET_CALLER_US} us, bot <= {TARGET_BOT_US} us, at >= {TARGET_DB} dB."
    )
    print("\nCallerPath fast path, each numpy step alone (us): the per-call floor is their sum")
    for name, us in floor.items():
        print(f"  {name:48}{us:8.2f}")
    parts = sum(us for name, us in floor.items() if not name.startswith("whole"))
    print(f"  {'sum of steps':48}{parts:8.2f}")


if __name__ == "__main__":
    main()
