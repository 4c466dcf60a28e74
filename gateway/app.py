"""The aiohttp application: routes, start-up and shutdown.

Routes: for every provider P (gateway/telephony/providers.py) `POST /P/answer` (its call-control
webhook) and `GET /P/media` (its media WebSocket); `/twiml` and `/media` as Twilio's aliases;
`GET /healthz`, `GET /readyz`, `GET /metrics`. Shared objects live on the app under `web.AppKey`s; the
upstream (a configured realtime endpoint, or the embedded emulator) is set up in `cleanup_ctx`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import structlog
from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from gateway.backend import (
    acs_options_from,
    bridge_settings_from,
    open_upstream,
    sip_settings_from,
    tool_box_from,
)
from gateway.background import running
from gateway.call.bridge import BridgeSettings, CallBridge, CallPlan, CallServices, Leg
from gateway.call.channel import LegChannel, WebSocketChannel
from gateway.config import Settings
from gateway.metrics import GatewayMetrics
from gateway.profiles import ProfileStore
from gateway.realtime.auth import TokenProvider
from gateway.realtime.health import Health, UpstreamHealth
from gateway.realtime.monitor import report_change, watch_upstream
from gateway.realtime.upstream import Upstream
from gateway.telephony import acs, exotel
from gateway.telephony.acs_client import AcsService
from gateway.telephony.control import plivo as plivo_control
from gateway.telephony.control.factory import build_controls
from gateway.telephony.events import CallStarted
from gateway.telephony.provider import HttpRequest, Provider, Refusal
from gateway.telephony.providers import PROVIDERS
from gateway.telephony.streamtoken import issue_stream_token

if TYPE_CHECKING:
    from gateway.sip.channel import RtpChannel
    from gateway.sip.server import SipServer

__all__ = ["STATE_KEY", "GatewayState", "create_app", "drain", "start_on_loopback"]

log = structlog.get_logger(__name__)

MEDIA_PATH = "/media"
TWIML_PATH = "/twiml"
MAX_MESSAGE_BYTES = 64 * 1024  # a 20 ms frame is ~300 bytes of JSON; anything near this is hostile


Guard = Callable[[HttpRequest], Awaitable[Refusal | None]]  # a check that may need I/O; None: pass


@dataclass(slots=True)
class GatewayState:
    """What the handlers share: settings, metrics, the upstream, the calls in progress."""

    settings: Settings
    metrics: GatewayMetrics
    token_provider: TokenProvider | None = None
    upstream: Upstream | None = None
    health: UpstreamHealth | None = None
    bridge_settings: BridgeSettings | None = None
    services: CallServices = field(default_factory=CallServices)  # tools, HTTP client, call control
    profiles: ProfileStore | None = None  # BOTS_FILE's bots (None: every call gets the settings' bot)
    acs: AcsService | None = None  # the ACS side (Call Automation client, signing keys) when served
    # Checks beyond the provider's secret (ACS's JWT keys, Exotel's address allow-list), by provider.
    media_guards: dict[str, Guard] = field(default_factory=dict)
    answer_guards: dict[str, Guard] = field(default_factory=dict)
    # Start-up's verdict on the realtime backend: HEALTHY (serve) or FATAL (misconfigured: stop).
    first_verdict: asyncio.Future[Health] | None = None
    calls: set[asyncio.Task[None]] = field(default_factory=set)
    draining: bool = False
    sip: SipServer | None = None  # the native SIP leg, when SIP_LISTEN is set
    sip_bound: list[tuple[str, str, int]] = field(default_factory=list)  # its listeners, real ports


STATE_KEY = web.AppKey("gateway_state", GatewayState)


def _peer_guard(allow_from: str) -> Guard:
    """Refuse requests from addresses outside `allow_from` (CIDRs)."""

    async def guard(request: HttpRequest) -> Refusal | None:
        problem = exotel.check_peer(request.peer, allow_from)
        return None if problem is None else Refusal(403, problem)

    return guard


def create_app(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    token_provider: TokenProvider | None = None,
) -> web.Application:
    """Build the application; the upstream is opened when the app starts and closed when it stops.

    `registry` isolates metrics (tests, workers); `token_provider` replaces azure-identity for Entra ID.
    """
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
    state = GatewayState(settings=settings, metrics=GatewayMetrics(registry), token_provider=token_provider)
    state.metrics.max_calls.set(settings.max_calls)
    tools = tool_box_from(settings)
    state.services = CallServices(tools=tools)
    if settings.bots_file:  # a bad file stops start-up here (ConfigError, naming file, bot and key)
        state.profiles = ProfileStore.load(settings.bots_file, settings, tools.check_profile)
    app[STATE_KEY] = state
    for name in settings.providers:
        provider = PROVIDERS[name]
        _add_provider_routes(app, provider, f"/{provider.name}/answer", f"/{provider.name}/media")
    if "twilio" in settings.providers:
        # Twilio's original routes stay as aliases: numbers already point at them.
        _add_provider_routes(app, PROVIDERS["twilio"], TWIML_PATH, MEDIA_PATH)
    if "plivo" in settings.providers and settings.plivo_auth_token:
        app.add_routes(plivo_control.transfer_routes(settings.plivo_auth_token))  # a transfer's <Dial>
    if "exotel" in settings.providers and settings.exotel_allow_from:
        state.media_guards["exotel"] = state.answer_guards["exotel"] = _peer_guard(settings.exotel_allow_from)
    if "acs" in settings.providers:
        state.acs = AcsService(acs_options_from(settings), state.metrics)
        _add_acs_routes(app, state.acs)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_services_ctx)
    if state.profiles is not None:
        app.cleanup_ctx.append(_profiles_ctx)
    if settings.sip_listen:
        app.cleanup_ctx.append(_sip_ctx)
    app.cleanup_ctx.append(state.metrics.sample_worker)
    app.on_shutdown.append(_close_calls)
    return app


async def start_on_loopback(
    settings: Settings, *, token_provider: TokenProvider | None = None, wait_ready: bool = True
) -> tuple[web.AppRunner, int]:
    """Serve a fresh app (own metrics registry) on 127.0.0.1 at a free port, for tests and embedded load
    runs; returns the runner (call `cleanup()` when done) and the port.

    With `wait_ready` it returns once start-up's first verdict on the realtime backend is in (or after
    the handshake timeout, whichever is first), as `serve` does before it logs `gateway_ready`.
    """
    app = create_app(settings, registry=CollectorRegistry(), token_provider=token_provider)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port: int = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    verdict = app[STATE_KEY].first_verdict
    if wait_ready and verdict is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(verdict), settings.upstream_connect_timeout_s + 1)
    return runner, port


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE_KEY]
    settings = state.settings
    _warn_about_settings(settings)
    state.metrics.emulator_in_use.set(1 if settings.uses_emulator else 0)
    health = UpstreamHealth(settings.upstream_unhealthy_after_s, settings.upstream_probe_interval_s)
    async with open_upstream(settings, token_provider=state.token_provider) as upstream:
        upstream.health = health
        state.upstream, state.health = upstream, health
        state.bridge_settings = bridge_settings_from(settings, upstream.session)
        state.first_verdict = asyncio.get_running_loop().create_future()
        watching = watch_upstream(upstream, health, state.metrics, state.first_verdict)
        async with running(watching):
            try:
                yield
            finally:
                state.upstream = None


def _busy(state: GatewayState) -> str | None:
    """Why a new call cannot be taken now (None: it can)."""
    if state.draining:
        return "draining"
    if state.upstream is None:
        return "not ready"
    if len(state.calls) >= state.settings.max_calls:
        return "at capacity"
    return None


async def _services_ctx(app: web.Application) -> AsyncIterator[None]:
    """What calls share beyond the settings: the tools, and one HTTP client for the tools' webhook and
    the providers' REST APIs (hang-up, transfer)."""
    state = app[STATE_KEY]
    tools = state.services.tools
    plan_for = _plan_for(state) if state.profiles is not None else None
    async with aiohttp.ClientSession() as http:
        acs_client = state.acs.client if state.acs is not None else None
        controls = build_controls(state.settings, http, acs_client=acs_client)  # ConfigError: unusable key
        state.services = CallServices(tools=tools, http=http, controls=controls, plan_for=plan_for)
        try:
            yield
        finally:
            state.services = CallServices(tools=tools)


