"""A cheap stand-in for a gateway, to measure how many calls ONE load-generator process can drive.

`python -m gateway.loadtest.sink --port 8099` accepts Media Streams connections and, from `start` to
`stop`, sends bot audio at real time the way the gateway does: a 40 ms `media` message followed by a
mark, every 40 ms, on an absolute schedule, 200 ms ahead of playback (so the phone's queue never
runs dry unless the generator lags). It parses nothing but the first messages and `stop`, so
nearly all the CPU of a run goes to the generator under test. Run it in its own process, then e.g.
`python -m gateway.loadtest --url ws://127.0.0.1:8099/media --scenario soak --calls 300
--concurrency 300 --ramp-up 10` and read the "generator loop lag" row.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import time
from collections.abc import Sequence

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

__all__ = ["main", "serve_sink"]

CHUNK_MS = 40
LEAD_CHUNKS = 5  # sent at once first, as the gateway's faster-than-real-time source would: 200 ms ahead
CHUNK = base64.b64encode(b"\x7f" * (CHUNK_MS * 8)).decode("ascii")


async def _talk(ws: ServerConnection, sid_json: str) -> None:
    start = time.monotonic()
    n = 0
    with contextlib.suppress(ConnectionClosed):
        while True:
            await asyncio.sleep(max(0.0, start + (n - LEAD_CHUNKS) * CHUNK_MS / 1000 - time.monotonic()))
            await ws.send(f'{{"event":"media","streamSid":{sid_json},"media":{{"payload":"{CHUNK}"}}}}')
            await ws.send(f'{{"event":"mark","streamSid":{sid_json},"mark":{{"name":"0:{n}"}}}}')
            n += 1


async def _handle(ws: ServerConnection) -> None:
    talker: asyncio.Task[None] | None = None
    try:
        async for message in ws:
            if talker is None and isinstance(message, str) and '"event":"start"' in message.replace(" ", ""):
                sid = json.loads(message)["start"]["streamSid"]
                talker = asyncio.create_task(_talk(ws, json.dumps(sid)))
            elif isinstance(message, str) and message.startswith('{"event": "stop"'):
                break
    except ConnectionClosed:
        pass
    finally:
        if talker is not None:
            talker.cancel()
        await ws.close()


async def serve_sink(host: str, port: int) -> None:
    """Serve until cancelled."""
    async with serve(_handle, host, port, compression=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"sink on ws://{host}:{bound}/media", flush=True)
        await asyncio.Future()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sink until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m gateway.loadtest.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_sink(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
