"""telcodec: the gateway's codec core (G.711 and streaming resampling), vectorized with numpy.

Import name `telcodec`; the source folder is `codecs/` (see pyproject.toml for why).
"""

from telcodec.batch import BatchCallerPath
from telcodec.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from telcodec.resample import BotPath, CallerPath, Resampler, UlawUpsampler

__all__ = [
    "BatchCallerPath",
    "BotPath",
    "CallerPath",
    "Resampler",
    "UlawUpsampler",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]
