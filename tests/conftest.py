"""Shared fixtures: real servers on loopback (the emulator, the gateway) and the test time scale."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping

import pytest
from aiohttp import web

from gateway.app import STATE_KEY, GatewayState, start_on_loopback
from gateway.config import Settings, load_settings
from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.realtime.auth import TokenProvider

# A slow machine slows the tests instead of failing them: every wait in the tests is multiplied by this.
TIME_SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))


def scaled(seconds: float) -> float:
    """`seconds` stretched by TEST_TIME_SCALE."""
    return seconds * TIME_SCALE


class RunningGateway:
    """A gateway app served on 127.0.0.1 by a real aiohttp runner."""

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self.runner = runner
        self.port = port

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def media_url(self) -> str:
        """ws://127.0.0.1:PORT/media"""
        return f"ws://127.0.0.1:{self.port}/media"

    @property
    def state(self) -> GatewayState:
        """The app's shared state (settings, metrics, calls)."""
        return self.runner.app[STATE_KEY]


GatewayFactory = Callable[[Mapping[str, str]], "AsyncIterator[RunningGateway]"]


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """The realtime emulator on a free loopback port, replying fast (10x real time)."""
    async with EmulatorServer(EmulatorConfig(realtime_factor=10.0)) as server:
        yield server


async def start_gateway(
    env: Mapping[str, str], token_provider: TokenProvider | None = None
) -> RunningGateway:
    """Start a gateway with these settings (on a free port, fresh metrics registry)."""
    settings: Settings = load_settings({"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "0", **env})
    runner, port = await start_on_loopback(settings, token_provider=token_provider)
    return RunningGateway(runner, port)


@pytest.fixture
async def gateway(emulator: EmulatorServer) -> AsyncIterator[RunningGateway]:
    """A gateway bridged to the `emulator` fixture over the GA protocol."""
    running = await start_gateway({"REALTIME_URL": emulator.ga_url()})
    yield running
    await running.runner.cleanup()
