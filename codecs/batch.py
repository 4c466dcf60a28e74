"""The many-calls caller path: one 20 ms mu-law frame from each of N calls converted in one GEMM.

Per-call conversion (`telcodec.CallerPath`) is dominated by numpy's per-call overhead (~0.5-1.5 us
for each of its eight numpy steps on 160 samples). `BatchCallerPath` keeps the filter history of many calls in
slots and runs about ten numpy calls per 64 calls per tick for all frames gathered in that tick, so the
fixed cost is shared and what is left is the arithmetic (see bench/codec.py for the numbers).

The price is latency: the gateway receives each call's frames on its own socket at its own moment, so
batching means holding frames until the next tick (up to one tick period, on average half of it).

Output is the causal filter output, exactly 480 samples per frame: a slot's frames concatenated equal
`CallerPath`'s output preceded by the 60 samples (2.5 ms, the group delay) that the delay-compensated
`CallerPath` leaves out at the start of a stream. The latency is the same. All arithmetic is exact
(see `telcodec.filters`), so the result does not depend on which other calls share the batch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import as_strided

from telcodec.filters import design_filter, row_matrix
from telcodec.g711 import ULAW_DECODE_TABLE
from telcodec.resample import BLOCKS_PER_ROW, FRAME_SAMPLES_8K, _output_tables

__all__ = ["BatchCallerPath"]

_IN_RATE = 8000
_OUT_RATE = 24000
_DECODE = ULAW_DECODE_TABLE.astype(np.float64)
CHUNK_CALLS = (
    64  # calls per GEMM: a chunk's work buffers (~0.8 MB) stay in cache; measured ~2x at 1,000 calls
)


class BatchCallerPath:
    """Mu-law 8 kHz -> PCM16 24 kHz for up to `capacity` concurrent calls, one frame of each per `process`.

    Give each call a slot (`open_slot`), then per tick pass the frames gathered from the calls that
    have one, as an (n, 160) uint8 array, with their slots: `process` returns (n, 480) int16.
    A slot must appear at most once per `process` call; `close_slot` frees it for a new call.
    """

    __slots__ = (
        "_block",
        "_ext",
        "_free",
        "_hist",
        "_matrix",
        "_pcm",
        "_rows",
        "_windows",
        "_z",
        "_zi",
        "capacity",
    )

    def __init__(self, capacity: int) -> None:
        rm = row_matrix(_IN_RATE, _OUT_RATE, BLOCKS_PER_ROW)
        self.capacity = capacity
        self._matrix = rm.matrix
        self._pcm = _output_tables(rm.offset)[0]
        self._block = rm.block_in
        self._rows = FRAME_SAMPLES_8K // rm.block_in
        self._hist = np.zeros((capacity, rm.history), dtype=np.float64)
        self._free = list(range(capacity - 1, -1, -1))
        # Work buffers for one chunk of calls, reused: fresh multi-megabyte temporaries would be
        # page-faulted in on every tick, and a chunk that stays in cache is faster (see CHUNK_CALLS).
        self._ext = np.empty((CHUNK_CALLS, rm.history + FRAME_SAMPLES_8K), dtype=np.float64)
        self._windows = np.empty((CHUNK_CALLS * self._rows, rm.matrix.shape[0]), dtype=np.float64)
        self._windows[:, 0] = 1.0  # the constant column that adds the rounding bias
        self._z = np.empty((CHUNK_CALLS * self._rows, rm.block_out), dtype=np.float64)
        self._zi = np.empty((CHUNK_CALLS * self._rows, rm.block_out), dtype=np.intp)

    @property
    def delay_ms(self) -> float:
        """The group delay in milliseconds (2.5)."""
        return design_filter(_IN_RATE, _OUT_RATE).delay_ms

    def open_slot(self) -> int:
        """Take a free slot with silent history for a new call; IndexError when all are taken."""
        if not self._free:
            raise IndexError(f"all {self.capacity} slots are in use")
        slot = self._free.pop()
        self._hist[slot] = 0.0
        return slot

    def close_slot(self, slot: int) -> None:
        """Give a call's slot back."""
        self._free.append(slot)

    def process(self, frames: npt.NDArray[np.uint8], slots: npt.NDArray[np.intp]) -> npt.NDArray[np.int16]:
        """Convert frames[i] (160 mu-law codes) of the call in slots[i]; returns (n, 480) int16 samples."""
        if frames.dtype != np.uint8 or frames.ndim != 2 or frames.shape[1] != FRAME_SAMPLES_8K:
            raise ValueError(
                f"frames must be (n, {FRAME_SAMPLES_8K}) uint8, got {frames.shape} {frames.dtype}"
            )
        if len(slots) != len(frames):
            raise ValueError(f"{len(frames)} frames but {len(slots)} slots")
        out = np.empty((len(frames), 3 * FRAME_SAMPLES_8K), dtype=np.int16)
        for i in range(0, len(frames), CHUNK_CALLS):
            self._chunk(frames[i : i + CHUNK_CALLS], slots[i : i + CHUNK_CALLS], out[i : i + CHUNK_CALLS])
        return out

    def _chunk(
        self, frames: npt.NDArray[np.uint8], slots: npt.NDArray[np.intp], out: npt.NDArray[np.int16]
    ) -> None:
        n, h, rows = len(frames), self._hist.shape[1], self._rows
        ext = self._ext[:n]
        ext[:, :h] = self._hist[slots]
        ext[:, h:] = _DECODE[frames.astype(np.intp)]
        self._hist[slots] = ext[:, FRAME_SAMPLES_8K:]
        # Row r of frame i's windows starts r*B samples into ext[i]: the rows overlap, so copy a strided
        # view once (cheaper than a gather through an index array).
        view = as_strided(
            ext, (n, rows, h + self._block), (ext.strides[0], self._block * 8, 8), writeable=False
        )
        windows = self._windows[: n * rows]
        np.copyto(windows[:, 1:].reshape(n, rows, h + self._block), view)
        z = self._z[: n * rows]
        np.dot(windows, self._matrix, out=z)
        zi = self._zi[: n * rows]
        np.copyto(zi, z, casting="unsafe")  # truncation is floor here: z > 0 by construction
        np.take(self._pcm, zi.reshape(n, -1), out=out, mode="clip")
