"""Per-source rate limiting of SIP messages, sans-I/O: one token bucket per source address.

A scanner's OPTIONS or INVITE storm comes from one address; answering it costs CPU, memory (every request
opens a server transaction that lives up to 32 s) and upstream bandwidth (each answer can be reflected at
a spoofed victim). `SourceThrottle.admit(source, now)` says whether a message from `source` is within its
budget: `rate` messages a second on average, `burst` at once. Over budget, the I/O layer drops the
message silently (no 503: an answer is exactly what a flood should not get).

Dropped messages cost nothing, so a source that stops flooding is served again as soon as one token has
refilled (1/`rate` s): a trunk that sent one bad burst keeps its calls. Malformed messages cost
`MALFORMED_COST` tokens (`penalize`), so garbage is cut to a tenth of the rate; the debt a penalty leaves
is bounded by one such message, so recovery takes at most `MALFORMED_COST`/`rate` s (0.1 s at the default
100 a second). Sources in the trusted networks (`SIP_ALLOW_FROM`: the trunks and PBXes) get
`TRUSTED_FACTOR` times the budget: never throttled in practice, yet still bounded if someone spoofs their
address.

The table of buckets is bounded (`max_sources`): the least recently seen source is forgotten first, and
sources idle long enough for a full bucket are swept out every `SWEEP_S`, so a flood of spoofed source
addresses cannot grow memory without bound (a forgotten source simply starts again with a full bucket).

Logging a flood must not flood the log: the core reports one `ThrottleStarted` when a source is first
throttled and one `ThrottleEnded` (with the count dropped) once its bucket is full again (it has behaved
for `burst`/`rate` s) or it is forgotten; `events()` drains them.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "MALFORMED_COST",
    "MAX_SOURCES",
    "SWEEP_S",
    "TCP_CLOSE_AFTER_DROPS",
    "TRUSTED_FACTOR",
    "Network",
    "SourceThrottle",
    "ThrottleEnded",
    "ThrottleEvent",
    "ThrottleStarted",
    "address_in",
]

MAX_SOURCES: Final = 65_536  # buckets kept at most (about 10 MB at worst)
SWEEP_S: Final = 1.0  # how often idle buckets are swept out
TRUSTED_FACTOR: Final = 10  # budget multiplier for sources in the trusted networks
MALFORMED_COST: Final = 10.0  # tokens a malformed message costs in all (one on arrival, the rest later)
TCP_CLOSE_AFTER_DROPS: Final = 100  # a TCP connection with this many messages dropped is closed
_EPSILON: Final = 1e-9  # float refills (0.7 - 0.5) * 5 fall a hair short of a whole token


@dataclass(frozen=True, slots=True)
class ThrottleStarted:
    """`source` went over its budget: its messages are dropped until it slows down."""

    source: str
    rate: float
    burst: float


@dataclass(frozen=True, slots=True)
class ThrottleEnded:
    """`source` is back within its budget (or was forgotten); `dropped` of its messages were dropped over
    `seconds`."""

    source: str
    dropped: int
    seconds: float


ThrottleEvent: TypeAlias = ThrottleStarted | ThrottleEnded


class _Bucket:
    __slots__ = ("burst", "dropped", "last", "rate", "since", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now
        self.dropped = 0
        self.since: float | None = None  # when throttling started; None while within budget

    def refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now

    def full_at(self, now: float) -> bool:
        """Whether the bucket has refilled completely by `now` (the source has behaved long enough)."""
        return self.tokens + max(0.0, now - self.last) * self.rate >= self.burst - _EPSILON


class SourceThrottle:
    """Token buckets by source address (see the module docstring). Feed it with `admit`; drain `events`."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        trusted: tuple[str, ...] = (),
        max_sources: int = MAX_SOURCES,
    ) -> None:
        if rate <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate must be positive, burst and max_sources at least 1")
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._trusted = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in trusted)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()  # least recently seen first
        self._events: list[ThrottleEvent] = []
        self._swept = float("-inf")
        self.dropped = 0  # messages dropped, all sources

    def admit(self, source: str, now: float) -> bool:
        """True if a message from `source` arriving at `now` is within budget (one token spent); False if
        it must be dropped silently (counted, and reported once per episode as `ThrottleStarted`)."""
        if now - self._swept >= SWEEP_S:
            self.sweep(now)
        bucket = self._bucket(source, now)
        bucket.refill(now)
        if bucket.since is not None and bucket.tokens >= bucket.burst - _EPSILON:
            self._end(source, bucket, now)
        if bucket.tokens >= 1.0 - _EPSILON:
            bucket.tokens -= 1.0
            return True
        bucket.dropped += 1
        self.dropped += 1
        if bucket.since is None:
            bucket.since = now
            self._events.append(ThrottleStarted(source, bucket.rate, bucket.burst))
        return False

    def penalize(self, source: str, now: float, cost: float = MALFORMED_COST - 1) -> None:
        """`source` sent something costlier than a message (garbage): spend `cost` more tokens. The debt is
        at most `cost`, so a source that behaves is served again within (cost + 1)/rate s."""
        bucket = self._buckets.get(source)
        if bucket is not None:
            bucket.refill(now)
            bucket.tokens = max(-cost, bucket.tokens - cost)

    def events(self) -> list[ThrottleEvent]:
        """Throttling started or ended since the last call (drained)."""
        events, self._events = self._events, []
        return events

    def sweep(self, now: float) -> None:
        """Forget sources whose bucket is full again (`admit` calls it every SWEEP_S). Least recently seen
        first, up to the first one still in use: a bucket refills within burst/rate s, so every source
        idle for longer is at the front."""
        self._swept = now
        while self._buckets:
            source, bucket = next(iter(self._buckets.items()))
            if not bucket.full_at(now):
                break
            del self._buckets[source]
            if bucket.since is not None:
                self._end(source, bucket, now)

    def sources(self) -> int:
        """Sources with a bucket (for tests and leak checks)."""
        return len(self._buckets)

    def throttled(self) -> list[str]:
        """Sources being throttled now (their last message was dropped and they have not yet behaved)."""
        return [source for source, bucket in self._buckets.items() if bucket.since is not None]

    def _bucket(self, source: str, now: float) -> _Bucket:
        bucket = self._buckets.get(source)
        if bucket is not None:
            self._buckets.move_to_end(source)
            return bucket
        while len(self._buckets) >= self.max_sources:
            oldest, evicted = self._buckets.popitem(last=False)
            if evicted.since is not None:
                self._end(oldest, evicted, now)
        factor = TRUSTED_FACTOR if self._is_trusted(source) else 1
        bucket = self._buckets[source] = _Bucket(self.rate * factor, self.burst * factor, now)
        return bucket

    def _is_trusted(self, source: str) -> bool:
        return address_in(source, self._trusted)

    def _end(self, source: str, bucket: _Bucket, now: float) -> None:
        assert bucket.since is not None
        self._events.append(ThrottleEnded(source, bucket.dropped, max(0.0, now - bucket.since)))
        bucket.since, bucket.dropped = None, 0


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def address_in(host: str, networks: tuple[Network, ...]) -> bool:
    """Whether `host` (an address; a host name never is) lies in one of `networks`."""
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)