def _plan_for(state: GatewayState) -> Callable[[CallStarted], CallPlan]:
    """Each call's plan from its bot profile (BOTS_FILE): the store's current book picks it, and the call
    keeps it to its end, whatever a reload does meanwhile."""
    tools = state.services.tools

    def plan_for(call: CallStarted) -> CallPlan:
        assert state.profiles is not None
        assert state.upstream is not None
        assert state.bridge_settings is not None
        profile = state.profiles.select(call.custom_parameters)
        structlog.contextvars.bind_contextvars(bot=profile.name)
        return CallPlan.offering(
            tools,
            profile.session_settings(state.upstream.session),
            profile.call_config(state.bridge_settings.core),
            profile.tools,
            profile.transfer_to,
            profile.name,
        )

    return plan_for


async def _profiles_ctx(app: web.Application) -> AsyncIterator[None]:
    """SIGHUP re-reads BOTS_FILE (new calls get the new bots; a bad file keeps the old ones)."""
    state = app[STATE_KEY]
    assert state.profiles is not None
    loop = asyncio.get_running_loop()
    state.profiles.install_sighup(loop)
    try:
        yield
    finally:
        ProfileStore.remove_sighup(loop)


async def _sip_ctx(app: web.Application) -> AsyncIterator[None]:
    """The native SIP leg: listeners up with the app, down (each call with its BYE) before the upstream."""
    state = app[STATE_KEY]
    settings = state.settings

    async def start_call(channel: RtpChannel) -> None:
        await _run_call(state, channel, Leg("sip", channel.dialect, None, token_required=False))

    if not settings.sip_allow_from and not settings.sip_username:
        log.warning(
            "sip_unauthenticated",
            hint="every INVITE is answered: set SIP_ALLOW_FROM (your trunk's addresses) and/or "
            "SIP_USERNAME/SIP_PASSWORD (digest)",
        )
    from gateway.sip.server import SipServer  # only a gateway that speaks SIP loads the SIP stack

    server = SipServer(sip_settings_from(settings), start_call, lambda: _busy(state), state.metrics)
    state.sip_bound = await server.start()
    state.sip = server
    from gateway.sip.control import SipControl

    state.services = dataclasses.replace(
        state.services, controls={**state.services.controls, "sip": SipControl(server)}
    )
    try:
        yield
    finally:
        await server.stop()
        state.sip = None


