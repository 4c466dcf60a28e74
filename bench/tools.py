"""The tool round trip the gateway adds: the model's function call -> the function's output back at the
service, less the time the operator's webhook took.

Starts `python -m gateway serve` as a subprocess with `BOT_TOOLS=lookup`, the emulator (scripted to call
`lookup` when the caller presses 1) and a webhook that answers at once, both in this process on one clock
(the event loop's). Each call: a Twilio caller presses 1; the emulator notes when its function call went
out and when the output came back, the webhook when the POST came and when it answered. The gateway's
share is `(output received - call sent) - (webhook answered - webhook received)`: parsing the event,
building and signing the POST, the loopback hops both ways, parsing the answer, sending the output.

    python -m bench.tools [--calls 200] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.capacity import GatewayProcess
from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.emulator.session import ToolRule
from gateway.loadtest.client import TwilioCall
from gateway.logging import configure_logging
from gateway.realtime.upstream import CLIENT_REQUEST_ID_HEADER, client_request_id
from gateway.stats import percentile

LOOKUP = {
    "type": "function",
    "name": "lookup",
    "description": "Look something up",
    "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
}


async def _webhook(spans: dict[str, tuple[float, float]]) -> tuple[web.AppRunner, int]:
    """A webhook that answers at once, noting when each tool call came and went (by its tool_call_id)."""
    loop = asyncio.get_running_loop()

    async def handle(request: web.Request) -> web.Response:
        received = loop.time()
        call_id = json.loads(await request.read())["tool_call_id"]
        response = web.json_response({"value": 42})
        spans[call_id] = (received, loop.time())
        return response

    app = web.Application()
    app.router.add_post("/tools", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _one_call(url: str, emulator: EmulatorServer) -> None:
    """A caller presses 1 and stays until its session has the tool's output."""
    async with TwilioCall(url, keep_audio=False) as call:
        await call.send_dtmf("1")
        request_id = client_request_id(call.call_sid)
        for _ in range(500):
            await asyncio.sleep(0.02)
            mine = [s for s in emulator.sessions if s.headers.get(CLIENT_REQUEST_ID_HEADER) == request_id]
            if mine and mine[0].tool_outputs:
                return
        raise TimeoutError("no tool output within 10 s")


async def run(calls: int, concurrency: int) -> dict[str, float]:
    """Place `calls` calls, `concurrency` at a time; the gateway's share of each tool round trip (ms)."""
    spans: dict[str, tuple[float, float]] = {}
    hook, port = await _webhook(spans)
    rule = ToolRule("pressed 1", "lookup", '{"key": "balance"}', speak=False)
    config = EmulatorConfig(realtime_factor=10.0, reply_ms=400, tool_rules=(rule,), record_audio=False)
    with tempfile.TemporaryDirectory() as folder:
        tools = Path(folder) / "tools.json"
        tools.write_text(json.dumps([LOOKUP]))
        async with EmulatorServer(config) as emulator, aiohttp.ClientSession() as http:
            env = {
                "REALTIME_URL": emulator.ga_url(),
                "BOT_TOOLS": "lookup",
                "TOOLS_FILE": str(tools),
                "TOOLS_WEBHOOK_URL": f"http://127.0.0.1:{port}/tools",
                "WEBHOOK_SECRET": "bench",
                "DTMF_MAX_DIGITS": "1",
                "LOG_LEVEL": "warning",
            }
            gateway = GatewayProcess(env, pin=False)
            await gateway.start(http)
            try:
                gate = asyncio.Semaphore(concurrency)

                async def bounded() -> None:
                    async with gate:
                        await _one_call(f"ws://127.0.0.1:{gateway.port}/media", emulator)

                await asyncio.gather(*(bounded() for _ in range(calls)))
            finally:
                await gateway.stop()
    await hook.cleanup()
    overheads, webhook_ms = [], []
    for session in emulator.sessions:
        for response in session.responses:
            if response.call_ms is None or response.call_id is None:
                continue
            [output] = [o for o in session.tool_outputs if o.call_id == response.call_id]
            received, answered = spans[response.call_id]  # the webhook's own time for this call
            webhook_ms.append((answered - received) * 1000)
            overheads.append(output.at_ms - response.call_ms - webhook_ms[-1])
    return {
        "calls": len(overheads),
        "overhead_p50_ms": percentile(overheads, 50),
        "overhead_p99_ms": percentile(overheads, 99),
        "overhead_max_ms": max(overheads),
        "webhook_p50_ms": percentile(webhook_ms, 50),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args(argv)
    configure_logging("warning")
    figures = asyncio.run(run(args.calls, args.concurrency))
    for name, value in figures.items():
        print(f"{name:>18}: {value:.2f}" if isinstance(value, float) else f"{name:>18}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
