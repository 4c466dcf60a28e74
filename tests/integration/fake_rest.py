"""A local stand-in for the providers' REST APIs (hang-up and transfer), over real sockets.

`FakeRest` is one aiohttp server on 127.0.0.1 that takes any method on any path, records each request
whole (method, path, headers, body) and answers with the status and body the test chose, or never
answers (`hang`), so a test can point TWILIO_API_BASE, TELNYX_API_BASE, PLIVO_API_BASE, VONAGE_API_BASE,
SIGNALWIRE_SPACE_URL or ACS_ENDPOINT at it and assert what the gateway sent. `acs_signature_ok` checks
the Call Automation SDK's HMAC signature the way ACS does (see fake_acs.py for answerCall).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

NO_CONTENT = 204


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the fake received."""

    method: str
    path: str  # decoded, without the query
    raw_path: str  # as sent, with the query
    host: str
    headers: dict[str, str]
    body: bytes

    def form(self) -> dict[str, str]:
        """The body as form fields."""
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    def basic_auth(self) -> tuple[str, str]:
        """The (user, password) of `Authorization: Basic`."""
        scheme, _, encoded = self.headers.get("Authorization", "").partition(" ")
        assert scheme == "Basic", self.headers
        user, _, password = base64.b64decode(encoded).decode().partition(":")
        return user, password

    def bearer(self) -> str:
        """The token of `Authorization: Bearer`."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        assert scheme == "Bearer", self.headers
        return token


@dataclass
class FakeRest:
    """Any provider's REST API: records requests, answers `status` with `body` (JSON; a callable gets the
    request and returns it), or hangs."""

    status: int = 200
    body: Any = field(default_factory=dict)
    hang: bool = False
    requests: list[Recorded] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FakeRest:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._release.set()  # a hanging handler returns, so the runner stops at once
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                request.method, request.path, request.raw_path, request.host, dict(request.headers), body
            )
        )
        if self.hang:
            await self._release.wait()
        if self.status == NO_CONTENT:
            return web.Response(status=NO_CONTENT)
        body = self.body(self.requests[-1]) if callable(self.body) else self.body
        return web.json_response(body, status=self.status)


def refused_url() -> str:
    """An http:// base URL on loopback where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def acs_signature_ok(request: Recorded, access_key: str) -> bool:
    """The Call Automation SDK's HMAC-SHA256 over verb, path and query, date, host and body hash."""
    content_hash = base64.b64encode(hashlib.sha256(request.body).digest()).decode()
    if request.headers.get("x-ms-content-sha256") != content_hash:
        return False
    stamp = f"{request.headers.get('x-ms-date')};{request.host};{content_hash}"
    signed = f"{request.method}\n{request.raw_path}\n{stamp}"
    digest = hmac.new(base64.b64decode(access_key), signed.encode(), hashlib.sha256).digest()
    expected = (
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
        + base64.b64encode(digest).decode()
    )
    return hmac.compare_digest(request.headers.get("Authorization", ""), expected)