def _media_guarded(settings: Settings, name: str) -> bool:
    """Whether the provider's media route refuses streams its provider did not open."""
    if name == "acs":
        return settings.acs_audience is not None  # ACS's JWT on the upgrade
    if name == "exotel" and settings.exotel_allow_from:
        return True
    provider = PROVIDERS[name]
    if provider.check_media is None:  # the stream token is the route's only check
        return settings.stream_token_key(provider) is not None
    return settings.provider_secret(provider) is not None


def _warn_about_settings(settings: Settings) -> None:
    """Start-up warnings for settings that are legal but risky."""
    if settings.uses_emulator:
        log.warning(
            "embedded_emulator_in_use",
            hint="calls are answered by a synthetic test voice, not a realtime service; "
            "configure AZURE_OPENAI_ENDPOINT/AZURE_OPENAI_DEPLOYMENT, OPENAI_API_KEY or REALTIME_URL",
            realtime_backend=settings.realtime_backend,
        )
    ignored = settings.ignored_settings()
    if ignored:
        log.warning("settings_ignored", settings=ignored, realtime_backend=settings.realtime_backend)
    open_routes = [name for name in settings.providers if not _media_guarded(settings, name)]
    if open_routes:
        # Anyone who finds these routes can open streams (and realtime sessions) on our account.
        log.warning(
            "media_routes_unauthenticated",
            providers=open_routes,
            hint="set each provider's secret (TWILIO_AUTH_TOKEN, ...), or serve only the providers you "
            "use with GATEWAY_PROVIDERS",
        )


