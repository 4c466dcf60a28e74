"""The I/O side of ACS Call Automation: Event Grid's webhook, the callbacks, the media JWT, answerCall.

Everything decided is in `gateway.telephony.acs` (sans-I/O); this module only awaits: it reads request
bodies, fetches ACS's OpenID configuration and signing keys, calls the Call Automation SDK, counts and
logs. One `AcsService` per application; its handlers take what the app knows and this module does not
(the public base URL, whether the gateway takes calls now):

    acs = AcsService(options, state.metrics)
    app.cleanup_ctx.append(acs.context)
    POST /acs/events    -> acs.handle_events(request, public_base, busy=None | "draining" | ...)
    POST /acs/callbacks -> acs.handle_callbacks(request)
    GET  /acs/media     -> refusal = await acs.check_media(http_request); None: upgrade with
                           acs.dialect_for(http_request)

Answering is an outbound REST call (`answerCall`), not a document in the webhook's reply: the reply only
tells Event Grid the event was taken (200), or to deliver it again later (503).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any, Final

import aiohttp
import jwt
import structlog
from aiohttp import web
from azure.communication.callautomation import MediaStreamingOptions
from azure.communication.callautomation.aio import CallAutomationClient
from azure.core.credentials import AzureKeyCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError
from prometheus_client import Counter

from gateway.metrics import GatewayMetrics
from gateway.telephony.acs import (
    CALLBACKS_PATH,
    AcsDialect,
    AcsOptions,
    AnswerPlan,
    CallbackEvent,
    IncomingCall,
    JwtRejected,
    OtherGridEvent,
    SubscriptionValidation,
    answer_plan,
    callback_label,
    check_jwt,
    dialect_for,
    keys_stale,
    parse_callbacks,
    parse_connection_string,
    parse_event_grid,
    parse_openid_configuration,
    parse_signing_keys,
    validation_response,
)
from gateway.telephony.provider import HttpRequest, Refusal

__all__ = ["AcsService", "build_client"]

log = structlog.get_logger(__name__)

KEY_FETCH_TIMEOUT_S: Final = 5.0
ANSWER_RETRIES: Final = 2  # a ringing caller cannot wait for azure-core's default ten retries
AUTHORIZATION_HEADER: Final = "authorization"


def build_client(
    options: AcsOptions, credential: AsyncTokenCredential | None = None, **client_kwargs: Any
) -> tuple[CallAutomationClient | None, AsyncTokenCredential | None]:
    """The SDK client for `options` (None when neither a connection string nor an endpoint is set), and
    the Entra credential this call created (the caller closes both). ValueError names a bad setting."""
    client_kwargs.setdefault("retry_total", ANSWER_RETRIES)
    if options.connection_string:
        try:
            endpoint, key = parse_connection_string(options.connection_string)
        except ValueError as exc:
            raise ValueError(f"ACS_CONNECTION_STRING is invalid: {exc}") from None
        # A key credential signs with HMAC over any scheme, so ACS_ENDPOINT may point at a local fake.
        client = CallAutomationClient(options.endpoint or endpoint, AzureKeyCredential(key), **client_kwargs)
        return client, None
    if options.endpoint:
        created = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential  # only Entra deployments pay for it

            credential = created = DefaultAzureCredential()
        return CallAutomationClient(options.endpoint, credential, **client_kwargs), created
    return None, None


class AcsService:
    """One application's ACS side: the Call Automation client, ACS's signing keys, and the counters."""

    def __init__(
        self,
        options: AcsOptions,
        metrics: GatewayMetrics,
        *,
        credential: AsyncTokenCredential | None = None,
        **client_kwargs: Any,
    ) -> None:
        """`credential` replaces DefaultAzureCredential when only an endpoint is set; `client_kwargs` go
        to the SDK client (azure-core options such as `transport`). ValueError names a bad setting."""
        self.options = options
        self.metrics = metrics
        self.client, self._own_credential = build_client(options, credential, **client_kwargs)
        self.events = Counter(
            "gateway_acs_events",
            "ACS events received (Event Grid and Call Automation callbacks), by type",
            ["type"],
            registry=metrics.registry,
        )
        self._http: aiohttp.ClientSession | None = None
        self._issuer = ""
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched_at: float | None = None
        self._keys_lock = asyncio.Lock()

    async def context(self, _app: object) -> AsyncIterator[None]:
        """aiohttp cleanup context: closes the SDK client, the credential and the key fetcher at exit."""
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        """Close what this service opened."""
        if self.client is not None:
            await self.client.close()
        if self._own_credential is not None:
            await self._own_credential.close()
        if self._http is not None:
            await self._http.close()

    @staticmethod
    def dialect_for(request: HttpRequest) -> AcsDialect:
        """The dialect for an accepted media upgrade (its headers name the call)."""
        return dialect_for(request)

    # -- Event Grid: /acs/events -----------------------------------------------------------------------

    async def handle_events(
        self, request: web.Request, public_base: str, busy: str | None = None
    ) -> web.Response:
        """Event Grid's webhook: answer its validation handshake, answer each IncomingCall through Call
        Automation. `busy` (draining, not ready, at capacity) leaves calls ringing: 503, and Event Grid
        delivers the event again later (maybe to another replica)."""
        events = parse_event_grid(await request.read())
        if isinstance(events, Refusal):
            return self._reject("acs/events", events)
        reply: dict[str, str] = {}
        for event in events:
            if isinstance(event, SubscriptionValidation):
                self.events.labels(type="SubscriptionValidation").inc()
                log.info("acs_subscription_validated")
                reply = validation_response(event.code)
            elif isinstance(event, OtherGridEvent):
                self.events.labels(type="other").inc()
                log.info("acs_event_ignored", event_type=event.event_type[:80])
            else:
                self.events.labels(type="IncomingCall").inc()
                refusal = busy or (None if self.client is not None else "ACS is not configured")
                if refusal is not None:
                    return self._reject("acs/events", Refusal(503, refusal))
                problem = await self._answer(event, public_base)
                if problem is not None:
                    return self._reject("acs/events", problem)
        return web.json_response(reply)

    async def _answer(self, call: IncomingCall, public_base: str) -> Refusal | None:
        plan = answer_plan(call, public_base)
        try:
            connection_id = await self.answer(plan)
        except HttpResponseError as exc:
            # ACS refused (an expired or foreign context, a call already answered): a retry cannot help.
            log.warning(
                "acs_answer_refused",
                status=exc.status_code,
                correlation_id=call.correlation_id,
                error=str(exc.reason)[:200],
            )
            return None
        except AzureError as exc:
            log.warning("acs_answer_failed", correlation_id=call.correlation_id, error=type(exc).__name__)
            return Refusal(503, "answerCall failed")
        log.info(
            "call_answered",
            provider="acs",
            call_id=connection_id,
            correlation_id=call.correlation_id,
            signed=self.options.audience is not None,
        )
        return None

    async def answer(self, plan: AnswerPlan) -> str:
        """Call Automation's answerCall with `plan`; returns the call connection id."""
        assert self.client is not None
        result = await self.client.answer_call(
            plan.incoming_call_context,
            plan.callback_url,
            media_streaming=MediaStreamingOptions(**asdict(plan.media_streaming)),
            operation_context=plan.operation_context,
        )
        return str(result.call_connection_id or "")

    # -- Call Automation: /acs/callbacks ---------------------------------------------------------------

    async def handle_callbacks(self, request: web.Request) -> web.Response:
        """Mid-call events: with ACS_AUDIENCE, only with ACS's JWT; each is logged and counted."""
        rejected = await self.check_jwt(request.headers.get(AUTHORIZATION_HEADER))
        if rejected is not None:
            return self._reject(CALLBACKS_PATH.lstrip("/"), rejected)
        events = parse_callbacks(await request.read())
        if isinstance(events, Refusal):
            return self._reject(CALLBACKS_PATH.lstrip("/"), events)
        for event in events:
            self._note_callback(event)
        return web.Response(text="ok\n")

    def _note_callback(self, event: CallbackEvent) -> None:
        self.events.labels(type=callback_label(event.type)).inc()
        failed = event.type.endswith("Failed")
        (log.warning if failed else log.info)(
            "acs_callback",
            event_type=event.type[:80],
            call_id=event.call_connection_id,
            correlation_id=event.correlation_id,
            **({"detail": event.detail} if event.detail else {}),
        )

    # -- the media upgrade and the JWTs ----------------------------------------------------------------

    async def check_media(self, request: HttpRequest) -> Refusal | None:
        """The media upgrade's JWT check (None: accept). Off without ACS_AUDIENCE."""
        return await self.check_jwt(request.header(AUTHORIZATION_HEADER))

    async def check_jwt(self, authorization: str | None) -> Refusal | None:
        """None if ACS_AUDIENCE is unset or the bearer JWT is ACS's for it; else a 403 (503 when ACS's
        keys cannot be fetched: nothing can be verified then)."""
        audience = self.options.audience
        if audience is None:
            return None
        reason = ""
        for attempt in range(2):
            if not await self._refresh_keys(unknown_key=attempt > 0):
                return Refusal(503, "ACS signing keys unavailable")
            verdict = check_jwt(
                authorization, self._keys, issuer=self._issuer, audience=audience, now_s=time.time()
            )
            if not isinstance(verdict, JwtRejected):
                return None
            reason = verdict.reason
            if not verdict.unknown_key:
                break
        return Refusal(403, reason)

    async def _refresh_keys(self, *, unknown_key: bool) -> bool:
        """Fetch the issuer and keys when `keys_stale` says so; False if there are none to use."""
        async with self._keys_lock:
            if keys_stale(self._keys_fetched_at, time.monotonic(), unknown_key=unknown_key):
                try:
                    await self._fetch_keys()
                except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                    log.warning("acs_keys_fetch_failed", url=self.options.openid_url, error=str(exc)[:200])
        return bool(self._keys)

    async def _fetch_keys(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=KEY_FETCH_TIMEOUT_S))
        async with self._http.get(self.options.openid_url, raise_for_status=True) as response:
            config = parse_openid_configuration(await response.read())
        async with self._http.get(config.jwks_uri, raise_for_status=True) as response:
            keys = parse_signing_keys(await response.read())
        self._issuer, self._keys, self._keys_fetched_at = config.issuer, keys, time.monotonic()
        log.info("acs_keys_fetched", issuer=config.issuer, keys=len(keys))

    def _reject(self, route: str, refusal: Refusal) -> web.Response:
        self.metrics.rejected_requests.labels(route=route, reason=refusal.reason).inc()
        log.warning("request_rejected", route=route, reason=refusal.reason, status=refusal.status)
        return web.Response(status=refusal.status, text=f"{refusal.reason}\n")
