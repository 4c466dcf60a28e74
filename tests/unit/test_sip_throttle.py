"""The per-source SIP throttle on a simulated clock: budgets, silent drops, recovery, bounded memory."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from gateway.backend import sip_settings_from
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.sip.server import SipServer
from gateway.sip.settings import SipSettings
from gateway.sip.throttle import (
    MALFORMED_COST,
    SWEEP_S,
    TRUSTED_FACTOR,
    SourceThrottle,
    ThrottleEnded,
    ThrottleStarted,
)
from gateway.sip.ua import Peer

RATE, BURST = 50.0, 100.0


def flood(throttle: SourceThrottle, source: str, count: int, start: float, per_s: float) -> int:
    """Send `count` messages from `source` at `per_s` a second from `start`; returns how many got through."""
    return sum(throttle.admit(source, start + i / per_s) for i in range(count))


def test_a_burst_passes_then_the_rate() -> None:
    """A source may send `burst` messages at once; beyond that, `rate` a second get through."""
    throttle = SourceThrottle(RATE, BURST)
    passed = flood(throttle, "192.0.2.1", 10_000, 0.0, 10_000)  # a one-second storm
    assert BURST <= passed <= BURST + RATE + 1
    assert throttle.dropped == 10_000 - passed


def test_traffic_within_the_rate_is_never_dropped() -> None:
    """A steady source just under the rate (a busy trunk) loses nothing, however long it runs."""
    throttle = SourceThrottle(RATE, BURST)
    assert flood(throttle, "192.0.2.1", 60 * 49, 0.0, 49) == 60 * 49
    assert throttle.events() == []


def test_throttling_is_reported_once_and_its_end_with_the_count() -> None:
    """One ThrottleStarted per episode, however many messages are dropped, and one ThrottleEnded with the
    number dropped once the source has behaved long enough for a full bucket."""
    throttle = SourceThrottle(RATE, BURST)
    flood(throttle, "192.0.2.1", 1000, 0.0, 10_000)
    assert throttle.events() == [ThrottleStarted("192.0.2.1", RATE, BURST)]
    assert throttle.throttled() == ["192.0.2.1"]
    assert throttle.admit("192.0.2.1", 0.1 + BURST / RATE)
    [ended] = throttle.events()
    assert isinstance(ended, ThrottleEnded)
    assert ended.source == "192.0.2.1"
    assert ended.dropped == throttle.dropped
    assert throttle.throttled() == []


def test_a_flooding_source_is_served_again_at_once_when_it_stops() -> None:
    """The bucket never goes below zero: one token after the flood stops (1/rate s), it is served."""
    throttle = SourceThrottle(RATE, BURST)
    passed = flood(throttle, "192.0.2.1", 100_000, 0.0, 10_000)  # ten seconds of storm
    assert passed <= BURST + 10 * RATE + 1
    assert throttle.admit("192.0.2.1", 9.9999 + 1 / RATE)


def test_other_sources_keep_their_own_budget() -> None:
    """A flood from one address does not touch another address's budget."""
    throttle = SourceThrottle(RATE, BURST)
    flood(throttle, "192.0.2.1", 5000, 0.0, 10_000)
    assert flood(throttle, "192.0.2.2", 10, 0.2, 100) == 10


def test_trusted_sources_get_a_larger_budget() -> None:
    """A source in the trusted networks (SIP_ALLOW_FROM) gets TRUSTED_FACTOR times the rate and burst."""
    throttle = SourceThrottle(RATE, BURST, trusted=("10.0.0.0/8",))
    assert flood(throttle, "10.1.2.3", int(BURST * TRUSTED_FACTOR), 0.0, 1e6) == BURST * TRUSTED_FACTOR
    assert flood(throttle, "192.0.2.1", int(BURST * TRUSTED_FACTOR), 0.0, 1e6) == BURST


def test_a_source_that_is_not_an_address_is_not_trusted() -> None:
    """A malformed source (never from a socket, but the core must not trust or crash on it)."""
    throttle = SourceThrottle(RATE, BURST, trusted=("10.0.0.0/8",))
    assert flood(throttle, "not-an-address", 1000, 0.0, 1e6) == BURST


