"""The realtime backend's health over time: background probes, one log line per change, the verdict.

`watch_upstream` runs for the life of the app. It probes the endpoint when no handshake (a call's or its
own) has told anything for UPSTREAM_PROBE_INTERVAL_S, with backoff while start-up keeps failing, logs each
change of the verdict once, and keeps `gateway_upstream_healthy` up to date. `first_verdict` resolves
when start-up is decided: HEALTHY (serve calls) or FATAL (the configuration is wrong: stop).
"""

from __future__ import annotations

import asyncio
import time

import structlog

from gateway.errors import AuthError
from gateway.metrics import GatewayMetrics
from gateway.realtime.health import Health, HealthChange, UpstreamHealth
from gateway.realtime.upstream import Upstream, UpstreamConnectError

__all__ = ["TICK_S", "report_change", "watch_upstream"]

log = structlog.get_logger(__name__)

TICK_S = 0.25  # how often the verdict is re-read; probes follow their own interval


async def watch_upstream(
    upstream: Upstream,
    health: UpstreamHealth,
    metrics: GatewayMetrics,
    first_verdict: asyncio.Future[Health],
) -> None:
    """Probe when due and report changes until cancelled; resolves `first_verdict` once."""
    while True:
        if health.probe_due(time.monotonic()):
            await _probe(upstream, metrics)
        report_change(upstream, health, metrics, first_verdict, time.monotonic())
        await asyncio.sleep(TICK_S)


def report_change(
    upstream: Upstream,
    health: UpstreamHealth,
    metrics: GatewayMetrics,
    first_verdict: asyncio.Future[Health] | None,
    now_s: float,
) -> None:
    """Report the verdict's change since the last report, if any: the gauge, one log line, and start-up's
    verdict once. The watcher calls it every tick, and /readyz before it answers, so that the gauge and
    the logs never lag behind an answer (the verdict also changes by time alone, between ticks)."""
    change = health.change(now_s)
    if change is None:
        return
    _report(change, upstream, metrics, health)
    if (
        change.after in (Health.HEALTHY, Health.FATAL)
        and first_verdict is not None
        and not first_verdict.done()
    ):
        first_verdict.set_result(change.after)


async def _probe(upstream: Upstream, metrics: GatewayMetrics) -> None:
    try:
        await upstream.probe()
    except UpstreamConnectError as exc:
        metrics.upstream_probes.labels(result=exc.code).inc()
        log.warning("upstream_probe_failed", code=exc.code, cause=str(exc))
    except AuthError as exc:
        metrics.upstream_probes.labels(result="auth").inc()
        log.warning("upstream_probe_failed", code="auth", cause=str(exc))
    else:
        metrics.upstream_probes.labels(result="ok").inc()


def _report(
    change: HealthChange, upstream: Upstream, metrics: GatewayMetrics, health: UpstreamHealth
) -> None:
    after = change.after
    metrics.upstream_healthy.set(1 if after in (Health.HEALTHY, Health.FAILING) else 0)
    backend = upstream.describe()["url"]
    if after is Health.HEALTHY:
        log.info("upstream_healthy", backend=backend, was=change.before.value)
    elif after is Health.FAILING:
        log.warning(
            "upstream_failing",
            backend=backend,
            cause=change.cause,
            unhealthy_after_s=health.unhealthy_after_s,
        )
    elif after is Health.UNHEALTHY:
        log.error("upstream_unhealthy", backend=backend, cause=change.cause, readiness=503)
    elif after is Health.FATAL:
        log.error(
            "upstream_refused",
            backend=backend,
            cause=health.fatal_cause,
            hint="check the key (or the identity's role) and the deployment or model name",
        )
