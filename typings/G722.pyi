# Type stub for the `G722` package (sippy/libg722's C extension), which ships none. Only what telcodec uses.
from array import array
from typing import Any

import numpy as np
import numpy.typing as npt

class G722:
    """One G.722 codec state (encoder and decoder share the object but not their state)."""

    def __init__(self, sample_rate: int, bit_rate: int, use_numpy: bool | None = None) -> None: ...
    def encode(self, samples: npt.NDArray[np.int16] | array[int] | list[int]) -> bytes: ...
    def decode(self, data: bytes) -> array[int] | npt.NDArray[Any]: ...