def test_malformed_messages_cost_more() -> None:
    """Garbage costs MALFORMED_COST tokens: a source sending only garbage gets a tenth as much through."""
    throttle = SourceThrottle(RATE, BURST)
    passed = 0
    for i in range(10_000):
        now = i / 1000  # ten seconds at 1000 a second
        if throttle.admit("192.0.2.1", now):
            passed += 1
            throttle.penalize("192.0.2.1", now)
    expected = (BURST + RATE * 10) / MALFORMED_COST
    assert expected * 0.8 <= passed <= expected * 1.2


def test_a_penalty_never_delays_recovery_past_one_malformed_message() -> None:
    """However much garbage a source sent, MALFORMED_COST/rate s after it stops it is served again."""
    throttle = SourceThrottle(RATE, BURST)
    for _ in range(500):
        throttle.admit("192.0.2.1", 0.0)
        throttle.penalize("192.0.2.1", 0.0)
    assert not throttle.admit("192.0.2.1", (MALFORMED_COST - 1) / RATE)
    assert throttle.admit("192.0.2.1", MALFORMED_COST / RATE)


def test_the_table_is_bounded_under_a_spoofed_flood() -> None:
    """A flood from 200,000 different addresses keeps at most max_sources buckets, and the one real
    flooder among them (seen constantly) stays throttled rather than being forgotten."""
    throttle = SourceThrottle(RATE, BURST, max_sources=1000)
    flood(throttle, "192.0.2.1", 1000, 0.0, 1e6)
    flooder_passed = 0
    for i in range(200_000):
        now = 0.001 + i * 5e-7  # all within a tenth of a second: nothing is idle yet
        throttle.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now)
        if i % 100 == 0:
            flooder_passed += throttle.admit("192.0.2.1", now)
        assert throttle.sources() <= 1000
    assert flooder_passed <= RATE * 0.1 + 1  # its rate, not a fresh burst
    assert "192.0.2.1" in throttle.throttled()


def test_idle_sources_are_swept_out() -> None:
    """A source quiet long enough for a full bucket is forgotten at the next sweep (every SWEEP_S)."""
    throttle = SourceThrottle(RATE, BURST)
    for i in range(100):
        throttle.admit(f"192.0.2.{i}", 0.0)
    throttle.admit("198.51.100.1", BURST / RATE + SWEEP_S)
    assert throttle.sources() == 1


def test_forgetting_a_throttled_source_reports_its_end() -> None:
    """A throttled source that stops and is swept out still gets its ThrottleEnded (the log's summary)."""
    throttle = SourceThrottle(RATE, BURST)
    flood(throttle, "192.0.2.1", 500, 0.0, 1e6)
    throttle.events()
    throttle.sweep(BURST / RATE + 1)
    [ended] = throttle.events()
    assert isinstance(ended, ThrottleEnded)
    assert (ended.source, ended.dropped) == ("192.0.2.1", 400)
    assert ended.seconds == pytest.approx(BURST / RATE + 1, abs=1e-3)
    assert throttle.sources() == 0


def test_evicting_a_throttled_source_reports_its_end() -> None:
    """When the table is full, the least recently seen source goes first, with its ThrottleEnded."""
    throttle = SourceThrottle(RATE, BURST, max_sources=2)
    flood(throttle, "192.0.2.1", 200, 0.0, 1e6)
    throttle.admit("192.0.2.2", 0.0)
    throttle.admit("192.0.2.3", 0.0)
    assert throttle.events()[-1] == ThrottleEnded("192.0.2.1", 100, 0.0)
    assert throttle.sources() == 2


@pytest.mark.parametrize(("rate", "burst", "sources"), [(0, 10, 10), (10, 0.5, 10), (10, 10, 0)])
def test_bad_parameters_are_refused(rate: float, burst: float, sources: int) -> None:
    """A zero rate, a burst under one message or an empty table is a programming error."""
    with pytest.raises(ValueError, match="rate must be positive"):
        SourceThrottle(rate, burst, max_sources=sources)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 0.5), st.sampled_from(["a", "b", "c"])), max_size=300))
