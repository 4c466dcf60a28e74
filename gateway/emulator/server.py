"""The realtime-API emulator as a real WebSocket server (websockets' asyncio API).

Thin I/O around `EmulatorSession`: the handshake is checked by `negotiate` in `process_request`
(404 / 401 / 400 / fault statuses are plain HTTP answers), then each connection runs one loop that
sends what the session returns, waits for the next client message or the session's next due time,
and closes or drops the socket when told. Its log lines are per connection, at debug (embedded in the
gateway they would be chatter); only errors it sends that are not expected races are warnings. Usage in
tests::

    async with EmulatorServer(EmulatorConfig(realtime_factor=20)) as emulator:
        async with connect(emulator.ga_url()) as ws: ...
        await emulator.wait_for(lambda: emulator.sessions and emulator.sessions[0].truncations)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from gateway.emulator.session import Accepted, EmulatorConfig, EmulatorSession, Output, Rejected, negotiate
from gateway.realtime.upstream import PROBE_HEADER

__all__ = ["MAX_MESSAGE_BYTES", "EmulatorServer", "HandshakeRejection"]

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # the API allows 15 MiB of audio per append, plus JSON and base64
DEFAULT_GA_MODEL = "gpt-realtime"
DEFAULT_PREVIEW_DEPLOYMENT = "gpt-4o-realtime-preview"
DEFAULT_API_VERSION = "2025-04-01-preview"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HandshakeRejection:
    """A refused upgrade: its HTTP status and the path (api-key query value not included)."""

    status: int
    path: str
    reason: str


class EmulatorServer:
    """A realtime-API emulator on `host:port` (port 0 picks a free one).

    Use `async with`, or `start()` / `stop()`. After start, `port` and `url` are set; `sessions`
    lists every accepted connection's session (open or closed) in connection order.
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.host = host
        self.port = port
        self.sessions: list[EmulatorSession] = []
        self.rejections: list[HandshakeRejection] = []
        self.handshakes = 0  # upgrade requests seen, accepted or not (readiness probes not counted)
        self.probes = 0  # readiness probes seen (x-gateway-probe), accepted or not
        self.probe_rejections = 0
        self._accepted: dict[ServerConnection, Accepted] = {}
        self._server: Server | None = None
        self._t0 = 0.0
        self._changed: asyncio.Event | None = None

    @property
    def url(self) -> str:
        """`ws://host:port`, without a path."""
        return f"ws://{self.host}:{self.port}"

    def ga_url(self, model: str = DEFAULT_GA_MODEL, *, azure: bool = True) -> str:
        """The GA endpoint: Azure's `/openai/v1/realtime?model=` or OpenAI's `/v1/realtime?model=`."""
        return f"{self.url}{'/openai' if azure else ''}/v1/realtime?model={model}"

    def preview_url(
        self, deployment: str = DEFAULT_PREVIEW_DEPLOYMENT, api_version: str = DEFAULT_API_VERSION
    ) -> str:
        """The Azure preview (beta protocol) endpoint."""
        return f"{self.url}/openai/realtime?api-version={api_version}&deployment={deployment}"

    async def start(self) -> None:
        """Bind and start accepting connections; `port` holds the bound port afterwards."""
        loop = asyncio.get_running_loop()
        self._t0 = loop.time()
        self._changed = asyncio.Event()
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._process_request,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.debug("emulator.started", url=self.url)

    async def stop(self) -> None:
        """Close every connection (1001) and the listener; return when all handlers have finished."""
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        log.debug("emulator.stopped", sessions=len(self.sessions))

    async def serve_forever(self) -> None:
        """Start if needed, then run until cancelled; stops cleanly on the way out."""
        if self._server is None:
            await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.stop()

    async def __aenter__(self) -> EmulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        """Return once `predicate()` is truthy; it is re-checked after every change to any session.

        Bound it with `asyncio.timeout` in tests.
        """
        while not predicate():
            assert self._changed is not None, "start the server first"
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    @property
    def clock_origin_s(self) -> float:
        """The event loop time (time.monotonic) that session times (`at_ms`) count from."""
        return self._t0

    def _now_ms(self) -> float:
        return (asyncio.get_running_loop().time() - self._t0) * 1000.0

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if PROBE_HEADER in request.headers:
            return self._process_probe(connection, request)
        self.handshakes += 1
        attempt = self.handshakes
        if self.config.handshake_delay_ms:
            await asyncio.sleep(self.config.handshake_delay_ms / 1000)
        verdict = negotiate(request.path, dict(request.headers.raw_items()), self.config, attempt=attempt)
        if isinstance(verdict, Rejected):
            path = request.path.split("?", 1)[0]
            self.rejections.append(HandshakeRejection(verdict.status, path, verdict.reason))
            log.debug("emulator.handshake_rejected", status=verdict.status, path=path, reason=verdict.reason)
            self._notify()
            return connection.respond(verdict.status, verdict.reason + "\n")
        self._accepted[connection] = verdict
        return None

    def _process_probe(self, connection: ServerConnection, request: Request) -> Response | None:
        """A gateway's readiness probe: answered as the next call's handshake would be (refused by the
        same faults), but kept out of `handshakes`, `rejections` and `sessions`, which count calls."""
        self.probes += 1
        attempt = self.handshakes + 1
        verdict = negotiate(request.path, dict(request.headers.raw_items()), self.config, attempt=attempt)
        if isinstance(verdict, Rejected):
            self.probe_rejections += 1
            return connection.respond(verdict.status, verdict.reason + "\n")
        self._accepted[connection] = verdict
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        request = connection.request
        assert request is not None
        verdict = self._accepted.pop(connection)  # what process_request decided for this upgrade
        session = EmulatorSession(
            verdict, self.config, now_ms=self._now_ms(), epoch_s=time.time(), number=len(self.sessions)
        )
        if PROBE_HEADER in request.headers:
            # A probe reads session.created and closes; it is no call, so it is not recorded.
            with contextlib.suppress(ConnectionClosed):
                await self._run(connection, session)
            return
        self.sessions.append(session)
        bound = log.bind(session=session.id, protocol=session.protocol.value, model=session.model)
        bound.debug("emulator.connected", path=session.path, auth=session.auth)
        try:
            await self._run(connection, session)
        except ConnectionClosed as exc:
            bound.debug("emulator.client_closed", code=exc.rcvd.code if exc.rcvd else None)
        finally:
            session.mark_closed()
            self._notify()
            bound.debug("emulator.disconnected", responses=len(session.responses), errors=len(session.errors))

    async def _run(self, connection: ServerConnection, session: EmulatorSession) -> None:
        output = session.poll(self._now_ms())
        while await self._deliver(connection, session, output):
            message = await self._receive(connection, output.next_due_ms)
            if message is None:
                output = session.poll(self._now_ms())
            else:
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                output = session.receive_text(text, self._now_ms())

    async def _receive(self, connection: ServerConnection, due_ms: float | None) -> str | bytes | None:
        """The next client message, or None when the session's next due time comes first."""
        timeout = None if due_ms is None else max(0.0, due_ms - self._now_ms()) / 1000.0
        try:
            async with asyncio.timeout(timeout):
                return await connection.recv()  # cancelling recv() loses no data
        except TimeoutError:
            return None

    async def _deliver(self, connection: ServerConnection, session: EmulatorSession, output: Output) -> bool:
        """Send the output's events; apply its close. Return False when the connection is finished."""
        for event in output.events:
            await connection.send(json.dumps(event))
            if event["type"] == "error":
                _log_error(session, event["error"])
        self._notify()
        if output.close is None:
            return True
        log.debug("emulator.closing", session=session.id, code=output.close.code, reason=output.close.reason)
        if output.close.code is None:
            connection.transport.abort()
        else:
            await connection.close(output.close.code, output.close.reason)
        return False


def _log_error(session: EmulatorSession, error: dict[str, Any]) -> None:
    # Expected races of the protocol are debug-level; anything else (a client mistake the real service
    # would refuse too, an expired session, an injected fault) is a problem worth a warning.
    benign = error.get("code") in ("response_cancel_not_active", "invalid_value")
    emit = log.debug if benign else log.warning
    emit("emulator.error_sent", session=session.id, code=error.get("code"), message=error.get("message"))
