"""telcodec: the gateway's codec core (G.711 and streaming resampling), vectorized with numpy.

Import name `telcodec`; the source folder is `codecs/` (see pyproject.toml for why).
"""

from telcodec.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode

__all__ = ["alaw_decode", "alaw_encode", "ulaw_decode", "ulaw_encode"]
