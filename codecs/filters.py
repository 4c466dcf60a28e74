"""Filter design for the rational polyphase resampler: numpy only, computed once per rate pair.

A resampler by L/M (L up, M down, coprime) filters at the intermediate rate `in_rate * L` with one
linear-phase lowpass: a Kaiser-windowed sinc whose cutoff sits halfway between the passband edge
(0.85 of the lower Nyquist: 3.4 kHz when 8 kHz is involved, 6.8 kHz for 16 kHz) and the stopband edge
(1.15 of the lower Nyquist: 4.6 kHz, 9.2 kHz). Every image (upsampling) or alias (downsampling) of the
passband then lands at or beyond the stopband edge, and with 121 taps the stopband sits at >= 92 dB.

Exactness: the taps are rounded to multiples of 2**-COEF_FRACTION_BITS. A product of an int16 sample and a
tap is then an integer multiple of 2**-24 below 2**40 in magnitude, and so is every partial sum of a
~40-tap dot product, far inside float64's 53-bit mantissa. So float64 BLAS computes every output sample
EXACTLY, in any summation order, whatever the chunking or batch shape: the final rounding to int16 is
the only rounding, and chunked, whole and batched outputs agree bit for bit.

`row_matrix` lays the taps out for the block formulation used by `telcodec.resample`: each GEMM row
consumes B*M new input samples (plus the filter's history and a constant 1.0 that adds a rounding bias)
and produces B*L output samples, so one matrix product converts a whole chunk.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from math import gcd

import numpy as np
import numpy.typing as npt

__all__ = [
    "COEF_FRACTION_BITS",
    "PASSBAND_FRACTION",
    "STOPBAND_FRACTION",
    "SUPPORTED_RATES",
    "FilterDesign",
    "RowMatrix",
    "design_filter",
    "kaiser_lowpass",
    "row_matrix",
]

SUPPORTED_RATES = (8000, 16000, 24000)
PASSBAND_FRACTION = 0.85  # of the lower Nyquist frequency: 3.4 kHz at 8 kHz
STOPBAND_FRACTION = 1.15  # of the lower Nyquist frequency: 4.6 kHz at 8 kHz
COEF_FRACTION_BITS = 24
# (taps, Kaiser stopband target in dB) per (L, M): the shortest filters whose quantized response keeps
# >= 92 dB in the stopband and < 0.01 dB passband ripple (found by a search over taps and beta).
_TAPS: dict[tuple[int, int], tuple[int, float]] = {
    (3, 1): (121, 92.0),
    (1, 3): (121, 93.0),
    (3, 2): (121, 92.0),
    (2, 3): (121, 92.0),
    (2, 1): (81, 93.0),
    (1, 2): (81, 92.0),
}

Float64s = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class FilterDesign:
    """One resampler's lowpass: `taps` at `in_rate * up`, quantized, with gain `up` (zero-stuffing)."""

    in_rate: int
    out_rate: int
    up: int
    down: int
    taps: Float64s
    passband_hz: float
    stopband_hz: float

    @property
    def delay_out_samples(self) -> int:
        """The group delay in output samples (whole by design: (taps - 1) / 2 is a multiple of M)."""
        return (len(self.taps) - 1) // (2 * self.down)

    @property
    def delay_ms(self) -> float:
        """The group delay in milliseconds."""
        return 1000.0 * self.delay_out_samples / self.out_rate


@dataclass(frozen=True, slots=True)
class RowMatrix:
    """The block (GEMM) layout of a filter: row r of the input window matrix times `matrix` gives B*L outputs.

    Window row r holds, in order, the constant 1.0 (column 0, which multiplies `bias`), then the `history`
    input samples before the row's first new sample, then its `block_in` = B*M new samples.
    `bias` = `offset` + 0.5, so `floor(window @ matrix)` = round-half-up(output) + `offset`, always >= 0:
    a table lookup at that index rounds, clips and (optionally) G.711-encodes in one step.
    """

    matrix: Float64s  # (1 + history + block_in, block_out)
    history: int
    block_in: int
    block_out: int
    offset: int
    available: tuple[int, ...]  # available[p]: outputs of a row computable from its first p new samples


def kaiser_lowpass(taps: int, cutoff: float, stop_db: float, gain: float) -> Float64s:
    """A linear-phase windowed-sinc lowpass; `cutoff` is a fraction of the sampling rate (0.5 = Nyquist)."""
    beta = (
        0.1102 * (stop_db - 8.7)
        if stop_db > 50
        else 0.5842 * (stop_db - 21) ** 0.4 + 0.07886 * (stop_db - 21)
    )
    n = np.arange(taps) - (taps - 1) / 2
    h: Float64s = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta) * gain
    return h


def _quantize(h: Float64s) -> Float64s:
    scale = float(2**COEF_FRACTION_BITS)
    q: Float64s = np.round(h * scale) / scale
    return q


@cache
def design_filter(in_rate: int, out_rate: int) -> FilterDesign:
    """The quantized lowpass for `in_rate -> out_rate`; ValueError for a pair we have no design for."""
    if in_rate not in SUPPORTED_RATES or out_rate not in SUPPORTED_RATES or in_rate == out_rate:
        raise ValueError(
            f"unsupported resampling {in_rate} -> {out_rate} Hz: supported are conversions between "
            f"{', '.join(map(str, SUPPORTED_RATES))} Hz"
        )
    g = gcd(in_rate, out_rate)
    up, down = out_rate // g, in_rate // g
    taps, stop_db = _TAPS[(up, down)]
    nyquist = min(in_rate, out_rate) / 2
    h = kaiser_lowpass(taps, nyquist / (in_rate * up), stop_db, float(up))
    h = _quantize(h)
    h.setflags(write=False)
    return FilterDesign(
        in_rate, out_rate, up, down, h, PASSBAND_FRACTION * nyquist, STOPBAND_FRACTION * nyquist
    )


def _offset(matrix: Float64s) -> int:
    """A whole offset above the largest output magnitude any int16 input can produce (with the 0.5 bias)."""
    worst = 32768.0 * float(np.abs(matrix).sum(axis=0).max())
    return int(worst) + 2


@cache
def row_matrix(in_rate: int, out_rate: int, blocks: int) -> RowMatrix:
    """The GEMM layout of `design_filter(in_rate, out_rate)` for rows of `blocks` * M new input samples.

    Causal output m is sum_i h[m*M - L*i] * x[i]; row r produces outputs r*B*L ... (r+1)*B*L - 1 from
    inputs up to (r+1)*B*M - 1 and the `history` samples before r*B*M.
    """
    d = design_filter(in_rate, out_rate)
    up, down, h = d.up, d.down, d.taps
    history = (len(h) - 1) // up
    block_in, block_out = blocks * down, blocks * up
    matrix = np.zeros((1 + history + block_in, block_out))
    for q in range(block_out):
        for k in range(history + block_in):
            j = q * down - up * (k - history)  # the tap that multiplies input (row start + k - history)
            if 0 <= j < len(h):
                matrix[1 + k, q] = h[j]
    offset = _offset(matrix[1:])
    matrix[0, :] = offset + 0.5
    matrix.setflags(write=False)
    available = tuple(0 if p == 0 else (p * up - 1) // down + 1 for p in range(block_in + 1))
    return RowMatrix(matrix, history, block_in, block_out, offset, available)