async def drain(app: web.Application, timeout_s: float) -> int:
    """Stop taking calls (readiness turns 503 at once) and wait up to `timeout_s` for the active ones to
    end by themselves; returns how many were still running (the shutdown then closes them)."""
    state = app[STATE_KEY]
    state.draining = True
    log.info("drain_started", active_calls=len(state.calls), timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            while state.calls:
                await asyncio.wait(set(state.calls))
    except TimeoutError:
        pass
    log.info("drain_finished", still_active=len(state.calls))
    return len(state.calls)


async def _close_calls(app: web.Application) -> None:
    """Shutdown: cancel what is left; each call closes both its sockets."""
    state = app[STATE_KEY]
    state.draining = True
    for task in list(state.calls):
        task.cancel()
    if state.calls:
        await asyncio.wait(state.calls, timeout=5)


def _add_provider_routes(app: web.Application, provider: Provider, answer_path: str, media_path: str) -> None:
    async def answer(request: web.Request) -> web.Response:
        return await handle_answer(request, provider, media_path)

    async def media(request: web.Request) -> web.StreamResponse:
        return await handle_media(request, provider)

    if provider.answer is not None:
        for method in provider.answer_methods:
            app.router.add_route(method, answer_path, answer)
    app.router.add_get(media_path, media)


def _add_acs_routes(app: web.Application, service: AcsService) -> None:
    """ACS answers through a REST call on Event Grid's IncomingCall, not with a document: its own routes."""
    state = app[STATE_KEY]
    state.media_guards["acs"] = service.check_media

    async def events(request: web.Request) -> web.Response:
        busy = "draining" if state.draining else "not ready" if state.upstream is None else None
        if busy is None and len(state.calls) >= state.settings.max_calls:
            busy = "at capacity"
        return await service.handle_events(request, _public_base(request, state.settings), busy)

    app.cleanup_ctx.append(service.context)
    app.router.add_post(acs.EVENTS_PATH, events)
    app.router.add_post(acs.CALLBACKS_PATH, service.handle_callbacks)


def _public_base(request: web.Request, settings: Settings) -> str:
    """The https base URL the provider used to reach us: the configured one, else the request's own host."""
    if settings.public_url:
        return settings.public_url
    proto = request.headers.get("X-Forwarded-Proto", request.scheme)
    host = request.headers.get("X-Forwarded-Host", request.host)
    return f"{'https' if proto in ('https', 'wss') else 'http'}://{host}"


def _stream_url(request: web.Request, settings: Settings, media_path: str) -> str:
    """The stream URL as the answer names it and the provider signs it: always wss:// (providers accept
    nothing else), even when the gateway sits behind plain http."""
    return "wss://" + _public_base(request, settings).split("://", 1)[1] + media_path


async def _http_request(request: web.Request, url: str) -> HttpRequest:
    """The request as a provider's checks see it (sans-I/O)."""
    body = await request.read()
    form: dict[str, str] = {}
    if request.content_type == "application/x-www-form-urlencoded":
        form = {k: str(v) for k, v in (await request.post()).items()}
    headers = {k.lower(): v for k, v in request.headers.items()}
    return HttpRequest(request.method, url, headers, body, form, request.remote, time.time())


def _reject(state: GatewayState, route: str, reason: str, status: int = 403, **context: str) -> web.Response:
    state.metrics.rejected_requests.labels(route=route, reason=reason).inc()
    log.warning("request_rejected", route=route, reason=reason, status=status, **context)
    return web.Response(status=status, text=f"{reason}\n")


async def handle_answer(request: web.Request, provider: Provider, media_path: str) -> web.Response:
    """Answer the provider's call-control webhook with the document that starts a stream to our media
    route, after checking the provider's signature when its secret is set."""
    state = request.app[STATE_KEY]
    route = request.path.lstrip("/")  # the metric's route label: "twilio/answer", or "twiml" (the alias)
    assert provider.answer is not None
    incoming = await _http_request(request, _public_base(request, state.settings) + request.raw_path)
    secret = state.settings.provider_secret(provider)
    if secret is not None and provider.check_answer is not None:
        problem = provider.check_answer(incoming, secret)
        if problem is not None:
            # The URL shows a GATEWAY_PUBLIC_URL mismatch; the signature itself is never logged.
            return _reject(state, route, problem, checked_url=incoming.url)
    guard = state.answer_guards.get(provider.name)
    if guard is not None and (refusal := await guard(incoming)) is not None:
        return _reject(state, route, refusal.reason, status=refusal.status)
    if state.draining:
        return _reject(state, route, "draining", status=503)

    token_key = state.settings.stream_token_key(provider)

    def issue(call_id: str) -> str:
        assert token_key is not None
        return issue_stream_token(token_key, call_id, time.time())

    answered = provider.answer(
        incoming, _stream_url(request, state.settings, media_path), issue if token_key else None
    )
    if isinstance(answered, Refusal):
        return _reject(state, route, answered.reason, status=answered.status)
    log.info("call_answered", provider=provider.name, call_id=answered.call_id, signed=secret is not None)
    return web.Response(text=answered.body, content_type=answered.content_type)


async def handle_media(request: web.Request, provider: Provider) -> web.StreamResponse:
    """Accept a provider's media WebSocket (its check first) and run the call until it ends."""
    state = request.app[STATE_KEY]
    route = request.path.lstrip("/")
    secret = state.settings.provider_secret(provider)
    query = f"?{request.query_string}" if request.query_string else ""
    incoming = await _http_request(request, _stream_url(request, state.settings, request.path) + query)
    if secret is not None and provider.check_media is not None:
        problem = provider.check_media(incoming, secret)
        if problem is not None:
            return _reject(state, route, problem, checked_url=incoming.url.split("?", 1)[0])
    guard = state.media_guards.get(provider.name)
    if guard is not None and (refusal := await guard(incoming)) is not None:
        return _reject(state, route, refusal.reason, status=refusal.status)
    if state.draining or state.upstream is None:
        return _reject(state, route, "draining" if state.draining else "not ready", status=503)
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, timeout=2.0, compress=False)
    await ws.prepare(request)
    if len(state.calls) >= state.settings.max_calls:
        # Refused after the upgrade so the provider sees a close reason, not a bare HTTP error.
        state.metrics.rejected_requests.labels(route=route, reason="capacity").inc()
        log.warning("call_refused", reason="capacity", max_calls=state.settings.max_calls)
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"gateway at capacity")
        return ws
    assert state.bridge_settings is not None  # set with the upstream
    dialect = provider.dialect_for(incoming) if provider.dialect_for is not None else provider.dialect()
    token_key = state.settings.stream_token_key(provider)
    leg = Leg(provider.name, dialect, token_key, provider.stream_token_required)
    channel = WebSocketChannel(ws, dialect, request.transport, state.bridge_settings.send_timeout_s)
    await _run_call(state, channel, leg)
    return ws


