"""Quiet logs over real processes: at LOG_LEVEL=info no chatter of websockets or of the emulator's
connections; at debug all of it."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from tests.conftest import scaled
from tests.integration.test_cli import clean_env, free_port
from tests.integration.test_lifecycle import wait_status

LogLine = dict[str, Any]


def read_lines(path: Path) -> list[LogLine]:
    """The JSON log lines written so far to `path`."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def chatter(lines: list[LogLine]) -> list[LogLine]:
    """Lines below warning from the websockets library or from the emulator."""
    return [
        line
        for line in lines
        if line["level"] in ("debug", "info")
        and (
            str(line.get("logger", "")).startswith("websockets") or str(line["event"]).startswith("emulator.")
        )
    ]


@asynccontextmanager
async def process(log_path: Path, *argv: str, **env: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m gateway ARGV` with its stderr in `log_path`; SIGTERM at the end must exit it with 0."""
    with log_path.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *argv, env=clean_env(**env), stderr=stderr
        )
        try:
            yield proc
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), scaled(15)) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def one_call_logs(level: str, tmp_path: Path) -> list[LogLine]:
    """The log of `python -m gateway serve` (embedded emulator) at `level` that carried one call."""
    port = free_port()
    log_path = tmp_path / f"serve-{level}.log"
    async with process(log_path, "serve", GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), LOG_LEVEL=level):
        await wait_status(port, "/readyz", 200)
        async with TwilioCall(f"ws://127.0.0.1:{port}/media") as call:
            await call.send_audio(speech_ulaw(600) + silence_ulaw(800), realtime=False)
            for _ in range(int(scaled(200))):
                if call.received_media:
                    break
                await asyncio.sleep(0.05)
            assert call.received_media, "the call got no answer"
    return read_lines(log_path)


async def emulator_logs(level: str, tmp_path: Path) -> list[LogLine]:
    """The log of `python -m gateway emulator` at `level` that one client connected to."""
    log_path = tmp_path / f"emulator-{level}.log"
    async with process(log_path, "emulator", "--port", "0", LOG_LEVEL=level):
        for _ in range(int(scaled(15) / 0.05)):
            started = [line for line in read_lines(log_path) if line["event"] == "emulator.listening"]
            if started:
                break
            await asyncio.sleep(0.05)
        assert started, "the emulator never logged its start-up line"
        async with connect(started[0]["ga_url"]) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), scaled(10)))["type"] == "session.created"
    return read_lines(log_path)


async def test_call_at_info_logs_no_connection_chatter(tmp_path: Path) -> None:
    """At LOG_LEVEL=info a call through the embedded emulator logs no websockets or emulator lines."""
    lines = await one_call_logs("info", tmp_path)
    assert any(line["level"] == "info" for line in lines), "the gateway logged nothing at info"
    assert chatter(lines) == []


async def test_call_at_debug_logs_connection_chatter(tmp_path: Path) -> None:
    """At LOG_LEVEL=debug the same call shows websockets' connection lines and the emulator's sessions."""
    lines = await one_call_logs("debug", tmp_path)
    seen = {(line.get("logger"), line["event"]) for line in chatter(lines)}
    assert ("websockets.server", "connection open") in seen
    assert (None, "emulator.connected") in seen
    assert (None, "emulator.disconnected") in seen


async def test_standalone_emulator_at_info_logs_only_its_start_up(tmp_path: Path) -> None:
    """`python -m gateway emulator` at info logs its listening line (with the URLs) but no connection."""
    lines = await emulator_logs("info", tmp_path)
    assert [line["event"] for line in chatter(lines)] == ["emulator.listening"]
    assert chatter(lines)[0]["level"] == "info"


async def test_standalone_emulator_at_debug_logs_connections(tmp_path: Path) -> None:
    """`python -m gateway emulator` at debug also logs websockets' and its own lines for each connection."""
    events = {line["event"] for line in chatter(await emulator_logs("debug", tmp_path))}
    assert {"emulator.listening", "connection open", "emulator.connected", "emulator.disconnected"} <= events
