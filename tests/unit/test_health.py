"""The realtime backend's health verdict, on a simulated clock."""

from __future__ import annotations

from gateway.realtime.health import STARTUP_BACKOFF_S, Health, UpstreamHealth


def make() -> UpstreamHealth:
    """A verdict that turns unhealthy after 30 s of failures and probes every 10 s."""
    return UpstreamHealth(unhealthy_after_s=30.0, interval_s=10.0)


def test_not_ready_until_a_handshake_succeeds() -> None:
    """Start-up is not ready, and a success makes it ready at once."""
    health = make()
    assert health.health(0.0) is Health.STARTING
    assert not health.ready(0.0)
    health.on_success(1.0)
    assert health.health(1.0) is Health.HEALTHY
    assert health.ready(1.0)


def test_auth_refusal_before_any_success_is_fatal() -> None:
    """A 401, 403 or 404 at start-up means the configuration is wrong: fatal, and no more probes."""
    for code in ("401", "403", "404"):
        health = make()
        health.on_failure(0.0, code, f"refused with HTTP {code}")
        assert health.health(0.0) is Health.FATAL
        assert health.fatal_cause == f"refused with HTTP {code}"
        assert not health.probe_due(100.0)


def test_transient_start_up_failures_back_off_and_stay_starting() -> None:
    """A 503 or a timeout at start-up keeps the gateway not ready and retries with growing delays."""
    health = make()
    now = 0.0
    waits = []
    for _ in range(7):
        health.on_failure(now, "503", "refused with HTTP 503")
        assert health.health(now) is Health.STARTING
        wait = 0.0
        while not health.probe_due(now + wait):
            wait += 0.25
        waits.append(wait)
        now += wait
    assert waits == [STARTUP_BACKOFF_S, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_failures_after_success_turn_unhealthy_only_after_the_window() -> None:
    """Once ready, failures keep readiness for UPSTREAM_UNHEALTHY_AFTER_S, then it turns 503."""
    health = make()
    health.on_success(0.0)
    health.on_failure(5.0, "timeout", "realtime handshake timed out")
    health.on_failure(20.0, "503", "refused with HTTP 503")
    assert health.health(34.9) is Health.FAILING
    assert health.ready(34.9)
    assert health.health(35.0) is Health.UNHEALTHY
    assert not health.ready(35.0)


def test_first_success_recovers_at_once() -> None:
    """An unhealthy backend is healthy again at the first successful handshake."""
    health = make()
    health.on_success(0.0)
    health.on_failure(1.0, "connect", "connection refused")
    assert health.health(40.0) is Health.UNHEALTHY
    health.on_success(41.0)
    assert health.health(41.0) is Health.HEALTHY


def test_late_auth_refusal_is_not_fatal() -> None:
    """A 401 after the backend has worked (a rotated key) is a failure, not a reason to exit."""
    health = make()
    health.on_success(0.0)
    health.on_failure(1.0, "401", "refused with HTTP 401")
    assert health.health(1.0) is Health.FAILING
    assert health.health(31.0) is Health.UNHEALTHY


def test_probe_due_only_when_nothing_was_learned_for_an_interval() -> None:
    """A call's handshake counts as a probe: the next probe waits a full interval after it."""
    health = make()
    assert health.probe_due(0.0)
    health.on_success(0.0)
    assert not health.probe_due(9.9)
    health.on_success(9.0)  # a call dialed
    assert not health.probe_due(18.9)
    assert health.probe_due(19.0)


def test_changes_are_reported_once() -> None:
    """Each transition of the verdict is reported once, with the failure that caused it."""
    health = make()
    assert health.change(0.0) is None
    health.on_success(1.0)
    first = health.change(1.0)
    assert first is not None
    assert (first.before, first.after) == (Health.STARTING, Health.HEALTHY)
    assert health.change(2.0) is None
    health.on_failure(3.0, "503", "refused with HTTP 503")
    failing = health.change(3.0)
    assert failing is not None
    assert (failing.after, failing.cause) == (Health.FAILING, "refused with HTTP 503")
    unhealthy = health.change(33.0)
    assert unhealthy is not None
    assert unhealthy.after is Health.UNHEALTHY
