"""Socket helpers shared by the provider side (aiohttp) and the realtime side (websockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

__all__ = ["Abortable", "close_or_abort"]


class Abortable(Protocol):
    """Anything with a transport-style `abort()`."""

    def abort(self) -> None: ...


async def close_or_abort(
    closing: Coroutine[Any, Any, Any], transport: Abortable | None, timeout_s: float
) -> None:
    """Run a WebSocket close; if it has not finished in `timeout_s`, abort the connection and wait again.

    A peer that stopped reading can hold a close frame (and the closing handshake) forever, and neither
    aiohttp nor websockets gives up when the awaiting task is cancelled, so the wait is bounded here
    and the close task is never cancelled. A failed close of a dead socket is not news: it is dropped.
    """
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done and transport is not None:
        transport.abort()
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    for finished in done:
        if not finished.cancelled():
            finished.exception()
