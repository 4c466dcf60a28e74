"""Start-up as an operator meets it, over a real `python -m gateway serve` process: refusals with exit
code 2 and one clear line, the emulator never silent, readiness only once the realtime service answered."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.emulator import EmulatorConfig, EmulatorServer
from tests.conftest import scaled
from tests.integration.test_cli import clean_env, free_port
from tests.integration.test_lifecycle import status, wait_status


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON log lines written so far (other lines skipped)."""
    lines = []
    for raw in path.read_text().splitlines():
        try:
            lines.append(json.loads(raw))
        except json.JSONDecodeError:
            continue
    return lines


def events(path: Path) -> list[str]:
    """The `event` names of the log lines so far, in order."""
    return [line.get("event", "") for line in log_lines(path)]


@dataclasses.dataclass
class Served:
    """A gateway process, its port and its log file."""

    proc: asyncio.subprocess.Process
    port: int
    log: Path


@asynccontextmanager
async def gateway_process(tmp_path: Path, port: int | None = None, **env: str) -> AsyncIterator[Served]:
    """`python -m gateway serve` with these settings, its stderr in a file; killed afterwards."""
    port = free_port() if port is None else port
    log = tmp_path / f"gateway-{port}.log"
    full = clean_env(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), **env)
    with log.open("w") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "serve", env=full, stderr=sink
        )
    try:
        yield Served(proc, port, log)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_event(log: Path, name: str, timeout_s: float = 15) -> dict[str, Any]:
    """The first log line with event `name`, waiting for it to be written."""
    for _ in range(int(scaled(timeout_s) / 0.05)):
        for line in log_lines(log):
            if line.get("event") == name:
                return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {name} line; got {events(log)}")


