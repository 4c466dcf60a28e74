"""The process as an operator runs it: graceful drain on SIGTERM, and several workers on one port."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus

from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from tests.conftest import scaled
from tests.integration.test_cli import clean_env, free_port


async def status(port: int, path: str) -> int:
    """The HTTP status of GET `path` (0 when nothing answers)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


async def wait_status(port: int, path: str, expected: int, timeout_s: float = 15) -> None:
    """Poll until GET `path` answers `expected`."""
    for _ in range(int(scaled(timeout_s) / 0.05)):
        if await status(port, path) == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered {expected}")


@asynccontextmanager
async def gateway_process(**env: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`python -m gateway serve` on a free port with the embedded emulator, ready to take calls."""
    port = free_port()
    full = clean_env(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), LOG_LEVEL="warning", **env)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", env=full)
    try:
        await wait_status(port, "/readyz", 200)
        yield proc, port
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def calls_completed(port: int) -> float:
    """gateway_calls_total{outcome="completed"} as /metrics reports it."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_calls_total" and sample.labels.get("outcome") == "completed":
                return sample.value
    return 0.0


async def test_sigterm_drains_then_exits_zero() -> None:
    """On SIGTERM readiness turns 503 at once and new streams are refused, while the call in progress
    still gets its answer; when it hangs up the process exits 0."""
    async with gateway_process() as (proc, port):
        async with TwilioCall(f"ws://127.0.0.1:{port}/media") as call:
            await call.send_audio(silence_ulaw(200), realtime=False)
            proc.send_signal(signal.SIGTERM)
            await wait_status(port, "/readyz", 503)
            assert await status(port, "/healthz") == 200
            with pytest.raises(InvalidStatus) as refused:
                await TwilioCall(f"ws://127.0.0.1:{port}/media").open()
            assert refused.value.response.status_code == 503
            await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=False)
            for _ in range(int(scaled(200))):
                if call.received_media:
                    break
                await asyncio.sleep(0.05)
            assert call.received_media, "the draining gateway stopped serving its active call"
        assert await asyncio.wait_for(proc.wait(), scaled(15)) == 0


async def test_drain_timeout_closes_remaining_calls() -> None:
    """A call still running when GATEWAY_DRAIN_TIMEOUT_S is up is closed with 1001; the exit code is 0."""
    async with gateway_process(GATEWAY_DRAIN_TIMEOUT_S="0.5") as (proc, port):
        async with TwilioCall(f"ws://127.0.0.1:{port}/media") as call:
            await call.send_audio(silence_ulaw(200), realtime=False)
            proc.send_signal(signal.SIGTERM)
            sender = asyncio.create_task(call.send_audio(silence_ulaw(20_000), realtime=True))
            assert await call.wait_closed(timeout_s=scaled(10)) == 1001
            sender.cancel()
        assert await asyncio.wait_for(proc.wait(), scaled(15)) == 0


async def test_workers_share_the_port_and_their_metrics() -> None:
    """With GATEWAY_WORKERS=2 calls are served on one port, and every scrape (whichever worker answers)
    reports the calls of all workers; SIGTERM stops them all with exit code 0."""
    async with gateway_process(GATEWAY_WORKERS="2") as (proc, port):
        for _ in range(6):
            async with TwilioCall(f"ws://127.0.0.1:{port}/media") as call:
                await call.send_audio(silence_ulaw(100), realtime=False)
        for _ in range(int(scaled(100))):
            if await calls_completed(port) == 6:
                break
            await asyncio.sleep(0.05)
        scrapes = [await calls_completed(port) for _ in range(8)]
        assert scrapes == [6.0] * 8
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0
