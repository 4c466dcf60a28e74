"""A call-replay worker process driven over stdin/stdout, one JSON object per line (for Locust).

Locust runs its users as gevent greenlets in a monkey-patched process, where an asyncio event loop
cannot run beside them. So each Locust worker starts one of these processes
(`python -m gateway.loadtest.worker --url ws://.../media --scenario question_answer ...`) and asks
it for calls: a line `{"id": 7, "scenario": "barge_in"}` in, a line `{"id": 7, "result": {...}}` out
(the `CallResult` as in results.json) when that call has ended. Calls run concurrently, on the same
shared playout ticker and absolute send schedules as the CLI's, so one worker process drives hundreds.

The first line out, before any request, is `{"ready": {"pid": ..., "run_id": "..."}}`: every CallSid of
this process starts with `CA<run id>`, a fresh random id per process, so two workers (or two runs)
never share a CallSid. It needs neither rich nor matplotlib (the `loadtest` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from gateway.loadtest.client import monotonic_ms
from gateway.loadtest.recordings import Recording
from gateway.loadtest.runner import CallRunner, LiveStats, RunConfig, media_url
from gateway.loadtest.script import DEFAULT_SCENARIO_DIR, Scenario, resolve_scenario
from gateway.loadtest.wires import PROVIDERS, parse_format

__all__ = ["build_parser", "handle_request", "main", "serve"]


def build_parser() -> argparse.ArgumentParser:
    """The worker's command line (the locustfile builds it from environment variables)."""
    parser = argparse.ArgumentParser(prog="python -m gateway.loadtest.worker", description=__doc__)
    parser.add_argument("--url", required=True, help="the media WebSocket, or the gateway's base URL")
    parser.add_argument("--provider", choices=PROVIDERS, default="twilio")
    parser.add_argument("--format", metavar="ENCODING/RATE", help="the stream's format (default: provider's)")
    parser.add_argument("--scenario", action="append", required=True, help="a scenario it may be asked for")
    parser.add_argument("--scenario-dir", type=Path, default=DEFAULT_SCENARIO_DIR)
    parser.add_argument("--twilio-auth-token")
    parser.add_argument("--public-url")
    return parser


async def handle_request(
    runner: CallRunner, scenarios: dict[str, Scenario], line: str, index: int
) -> dict[str, Any]:
    """Answer one request line: run the call, return the response object."""
    try:
        request = json.loads(line)
        scenario = scenarios[request["scenario"]]
    except (ValueError, KeyError, TypeError) as exc:
        return {"id": None, "error": f"bad request: {exc}"}
    result = await runner.run_call(index, scenario)
    return {"id": request.get("id"), "result": result.as_dict()}


def _write_line(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(args: argparse.Namespace) -> None:
    """Read requests from stdin until it closes; write each response as soon as its call ends."""
    cache: dict[Path, Recording] = {}
    scenarios = {s.name: s for s in (resolve_scenario(n, args.scenario_dir, cache) for n in args.scenario)}
    config = RunConfig(
        url=media_url(args.url, args.provider),
        provider=args.provider,
        media_format=parse_format(args.format),
        mix=tuple((s, 1.0) for s in scenarios.values()),
        calls=None,
        duration_s=float("inf"),
        auth_token=args.twilio_auth_token,
        public_url=args.public_url,
    )
    runner = CallRunner(config, None, LiveStats())
    runner.t0_ms = monotonic_ms()
    _write_line({"ready": {"pid": os.getpid(), "run_id": config.run_id}})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with aiohttp.ClientSession() as runner.http, asyncio.TaskGroup() as group:
        index = 0
        while line := await reader.readline():

            async def answer(text: str, number: int) -> None:
                _write_line(await handle_request(runner, scenarios, text, number))

            group.create_task(answer(line.decode("utf-8"), index))
            index += 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the worker until stdin closes."""
    from gateway.logging import configure_logging

    configure_logging("warning")
    asyncio.run(serve(build_parser().parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
