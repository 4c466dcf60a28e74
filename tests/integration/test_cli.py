"""The README's promise: `python -m gateway serve` runs with no credentials and a call works against it."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from tests.conftest import scaled


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any realtime credentials, plus `extra`."""
    drop = ("OPENAI_", "AZURE_", "REALTIME_", "TWILIO_", "GATEWAY_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    return {**env, **extra}


@pytest.fixture
async def served() -> AsyncIterator[int]:
    """`python -m gateway serve` as a subprocess on a free port, stopped with SIGTERM afterwards."""
    port = free_port()
    env = clean_env(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(int(scaled(200))):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the gateway did not become ready")
        yield port
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), scaled(15))
        assert proc.stderr is not None
        await proc.stderr.read()
    assert proc.returncode == 0


async def test_serve_with_embedded_emulator(served: int) -> None:
    """With no backend configured, a call gets the emulator's reply through the gateway."""
    async with TwilioCall(f"ws://127.0.0.1:{served}/media") as call:
        await call.send_audio(speech_ulaw(600) + silence_ulaw(800), realtime=False)
        for _ in range(int(scaled(200))):
            if call.received_media:
                break
            await asyncio.sleep(0.05)
        assert len(call.received_media) > 0


def test_bad_setting_fails_start_up_naming_it() -> None:
    """A malformed variable stops start-up with exit code 2 and a message that names it."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env=clean_env(APPEND_MS="33"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "APPEND_MS" in result.stderr


def test_serve_help_lists_variables() -> None:
    """`python -m gateway serve --help` shows the environment variables."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for name in ("GATEWAY_PUBLIC_URL", "AZURE_OPENAI_ENDPOINT", "REALTIME_URL", "TWILIO_AUTH_TOKEN"):
        assert name in result.stdout
