"""The process as an operator runs it: graceful drain on SIGTERM, and several workers on one port."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

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


# What a worker reports about itself, one series per worker (`pid` label), with several workers.
WORKER_METRICS = (
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_cpu_seconds_total",
    "process_virtual_memory_bytes",
    "process_start_time_seconds",
    "process_max_fds",
    "gateway_asyncio_tasks",
)
# Tasks a call adds at least: its handler, the directions of its TaskGroup, the realtime client's and the
# embedded emulator's connection tasks (8 when this was written).
CALL_TASKS = 5


def child_pids(pid: int) -> set[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended while we looked
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


async def per_worker_samples(port: int) -> dict[str, dict[int, float]]:
    """Each of WORKER_METRICS in one scrape of /metrics: its value by the `pid` label of the series."""
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    found: dict[str, dict[int, float]] = {name: {} for name in WORKER_METRICS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in found and "pid" in sample.labels:
                found[sample.name][int(sample.labels["pid"])] = sample.value
    return found


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
    reports the calls of all workers; a SIGHUP ends none of them; SIGTERM stops them all with exit code 0."""
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
        # SIGHUP (BOTS_FILE's reload) goes to every worker; without a bots file it changes nothing.
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert proc.returncode is None
        assert [await calls_completed(port) for _ in range(4)] == [6.0] * 4
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0


async def test_workers_each_report_process_metrics_and_tasks() -> None:
    """With GATEWAY_WORKERS=2 every scrape has the process metrics and the asyncio task gauge of each
    worker, one series per worker pid, and a worker's task count rises while it carries a call."""
    async with gateway_process(GATEWAY_WORKERS="2", CALLER_IDLE_TIMEOUT_S="600") as (proc, port):
        workers = child_pids(proc.pid)
        assert len(workers) == 2, workers
        for _ in range(int(scaled(15) / 0.05)):  # the other worker may still be starting
            samples = await per_worker_samples(port)
            sampled = all(set(by_pid) == workers for by_pid in samples.values())
            # Sampled at start-up only the main task runs; from the first refresh on, the sampler too.
            if sampled and all(tasks >= 2 for tasks in samples["gateway_asyncio_tasks"].values()):
                break
            await asyncio.sleep(0.05)
        assert {name: set(by_pid) for name, by_pid in samples.items()} == dict.fromkeys(
            WORKER_METRICS, workers
        )
        for pid in workers:
            assert samples["process_resident_memory_bytes"][pid] > 1e6
            assert samples["process_open_fds"][pid] >= 3
            assert samples["gateway_asyncio_tasks"][pid] >= 2
        idle = samples["gateway_asyncio_tasks"]
        async with TwilioCall(f"ws://127.0.0.1:{port}/media") as call:
            await call.send_audio(silence_ulaw(200), realtime=False)
            for _ in range(int(scaled(15) / 0.05)):  # until the next sample of the worker with the call
                busy = (await per_worker_samples(port))["gateway_asyncio_tasks"]
                if any(busy[pid] >= idle[pid] + CALL_TASKS for pid in workers):
                    break
                await asyncio.sleep(0.05)
            assert any(busy[pid] >= idle[pid] + CALL_TASKS for pid in workers), (idle, busy)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), scaled(20)) == 0