def run_serve(timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway serve` to its end with these settings."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=clean_env(GATEWAY_HOST="127.0.0.1", **env),
        capture_output=True,
        text=True,
        timeout=scaled(timeout_s),
        check=False,
    )


def test_production_setting_without_backend_refuses_to_start() -> None:
    """TWILIO_AUTH_TOKEN with no realtime backend stops start-up (exit 2) saying what to set."""
    result = run_serve(TWILIO_AUTH_TOKEN="tok-secret-123", GATEWAY_PORT=str(free_port()))
    assert result.returncode == 2
    assert "no realtime backend is configured" in result.stderr
    assert "AZURE_OPENAI_ENDPOINT" in result.stderr
    assert "REALTIME_BACKEND=emulator" in result.stderr
    assert "tok-secret-123" not in result.stderr


def test_conflicting_backends_refuse_to_start() -> None:
    """An OpenAI key next to Azure settings stops start-up (exit 2) naming both."""
    result = run_serve(
        OPENAI_API_KEY="sk-secret-value-1",
        AZURE_OPENAI_ENDPOINT="https://r.openai.azure.com",
        AZURE_OPENAI_DEPLOYMENT="rt",
        GATEWAY_PORT=str(free_port()),
    )
    assert result.returncode == 2
    assert "conflicting realtime backends" in result.stderr
    assert "sk-secret-value-1" not in result.stderr


def test_port_in_use_is_one_line_and_exit_2() -> None:
    """A port another process holds gives exit 2 and one log line saying so, not a traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_serve(GATEWAY_PORT=str(port), REALTIME_BACKEND="emulator")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = json.loads(lines[0])
    assert (line["event"], line["level"], line["port"]) == ("cannot_listen", "error", port)
    assert line["reason"] == "the port is in use"


async def test_port_zero_logs_the_bound_port_and_ready_after_it(tmp_path: Path) -> None:
    """GATEWAY_PORT=0 logs the port actually bound; gateway_ready comes after listening, and that port
    answers /readyz 200; the emulator in use is a warning and a metric."""
    async with gateway_process(tmp_path, port=0, REALTIME_BACKEND="emulator") as served:
        ready = await wait_event(served.log, "gateway_ready")
        listening = await wait_event(served.log, "listening")
        port = listening["port"]
        assert port != 0
        assert ready["port"] == port
        order = events(served.log)
        assert order.index("listening") < order.index("gateway_ready")
        warning = await wait_event(served.log, "embedded_emulator_in_use")
        assert warning["level"] == "warning"
        assert order.index("embedded_emulator_in_use") < order.index("gateway_ready")
        assert await status(port, "/readyz") == 200
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert "gateway_emulator_in_use 1.0" in await response.text()
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), scaled(15)) == 0


async def test_wrong_key_stops_start_up(tmp_path: Path) -> None:
    """A realtime service that refuses the key (401) at start-up: an error line with the cause, exit 2,
    never ready, and the key not in the log."""
    async with EmulatorServer(EmulatorConfig(api_key="right-key")) as emulator:
        async with gateway_process(
            tmp_path, REALTIME_URL=emulator.ga_url(), REALTIME_API_KEY="wrong-key-123"
        ) as served:
            code = await asyncio.wait_for(served.proc.wait(), scaled(30))
        assert code == 2
        refused = next(line for line in log_lines(served.log) if line["event"] == "upstream_refused")
        assert refused["level"] == "error"
        assert "401" in refused["cause"]
        assert "gateway_not_started" in events(served.log)
        assert "gateway_ready" not in events(served.log)
        assert "wrong-key-123" not in served.log.read_text()
        assert emulator.sessions == []  # the probe is not a call


async def test_transient_failure_keeps_readiness_503_and_retries(tmp_path: Path) -> None:
    """A realtime service answering 503 at start-up: the gateway serves /healthz, /readyz stays 503, the
    probe is retried with warnings, and readiness turns 200 once the service answers."""
    emulator = EmulatorServer(EmulatorConfig(refuse_status=503))
    async with emulator, gateway_process(tmp_path, REALTIME_URL=emulator.ga_url()) as served:
        await wait_status(served.port, "/healthz", 200)
        await wait_event(served.log, "upstream_probe_failed")
        assert await status(served.port, "/readyz") == 503
        failed = [line for line in log_lines(served.log) if line["event"] == "upstream_probe_failed"]
        assert {line["level"] for line in failed} == {"warning"}
        assert failed[0]["code"] == "503"
        assert "gateway_ready" not in events(served.log)
        emulator.config = dataclasses.replace(emulator.config, refuse_status=None)
        await wait_status(served.port, "/readyz", 200, timeout_s=20)
        await wait_event(served.log, "gateway_ready")
        assert emulator.probe_rejections >= 1
        assert emulator.handshakes == 0  # probes are not counted as calls


def test_top_level_help_lists_subcommands() -> None:
    """`python -m gateway --help` prints the subcommands and exits 0; no command is exit 2."""
    shown = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert shown.returncode == 0
    assert "serve" in shown.stdout
    assert "emulator" in shown.stdout
    bare = subprocess.run(
        [sys.executable, "-m", "gateway"], capture_output=True, text=True, timeout=60, check=False
    )
    assert bare.returncode == 2
    assert "serve" in bare.stderr


@pytest.mark.parametrize(("name", "allowed"), [("BARGE_IN", "server, local, both"), ("LOG_FORMAT", "json")])
def test_serve_help_lists_allowed_values(name: str, allowed: str) -> None:
    """`serve --help` lists the allowed values of enumerated settings."""
    shown = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    line = next(line for line in shown.stdout.splitlines() if line.strip().startswith(name))
    assert f"(one of: {allowed}" in line


def test_integer_setting_says_must_be_an_integer() -> None:
    """An integer setting given `abc` stops start-up saying it must be an integer."""
    result = run_serve(GATEWAY_MAX_CALLS="abc")
    assert result.returncode == 2
    assert "GATEWAY_MAX_CALLS='abc' is invalid: must be an integer" in result.stderr