async def _run_call(state: GatewayState, channel: LegChannel, leg: Leg) -> None:
    """Run one call on any leg to its end, counted among the calls that drain and shutdown wait for."""
    assert state.bridge_settings is not None
    assert state.upstream is not None
    bridge = CallBridge(channel, leg, state.bridge_settings, state.metrics, state.upstream, state.services)
    task = asyncio.current_task()
    assert task is not None
    state.calls.add(task)
    try:
        await bridge.run()
    finally:
        state.calls.discard(task)


async def handle_healthz(_request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.Response(text="ok\n")


async def handle_readyz(request: web.Request) -> web.Response:
    """Readiness: 200 while calls can be served; 503 while draining, before the realtime backend has
    answered once, and once every handshake has failed for UPSTREAM_UNHEALTHY_AFTER_S."""
    state = request.app[STATE_KEY]
    if state.draining:
        return web.Response(status=503, text="draining\n")
    if state.upstream is None or state.health is None:
        return web.Response(status=503, text="starting\n")
    now = time.monotonic()
    report_change(state.upstream, state.health, state.metrics, state.first_verdict, now)
    health = state.health.health(now)
    ready = state.health.ready(now)
    shared = state.metrics.any_worker_healthy()
    if shared is not None and health is not Health.FATAL:
        # Several workers share a port and the kubelet's probe lands on any of them: answer the pod's
        # verdict (any worker reaching the backend), so readiness does not flap while they converge.
        ready = ready or shared
    if not ready:
        return web.Response(status=503, text=f"realtime backend {health.value}\n")
    return web.Response(text="ready\n")


async def handle_metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of this application's registry."""
    state = request.app[STATE_KEY]
    body = generate_latest(state.metrics.exposition_registry())
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