def test_no_source_ever_gets_more_than_burst_plus_rate_times_time(gaps: list[tuple[float, str]]) -> None:
    """Whatever the arrival pattern, a source gets at most burst + rate * elapsed messages through, and a
    source that waited 1/rate s after its last message is always admitted."""
    throttle = SourceThrottle(5.0, 3.0)
    now, passed = 0.0, {"a": 0, "b": 0, "c": 0}
    for gap, source in gaps:
        now += gap
        passed[source] += throttle.admit(source, now)
        assert passed[source] <= 3 + 5 * now + 1e-9
    for source in passed:
        assert throttle.admit(source, now + 1 / 5.0)


OPTIONS = (
    b"OPTIONS sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-{n}\r\n"
    b"From: <sip:a@192.0.2.1>;tag=1\r\nTo: <sip:bot@127.0.0.1>\r\nCall-ID: {n}@x\r\nCSeq: 1 OPTIONS\r\n"
    b"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
)

STRAY_RESPONSE = (
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-ours\r\nFrom: <sip:bot@x>;tag=1\r\n"
    b"To: <sip:a@x>;tag=2\r\nCall-ID: stray@x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
)


async def test_the_server_exports_what_it_counts_to_prometheus() -> None:
    """SipServer counts messages by kind, malformed ones, refusals by status and throttled drops into the
    app's GatewayMetrics (a fresh registry here), next to its own SipCounters."""
    metrics = GatewayMetrics(CollectorRegistry())
    settings = SipSettings(listen=(("udp", "127.0.0.1", 0),), rate_limit=5, rate_burst=5)
    server = SipServer(settings, start_call=_no_call, busy=lambda: None, metrics=metrics)
    await server.start()
    try:
        peer = Peer("udp", "192.0.2.1", 5060)
        options = [OPTIONS.replace(b"{n}", str(n).encode()) for n in range(6)]
        bye = options[5].replace(b"OPTIONS", b"BYE").replace(b"bot@127.0.0.1>", b"bot@127.0.0.1>;tag=x")
        admitted = [server.received(message, peer) for message in options[:3]]
        admitted.append(server.received(STRAY_RESPONSE, peer))  # a response to nothing we sent
        admitted.append(server.received(bye, peer))  # outside any dialog: 481
        admitted.append(server.received(b"\x00garbage", Peer("udp", "192.0.2.9", 5060)))
        admitted += [server.received(message, peer) for message in options[3:5]]  # 5 spent: dropped
    finally:
        await server.stop()
    assert admitted == [True] * 6 + [False, False]
    value = metrics.registry.get_sample_value
    assert value("gateway_sip_messages_total", {"kind": "request"}) == 5
    assert value("gateway_sip_messages_total", {"kind": "response"}) == 1
    assert value("gateway_sip_malformed_total") == 1
    assert value("gateway_sip_refused_total", {"status": "481"}) == 1
    assert value("gateway_sip_throttled_total") == 2
    assert server.counters.throttled == 2
    assert value("gateway_rtp_stray_packets_total") == 0
    assert value("gateway_sip_registered") == 0


async def _no_call(_channel: object) -> None:
    raise AssertionError("no call expected")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIP_RATE_LIMIT": "-1"}, "SIP_RATE_LIMIT='-1' is invalid: must be between 0 and"),
        ({"SIP_RATE_LIMIT": "fast"}, "SIP_RATE_LIMIT='fast' is invalid: must be an integer"),
        ({"SIP_RATE_BURST": "0"}, "SIP_RATE_BURST='0' is invalid: must be between 1 and"),
        (
            {"SIP_RATE_LIMIT": "500", "SIP_RATE_BURST": "100"},
            "SIP_RATE_BURST=100 is below SIP_RATE_LIMIT=500",
        ),
    ],
)
def test_bad_rate_settings_stop_start_up(env: dict[str, str], message: str) -> None:
    """A malformed or inconsistent SIP_RATE_LIMIT/SIP_RATE_BURST is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(env)


def test_rate_settings_reach_the_sip_leg() -> None:
    """The defaults (100 a second, bursts of 200) and 0 (no limit) arrive in SipSettings."""
    defaults = sip_settings_from(load_settings({}))
    assert (defaults.rate_limit, defaults.rate_burst) == (100, 200)
    assert sip_settings_from(load_settings({"SIP_RATE_LIMIT": "0"})).rate_limit == 0
