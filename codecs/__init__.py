"""telcodec: the gateway's codec core (G.711 and streaming resampling), vectorized with numpy.

Import name `telcodec`; the source folder is `codecs/` (see pyproject.toml for why).
"""

from telcodec.batch import BatchCallerPath
from telcodec.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from telcodec.resample import BotPath, CallerPath, Resampler, UlawUpsampler
from telcodec.wire import SESSION_FORMAT, SUPPORTED_FORMATS, Encoding, WireFormat

__all__ = [
    "SESSION_FORMAT",
    "SUPPORTED_FORMATS",
    "BatchCallerPath",
    "BotPath",
    "CallerPath",
    "Encoding",
    "Resampler",
    "UlawUpsampler",
    "WireFormat",
    "alaw_decode",
    "alaw_encode",
    "ulaw_decode",
    "ulaw_encode",
]
