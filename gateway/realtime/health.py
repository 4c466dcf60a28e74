"""Is the realtime backend reachable? A sans-I/O verdict from every handshake, the calls' and the probes'.

Rules (times are seconds on any monotonic clock the caller passes in):

- Not ready until a handshake has succeeded once (start-up).
- A refusal that says the configuration is wrong (401, 403, 404) before any success is fatal: the process
  should stop with a clear message instead of serving calls that can only fail.
- Once ready, failures start a clock; when every handshake has failed for `unhealthy_after_s`, the
  backend is unhealthy (readiness 503). The first success makes it healthy again at once.
- A probe is due when no handshake has finished for `interval_s`; before the first success, retries back
  off from `STARTUP_BACKOFF_S`, doubling up to `interval_s`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["FATAL_CODES", "STARTUP_BACKOFF_S", "Health", "HealthChange", "UpstreamHealth"]

FATAL_CODES = frozenset({"401", "403", "404"})  # the key, the identity's role or the deployment is wrong
STARTUP_BACKOFF_S = 0.5  # the first retry; each next one waits twice as long, up to interval_s


class Health(Enum):
    """What readiness reports about the backend."""

    STARTING = "starting"  # no handshake has succeeded yet
    HEALTHY = "healthy"
    FAILING = "failing"  # handshakes fail, but not yet for unhealthy_after_s: still ready
    UNHEALTHY = "unhealthy"
    FATAL = "fatal"  # refused as misconfigured before any success


@dataclass(frozen=True, slots=True)
class HealthChange:
    """The verdict moved from `before` to `after`; `cause` is the last failure, if any."""

    before: Health
    after: Health
    cause: str | None


class UpstreamHealth:
    """Feed it handshake outcomes with `on_success`/`on_failure`; ask `health(now)` and `probe_due(now)`."""

    def __init__(self, unhealthy_after_s: float, interval_s: float) -> None:
        self.unhealthy_after_s = unhealthy_after_s
        self.interval_s = interval_s
        self.ever_succeeded = False
        self.fatal_cause: str | None = None
        self.failing_since: float | None = None
        self.last_cause: str | None = None
        self._last_result_at: float | None = None
        self._startup_failures = 0
        self._reported = Health.STARTING

    def on_success(self, now_s: float) -> None:
        """A handshake (a call's or a probe's) succeeded."""
        self.ever_succeeded = True
        self.failing_since = None
        self._last_result_at = now_s

    def on_failure(self, now_s: float, code: str, cause: str) -> None:
        """A handshake failed with `code` (HTTP status, "timeout", "connect", "auth", ...)."""
        self._last_result_at = now_s
        self.last_cause = cause
        if not self.ever_succeeded:
            self._startup_failures += 1
            if code in FATAL_CODES and self.fatal_cause is None:
                self.fatal_cause = cause
        if self.failing_since is None:
            self.failing_since = now_s

    def health(self, now_s: float) -> Health:
        """The verdict now."""
        if self.fatal_cause is not None:
            return Health.FATAL
        if not self.ever_succeeded:
            return Health.STARTING
        if self.failing_since is None:
            return Health.HEALTHY
        if now_s - self.failing_since >= self.unhealthy_after_s:
            return Health.UNHEALTHY
        return Health.FAILING

    def ready(self, now_s: float) -> bool:
        """Readiness: calls can be expected to reach the backend."""
        return self.health(now_s) in (Health.HEALTHY, Health.FAILING)

    def probe_due(self, now_s: float) -> bool:
        """A probe should run now: nothing has been learned for a while (or start-up is retrying)."""
        if self.fatal_cause is not None:
            return False
        if self._last_result_at is None:
            return True
        if self.ever_succeeded:
            wait = self.interval_s
        else:
            doublings = min(max(0, self._startup_failures - 1), 16)
            wait = min(self.interval_s, STARTUP_BACKOFF_S * 2**doublings)
        return now_s - self._last_result_at >= wait

    def change(self, now_s: float) -> HealthChange | None:
        """The verdict's change since the last call of `change` (for one log line per transition)."""
        now = self.health(now_s)
        if now is self._reported:
            return None
        change = HealthChange(self._reported, now, self.last_cause if now is not Health.HEALTHY else None)
        self._reported = now
        return change
