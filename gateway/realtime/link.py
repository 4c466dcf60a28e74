"""One call's realtime session that survives drops and expiry.

The service may refuse a handshake with 429, drop the socket mid-call, or end the session at its maximum
duration (`expires_at`). `UpstreamLink` hides all three from the bridge: it dials with a bounded retry
budget and backoff, and when the session ends under the call it dials again, restores the session
settings, replays the conversation so far as text items, and sends the caller audio it buffered
meanwhile. The caller hears a short pause. Only when the budget is spent does the call end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from websockets.exceptions import ConnectionClosed

from gateway.errors import UpstreamError
from gateway.metrics import GatewayMetrics
from gateway.realtime.events import (
    AppendAudio,
    CreateItem,
    RealtimeCommand,
    RealtimeEvent,
    SessionCreated,
    UpdateSession,
)
from gateway.realtime.session import SessionSettings
from gateway.realtime.transcript import Transcript
from gateway.realtime.upstream import RealtimeConnection, Upstream, UpstreamConnectError

__all__ = ["RETRYABLE_CODES", "SessionReconnected", "UpstreamLink", "UpstreamLostError"]

log = structlog.get_logger(__name__)

# Handshake failures worth retrying: rate limiting, the service's own errors, the network.
RETRYABLE_CODES = frozenset({"429", "500", "502", "503", "504", "timeout", "connect"})
BACKOFF_S = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True, slots=True)
class SessionReconnected:
    """The realtime session was replaced (`reason`: drop or expiry); anything in flight upstream is gone.

    The new session's input buffer starts with `carried_audio_ms` of caller audio buffered during the gap.
    """

    reason: str
    replayed_turns: int
    carried_audio_ms: float = 0.0


class UpstreamLostError(UpstreamError):
    """The realtime session is gone and the retry budget is spent; the call must end."""


class UpstreamLink:
    """Send commands and iterate events of one call's realtime session, across reconnects."""

    def __init__(
        self,
        upstream: Upstream,
        metrics: GatewayMetrics,
        transcript: Transcript,
        *,
        request_id: str | None = None,
        max_reconnects: int = 3,
        max_attempts: int = 3,
        buffer_bytes: int = 96_000,
        renew_margin_s: float = 60.0,
        session: SessionSettings | None = None,
    ) -> None:
        self.upstream = upstream
        self.session = upstream.session if session is None else session  # this call's (its bot profile)
        self.metrics = metrics
        self.transcript = transcript
        self.request_id = request_id
        self.max_reconnects = max_reconnects
        self.max_attempts = max_attempts
        self.buffer_bytes = buffer_bytes
        self.renew_margin_s = renew_margin_s
        self.reconnects = 0  # sessions replaced, for any reason
        self.drops = 0  # of which unplanned
        self.expires_at: float | None = None
        self._conn: RealtimeConnection | None = None
        self._pending = bytearray()  # caller audio that arrived while no session was up
        self._renewing = False
        self._closing = False
        self._margin_s = renew_margin_s

    @property
    def connected(self) -> bool:
        """A session is up (False while reconnecting)."""
        return self._conn is not None

    async def open(self) -> float:
        """Dial the first session and configure it; returns the handshake seconds of the last attempt."""
        conn, elapsed = await self._dial()
        self._conn = conn  # before the update: a dial cancelled meanwhile leaves a session close() reaches
        await conn.send(UpdateSession())
        return elapsed

    async def send(self, command: RealtimeCommand) -> None:
        """Send now; while reconnecting, caller audio is buffered (bounded) and other commands dropped."""
        conn = self._conn
        if conn is not None:
            try:
                await conn.send(command)
                return
            except ConnectionClosed:
                pass  # the events loop will notice the drop and reconnect
        if isinstance(command, AppendAudio):
            self._pending += command.audio
            excess = len(self._pending) - self.buffer_bytes
            if excess > 0:
                del self._pending[:excess]  # keep the most recent audio: it is what the caller says now

    def write_buffer_size(self) -> int:
        """Bytes waiting to go out on the current session's socket (0 while reconnecting)."""
        conn = self._conn
        return conn.write_buffer_size() if conn is not None else 0

    def sent_command(self, event_id: str | None) -> RealtimeCommand | None:
        """The recent command of the current session that carried `event_id` (to label its error)."""
        conn = self._conn
        return conn.codec.sent_command(event_id) if conn is not None else None

    def renewal_due(self, now_s: float) -> bool:
        """The session expires within the renewal margin, so renew it at the next quiet moment."""
        return (
            self.expires_at is not None
            and not self._renewing
            and self._conn is not None
            and self.expires_at - now_s <= self._margin_s
        )

    async def renew(self) -> None:
        """Replace the session now (call when the bot is quiet); `events()` reconnects."""
        if self._conn is not None:
            self._renewing = True
            await self._conn.close()

    async def events(self) -> AsyncIterator[RealtimeEvent | SessionReconnected]:
        """Events of the current session; on a drop or expiry, a `SessionReconnected` and the new session's.

        Raises UpstreamLostError when the session cannot be replaced.
        """
        while True:
            conn = self._conn
            assert conn is not None, "open() first"
            async for event in conn.events():
                if isinstance(event, SessionCreated) and event.expires_at is not None:
                    self.expires_at = float(event.expires_at)
                    # Never plan to renew in the first half of a session's life: with a margin as long as
                    # the session itself, every new session would be renewed at once.
                    lifetime = self.expires_at - time.time()
                    self._margin_s = min(self.renew_margin_s, max(0.0, lifetime / 2))
                yield event
            if self._closing:
                return
            reason = "expiry" if self._renewing else "drop"
            detail = f"realtime session closed (code {conn.close_code})"
            self._conn, self._renewing = None, False
            replayed, carried = await self._reconnect(reason, detail)
            yield SessionReconnected(reason, replayed, carried / self.session.input_format.bytes_per_ms)

    async def close(self) -> None:
        """Close the session for good (the call is over)."""
        self._closing = True
        if self._conn is not None:
            await self._conn.close()

    async def _reconnect(self, reason: str, detail: str) -> tuple[int, int]:
        """Dial a new session and carry the call over; returns (turns replayed, audio bytes carried)."""
        # Planned renewals are free; only drops spend the budget.
        if reason == "drop":
            if self.drops >= self.max_reconnects:
                raise UpstreamLostError(f"{detail}; reconnect budget ({self.max_reconnects}) spent")
            self.drops += 1
        self.reconnects += 1
        self.expires_at = None  # until the new session says when it ends
        self.metrics.upstream_reconnects.labels(reason=reason).inc()
        log.warning("upstream_reconnecting", reason=reason, detail=detail, attempt=self.reconnects)
        started = time.perf_counter()
        try:
            conn, _ = await self._dial()
        except UpstreamConnectError as exc:
            raise UpstreamLostError(f"{detail}; reconnect failed: {exc}") from None
        turns = self.transcript.replay()
        carried = len(self._pending)
        try:
            await conn.send(UpdateSession())
            for role, text in turns:
                await conn.send(CreateItem(role, text))
            if self._pending:
                await conn.send(AppendAudio(bytes(self._pending)))
        except ConnectionClosed:
            raise UpstreamLostError(f"{detail}; the new session closed at once") from None
        self._pending.clear()
        self._conn = conn
        log.info(
            "upstream_reconnected",
            reason=reason,
            replayed_turns=len(turns),
            pause_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return len(turns), carried

    async def _dial(self) -> tuple[RealtimeConnection, float]:
        """Connect, retrying rate limits and transient failures with backoff within `max_attempts`."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                conn, elapsed = await self.upstream.connect(self.request_id, self.session)
            except UpstreamConnectError as exc:
                self.metrics.upstream_errors.labels(code=exc.code).inc()
                if exc.code not in RETRYABLE_CODES or attempt == self.max_attempts:
                    raise
                delay = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
                log.warning("upstream_retry", code=exc.code, cause=str(exc), attempt=attempt, delay_s=delay)
                await asyncio.sleep(delay)
                continue
            self.metrics.upstream_connect.observe(elapsed)
            return conn, elapsed
        raise AssertionError("unreachable: the last attempt raises or returns")
