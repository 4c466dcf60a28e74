"""The caller's key presses, collected into what the model is told, sans-I/O.

Keys come one by one from any leg (Twilio's `dtmf` message, the other providers' DTMF events, RFC 4733
and SIP INFO). A `KeyCollector` gathers them until the caller ends the entry: the terminator key (`#` by
default; it is part of what the model hears), a number of keys, or a pause. Then `keys_message` says it
in words the model reads as keys, digit by digit: "The caller pressed 1 2 3 #".

Feed it `press(key, now_ms)`, and `poll(now_ms)` now and then (every caller frame does); each returns the
keys of a finished entry, or None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["DTMF_KEYS", "DtmfSettings", "KeyCollector", "keys_message"]

DTMF_KEYS: Final = frozenset("0123456789*#ABCD")


@dataclass(frozen=True, slots=True)
class DtmfSettings:
    """When an entry of keys ends. `max_keys` 0: no count limit; `terminator` "": none."""

    forward: bool = True  # DTMF_MODE=forward (off: keys are counted, the model never hears them)
    terminator: str = "#"
    max_keys: int = 0
    pause_ms: int = 2000

    def __post_init__(self) -> None:
        if self.terminator and self.terminator not in DTMF_KEYS:
            raise ValueError(f"the terminator must be one DTMF key (0-9, *, #, A-D), got {self.terminator!r}")
        if self.max_keys < 0 or self.pause_ms <= 0:
            raise ValueError("max_keys must be >= 0 and pause_ms > 0")


class KeyCollector:
    """One call's entry of keys in progress (see the module docstring)."""

    def __init__(self, settings: DtmfSettings) -> None:
        self.settings = settings
        self._keys: list[str] = []
        self._last_ms = 0

    @property
    def pending(self) -> str:
        """The keys of the entry so far."""
        return "".join(self._keys)

    def press(self, key: str, now_ms: int) -> str | None:
        """One key; the entry's keys when this one ends it (terminator or count), else None. A key that
        is not a DTMF key is ignored."""
        if key not in DTMF_KEYS:
            return None
        self._keys.append(key)
        self._last_ms = now_ms
        settings = self.settings
        if key == settings.terminator or (settings.max_keys and len(self._keys) >= settings.max_keys):
            return self._take()
        return None

    def poll(self, now_ms: int) -> str | None:
        """The entry's keys once the caller has paused `pause_ms` after the last one, else None."""
        if self._keys and now_ms - self._last_ms >= self.settings.pause_ms:
            return self._take()
        return None

    def _take(self) -> str:
        keys, self._keys = "".join(self._keys), []
        return keys


def keys_message(keys: str) -> str:
    """What the model is told: each key as itself, spaced so that "123" is read as keys, not a number."""
    return "The caller pressed " + " ".join(keys)
