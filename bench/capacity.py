"""How many concurrent calls ONE core of the gateway carries with p99 added latency <= 10 ms.

Starts the gateway as a subprocess pinned to core 0 (`taskset -c 0 python -m gateway serve`), and runs
the load side in this process pinned to core 1: a lean provider client and a lean realtime stub
(`bench.lean_realtime`; `--realtime emulator` uses the project's emulator instead, which costs far more
CPU). The client is `bench.lean_twilio` for Twilio (the default; its figures stay comparable with
earlier runs) and `bench.lean_provider`, driven by the provider wires of `gateway.loadtest.wires`, for
every other provider (`--provider P`, on the gateway's `/P/media` route, streaming the provider's
default format or `--format`). It ramps concurrent calls step by step; per step it ramps up, settles,
measures a steady window, hangs up every call and waits for `gateway_active_calls` to reach 0. Per step
it reports:

* gateway CPU (utime + stime from /proc) as seconds per call-minute and as % of its core;
* gateway resident memory, total and per call above the idle baseline;
* added latency per frame measured from outside (it includes the gateway's event-loop lag), p50/p99:
  caller frame written -> its append arriving upstream, and bot delta sent -> the first media message
  carrying its first byte (`bench.latency` explains the matching): for all deltas, and for those whose
  message did not wait by the provider's rule for audio the service sent later (Exotel's 3,200-byte
  minimum holds a delta's audio until the message is full: a wait by design, not the gateway's); and
  the gateway's own `gateway_added_latency_seconds` p99 over the window (histogram buckets,
  interpolated);
* caller frames sent vs appends received (loss), confirmations asked and sent, and the load side's own
  loop lag p99 and CPU %. A step whose load side lags more than 5 ms p99 is flagged load-limited and
  does not count.

The capacity is the highest step with caller p99 and bot p99 (of the deltas that did not wait by
design: with the stub's 2 s replies in 100 ms deltas, every delta but 11 of each Exotel reply's 20)
<= 10 ms. `--provider all` runs the steps for every provider in turn, each against a fresh gateway
process (so resident memory per call is measured from the same start), and ends with a summary per
provider. `--profile` samples the gateway with py-spy for a while after the top step's window (calls
still running) and ranks its hot spots.
AUDIO_MODE g711 passes mu-law 8 kHz through: a provider that cannot stream it is refused (skipped with
`all`), one that can (Exotel) streams mu-law.

`--provider sip` runs the calls over the native SIP leg instead (`bench.lean_sip`: INVITE, PCMU over RTP,
BYE, one UDP socket per call) against a gateway with SIP_LISTEN and RTP_PORTS set. The table is the same,
read for RTP: caller is packet sent -> its append (the gateway's jitter buffer hands a complete frame on
at once: the append of frame j follows packet j + the resampler's lag; a packet later than its 40 ms
deadline is concealed, so a load side that falls behind shows more appends than packets); bot ("imm")
is a reply's first delta -> its first RTP packet less the wait for the pacer's next 20 ms slot
(`paced_latencies`;
the gateway paces the rest of a reply itself, so later deltas are not matched); and below the table, per
step: the RTP jitter (|gap - 20 ms| between consecutive packets of the gateway, p50/p99: its pacing),
packets lost, and the answer time (INVITE sent -> 200 OK, p50/p99). A SIP step is within bound when the
jitter p99 is too. Several legs side by side: `--provider twilio,sip` (`all`: every provider and SIP).

Run: `python -m bench.capacity [--provider twilio|P|all] [--format l16/16000] [--steps 50,100,200,300]
[--step-s 20] [--mode pcm16|g711] [--json bench/out/capacity.json] [--profile S]`. Numbers, not
assertions: a shared machine moves them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Final

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench import procstat
from bench.latency import (
    ULAW_8K,
    BotMatch,
    Delta,
    LegLayout,
    bot_latencies,
    caller_latencies,
    histogram_quantile,
    paced_latencies,
)
from bench.lean_provider import ProviderCall, ProviderLoad, playout_rule
from bench.lean_realtime import RealtimeStub, StubConfig
from bench.lean_sip import LeanSipCall, SipLoad
from bench.lean_twilio import CallState, LeanCall, TwilioLoad
from bench.pyspy import HotSpot, Profile, hot_spots, record
from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.runner import free_rtp_ports
from gateway.loadtest.wires import PROVIDERS, make_wire
from gateway.realtime.session import AudioFormat
from gateway.realtime.upstream import client_request_id
from gateway.stats import percentile
from telcodec import WireFormat

__all__ = [
    "LEGS",
    "PROVIDERS",
    "SIP",
    "CapacityRun",
    "ProviderSummary",
    "SessionRecords",
    "SipFigures",
    "StepResult",
    "leg_format",
    "main",
    "run_capacity",
    "run_providers",
    "summarise",
]

OUT: Final = Path(__file__).parent / "out" / "capacity.json"
BOUND_MS: Final = 10.0
LOAD_LAG_LIMIT_MS: Final = 5.0
GATEWAY_CORE: Final = 0
LOAD_CORE: Final = 1
ADDED_LATENCY: Final = "gateway_added_latency_seconds"
SIP: Final = "sip"
LEGS: Final = (*PROVIDERS, SIP)  # what `--provider` takes (and `all` runs)


Call = LeanCall | ProviderCall | LeanSipCall
Load = TwilioLoad | ProviderLoad | SipLoad


@dataclass(frozen=True, slots=True)
class SessionRecords:
    """What the realtime side saw of one call: append arrival times and each delta sent (`Delta`: when,
    where its item and the delta start, how long it is), all on time.monotonic()."""

    append_at: Sequence[float]
    deltas: Sequence[Delta]


@dataclass(slots=True)
class StepResult:
    """One step's figures (latencies in ms; NaN when there was nothing to measure)."""

    calls: int
    calls_open: int
    window_s: float
    gateway_cpu_pct: float
    gateway_cpu_s_per_call_min: float
    rss_mb: float
    rss_kb_per_call: float
    caller_p50_ms: float
    caller_p99_ms: float
    bot_p50_ms: float
    bot_p99_ms: float
    bot_immediate_p99_ms: float  # of the deltas whose message did not wait for later audio (the verdict's)
    gateway_caller_p99_ms: float
    gateway_bot_p99_ms: float
    caller_samples: int
    bot_samples: int
    bot_waited: int  # matched deltas whose message waited by the provider's rule for later audio
    bot_unmatched: int
    frames_sent: int
    appends_received: int
    appends_expected: int
    marks_requested: int  # the gateway's requests to confirm playback (marks, checkpoints, notifies)
    marks_echoed: int  # confirmations sent (all but those a clear dropped, or still pending at hang-up)
    clears: int
    strange: int  # messages from the gateway the provider would not accept
    calls_completed: int
    outcomes: dict[str, int]
    load_lag_p99_ms: float
    load_cpu_pct: float
    load_limited: bool
    steal_pct: float  # CPU the hypervisor took from this VM during the window, % of all its CPUs
    within_bound: bool


@dataclass(frozen=True, slots=True)
class SipFigures:
    """What a SIP step adds to its `StepResult`: the gateway's RTP pacing and the answer time (ms)."""

    calls: int
    rtp_jitter_p50_ms: float  # |gap - 20 ms| between consecutive packets of the gateway, in the window
    rtp_jitter_p99_ms: float
    rtp_packets: int
    rtp_lost: int  # by sequence number, over whole calls
    answer_p50_ms: float  # INVITE sent -> 200 OK
    answer_p99_ms: float


@dataclass(slots=True)
class CapacityRun:
    """One provider's run: settings, steps, the capacity figure and (with --profile) the hot spots.
    `refused` says why a provider did not run (AUDIO_MODE=g711 and no mu-law 8 kHz stream)."""

    mode: str
    realtime: str
    pinned: bool
    cpu_count: int
    step_s: float
    ramp_s: float
    settle_s: float
    baseline_rss_mb: float = 0.0
    steps: list[StepResult] = field(default_factory=list)
    capacity_calls: int = 0
    load_loop: str = "asyncio"
    gateway_loop: str = "asyncio"
    priority: int = 0  # the nice value both sides ran at (0: not raised)
    hot_spots: list[HotSpot] = field(default_factory=list)
    idle_pct: float = 0.0  # share of the profile's samples in which the gateway waited in epoll
    profiled_calls: int = 0
    provider: str = "twilio"
    format: str = str(ULAW_8K)  # the stream's wire format, e.g. "l16/16000"
    refused: str = ""
    sip: list[SipFigures] = field(default_factory=list)  # SIP runs: one per step


@dataclass(frozen=True, slots=True)
class ProviderSummary:
    """One provider's line of the `--provider all` summary: its capacity, and its costs at the step
    every provider ran (`at_calls`; 0 and NaN costs for a provider that did not run)."""

    provider: str
    format: str
    capacity_calls: int
    at_calls: int = 0
    gateway_cpu_pct: float = math.nan
    gateway_cpu_s_per_call_min: float = math.nan
    rss_kb_per_call: float = math.nan
    bot_p99_ms: float = math.nan
    bot_immediate_p99_ms: float = math.nan
    within_bound: bool = False  # this provider's verdict at `at_calls`
    refused: str = ""
    rtp_jitter_p99_ms: float = math.nan  # SIP
    answer_p99_ms: float = math.nan  # SIP


# -- the gateway process ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _raise_priority(pid: int, priority: int) -> bool:
    """Set process `pid`'s nice value (negative: ahead of other work on a shared box); False if refused."""
    if priority == 0:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, pid, priority)
    except OSError:
        return False
    return True


def _can_pin() -> bool:
    return shutil.which("taskset") is not None and len(os.sched_getaffinity(0)) >= 2


_UVLOOP_SERVE: Final = (
    "import asyncio, sys, uvloop; asyncio.set_event_loop_policy(uvloop.EventLoopPolicy()); "
    "from gateway.__main__ import main; sys.exit(main(['serve']))"
)


def uvloop_available() -> bool:
    """Whether uvloop can be imported (an optional extra for the bench)."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


class GatewayProcess:
    """`python -m gateway serve` as a subprocess (pinned to one core when asked); stderr to a temp file."""

    def __init__(
        self, env: Mapping[str, str], *, pin: bool, uvloop: bool = False, sip_port: int | None = None
    ) -> None:
        self.port = _free_port()
        self.sip_port = sip_port  # its SIP listener (UDP on 127.0.0.1), when `env` sets SIP_LISTEN
        self.uvloop = uvloop
        self.env = {**os.environ, **env, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(self.port)}
        self.pin = pin
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The gateway's process id."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def base(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession, timeout_s: float = 30.0) -> None:
        """Start it and wait for /readyz."""
        argv = [sys.executable, "-m", "gateway", "serve"]
        if self.uvloop:  # the same entry point on uvloop's event loop (asyncio.run follows the policy)
            argv = [sys.executable, "-c", _UVLOOP_SERVE]
        if self.pin:
            argv = ["taskset", "-c", str(GATEWAY_CORE), *argv]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        # Popen returns at once (the child runs on its own): nothing here blocks the event loop.
        self.proc = subprocess.Popen(  # noqa: ASYNC220
            argv, env=self.env, stdout=subprocess.DEVNULL, stderr=self._log
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(self.base + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"gateway not ready after {timeout_s}s: {self.log_tail()}")

    def log_tail(self, n: int = 2000) -> str:
        """The end of the gateway's stderr."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-n:]

    async def stop(self) -> None:
        """SIGTERM, wait (bounded), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for _ in range(100):
                if self.proc.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()


async def _scrape(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(base + "/metrics") as response:
        return await response.text()


def _samples(text: str, name: str) -> list[tuple[str, dict[str, str], float]]:
    out: list[tuple[str, dict[str, str], float]] = []
    for family in text_string_to_metric_families(text):
        if family.name == name or family.name == name.removesuffix("_total"):
            out += [(s.name, dict(s.labels), s.value) for s in family.samples]
    return out


def _buckets(text: str, direction: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) of the added-latency histogram for one direction, sorted by bound."""
    rows = [
        (float(labels["le"]), value)
        for name, labels, value in _samples(text, ADDED_LATENCY)
        if name.endswith("_bucket") and labels.get("direction") == direction
    ]
    return sorted(rows)


def _window_p99_ms(before: str, after: str, direction: str) -> float:
    early = dict(_buckets(before, direction))
    diff = [(le, count - early.get(le, 0.0)) for le, count in _buckets(after, direction)]
    return histogram_quantile(diff, 0.99) * 1000


def _gauge(text: str, name: str) -> float:
    return sum(value for _, _, value in _samples(text, name))


def _outcomes(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, labels, value in _samples(text, "gateway_calls_total"):
        if name.endswith("_total"):
            out[labels.get("outcome", "")] = value
    return out


# -- the realtime side ---------------------------------------------------------------------------------------


class RealtimeSide:
    """The stub or the emulator, with its records per upstream request id."""

    def __init__(self, kind: str, mode: str, stub_config: StubConfig | None = None) -> None:
        self.kind = kind
        fmt = AudioFormat.G711_ULAW if mode == "g711" else AudioFormat.PCM16
        self.stub: RealtimeStub | None = None
        self.emulator: EmulatorServer | None = None
        if kind == "stub":
            stub = stub_config if stub_config is not None else StubConfig()
            self.stub = RealtimeStub(replace(stub, output_format=fmt))
        else:
            config = EmulatorConfig(
                record_audio=False, record_client_events=False, realtime_factor=4, reply_ms=2000
            )
            self.emulator = EmulatorServer(config)

    async def start(self) -> str:
        """Start; returns the REALTIME_URL for the gateway."""
        if self.stub is not None:
            await self.stub.start()
            return self.stub.url
        assert self.emulator is not None
        await self.emulator.start()
        return self.emulator.ga_url()

    async def stop(self) -> None:
        """Stop serving."""
        if self.stub is not None:
            await self.stub.stop()
        if self.emulator is not None:
            await self.emulator.stop()

    def records(self) -> dict[str, SessionRecords]:
        """Every session so far, by x-ms-client-request-id."""
        out: dict[str, SessionRecords] = {}
        if self.stub is not None:
            for session in self.stub.sessions:
                if session.request_id is not None:
                    deltas = [
                        Delta(d.sent_at, d.item_offset_ms, d.start_ms, d.size_ms) for d in session.deltas
                    ]
                    out[session.request_id] = SessionRecords(session.append_at, deltas)
        if self.emulator is not None:
            origin = self.emulator.clock_origin_s
            for emu in self.emulator.sessions:
                request_id = emu.headers.get("x-ms-client-request-id")
                if request_id is None:
                    continue
                appends = [origin + r.at_ms / 1000 for r in emu.received_audio]
                emu_deltas: list[Delta] = []
                offset = 0
                for item in emu.items.values():
                    if item.role != "assistant":
                        continue
                    emu_deltas += [
                        Delta(origin + at / 1000, offset, start, size) for at, start, size in item.deltas
                    ]
                    offset += item.audio_ms
                out[request_id] = SessionRecords(appends, emu_deltas)
        return out

    def forget(self) -> None:
        """Drop the records of finished sessions (between steps)."""
        if self.stub is not None:
            self.stub.sessions.clear()
        if self.emulator is not None:
            self.emulator.sessions.clear()


# -- one step ------------------------------------------------------------------------------------------


def leg_format(provider: str, mode: str, requested: WireFormat | None = None) -> WireFormat:
    """The format a provider's calls stream: `requested`, else the provider's default (under AUDIO_MODE
    g711, its mu-law 8 kHz stream if it has one). ValueError for a provider the gateway does not serve,
    a format the provider does not stream, or one the gateway cannot carry in this mode."""
    if provider == SIP:  # PCMU: the gateway converts as for any mu-law 8 kHz leg
        if requested is not None and requested != ULAW_8K:
            raise ValueError(f"sip streams {ULAW_8K} (PCMU), not {requested}")
        return ULAW_8K
    offered = make_wire(provider, "CA" + "0" * 32).formats
    if requested is not None and requested not in offered:
        raise ValueError(f"{provider} streams {', '.join(map(str, offered))}, not {requested}")
    fmt = requested or (ULAW_8K if mode == "g711" and ULAW_8K in offered else offered[0])
    LegLayout.of(fmt, mode)  # refuses what the gateway would end as a protocol error
    return fmt


@dataclass(frozen=True, slots=True)
class _Leg:
    """The provider's side of a run: who, streaming which format, and where its bot bytes land."""

    provider: str
    format: WireFormat
    layout: LegLayout

    @classmethod
    def of(cls, provider: str, fmt: WireFormat, mode: str) -> _Leg:
        if provider == SIP:  # the gateway paces RTP itself: no provider playout rule
            return cls(provider, fmt, LegLayout.of(fmt, mode))
        return cls(provider, fmt, LegLayout.of(fmt, mode, playout_rule(provider, fmt)))

    def new_load(self, gateway: GatewayProcess) -> Load:
        if self.provider == SIP:
            assert gateway.sip_port is not None
            return SipLoad("127.0.0.1", gateway.sip_port)
        if self.provider == "twilio":  # the hand-tuned Twilio client: figures comparable with earlier runs
            return TwilioLoad("127.0.0.1", gateway.port)
        return ProviderLoad("127.0.0.1", gateway.port, self.provider, self.format)


async def _ramp(load: Load, n: int, ramp_s: float) -> list[Call]:
    start = time.monotonic()

    failures: Counter[str] = Counter()

    async def open_at(i: int) -> Call | None:
        await asyncio.sleep(max(0.0, start + i * ramp_s / n - time.monotonic()))
        try:
            return await load.open_call()
        except (OSError, TimeoutError, ConnectionError) as exc:
            failures[type(exc).__name__] += 1
            return None

    opened = await asyncio.gather(*(open_at(i) for i in range(n)))
    if failures:
        print(f"  {sum(failures.values())} of {n} calls failed to open: {dict(failures)}", file=sys.stderr)
    return [call for call in opened if call is not None]


async def _wait_idle(http: aiohttp.ClientSession, base: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    text = await _scrape(http, base)
    while _gauge(text, "gateway_active_calls") > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        text = await _scrape(http, base)
    return text


@dataclass(slots=True)
class _Matched:
    """Every call's latencies (s) in one step's window, pooled, with the appends received and expected."""

    caller: list[float] = field(default_factory=list)
    bot: list[float] = field(default_factory=list)
    bot_immediate: list[float] = field(default_factory=list)
    unmatched: int = 0
    received: int = 0
    expected: int = 0

    def add_bot(self, match: BotMatch) -> None:
        self.bot += match.latencies
        self.bot_immediate += match.immediate
        self.unmatched += match.unmatched


def _latencies(
    calls: Sequence[Call],
    records: Mapping[str, SessionRecords],
    layout: LegLayout,
    window: tuple[float, float],
) -> _Matched:
    out = _Matched()
    lag = layout.caller_frame_lag
    for call in calls:
        rec = records.get(client_request_id(call.call_sid))
        if rec is None:
            continue
        out.caller += caller_latencies(call.sent_at, rec.append_at, lag, window)
        out.received += len(rec.append_at)
        out.expected += max(0, len(call.sent_at) - lag)
        if isinstance(call, LeanSipCall):
            first = [d.sent_at for d in rec.deltas if d.start_ms == 0]
            paced = paced_latencies(first, call.spurt_at, call.rtp_at, window)
            out.bot += paced
            out.bot_immediate += paced
            continue
        until = call.first_clear_at if call.first_clear_at is not None else math.inf
        media_end = call.received_bytes
        out.add_bot(
            bot_latencies(
                rec.deltas, call.media_at, call.media_offset, layout, window, media_end=media_end, until=until
            )
        )
    return out


def _jitter_ms(call: LeanSipCall, window: tuple[float, float]) -> list[float]:
    """|gap - 20 ms| (ms) between consecutive packets of the gateway, the later one arriving in `window`."""
    at = np.frombuffer(call.rtp_at, dtype=np.float64)
    seq = np.frombuffer(call.rtp_seq, dtype=np.uint16).astype(np.int64)
    if len(at) < 2:
        return []
    keep = ((np.diff(seq) & 0xFFFF) == 1) & (at[1:] >= window[0]) & (at[1:] < window[1])
    deviations = np.abs(np.diff(at) - 0.020)[keep] * 1000
    return [float(v) for v in deviations]


def _lost(call: LeanSipCall) -> int:
    """The gateway's packets never received, by extended sequence number."""
    seq = np.frombuffer(call.rtp_seq, dtype=np.uint16).astype(np.int64)
    if not len(seq):
        return 0
    extended = seq[0] + np.concatenate(([0], np.cumsum((np.diff(seq) + 0x8000) % 0x10000 - 0x8000)))
    return int(extended.max() - extended.min() + 1 - len(np.unique(extended)))


def sip_figures(calls: Sequence[Call], window: tuple[float, float]) -> SipFigures:
    """The SIP figures of one step (see `SipFigures`)."""
    sip = [call for call in calls if isinstance(call, LeanSipCall)]
    jitter = [v / 1000 for call in sip for v in _jitter_ms(call, window)]
    answers = [call.answer_s for call in sip if call.answer_s is not None]
    return SipFigures(
        calls=len(sip),
        rtp_jitter_p50_ms=_ms(jitter, 50),
        rtp_jitter_p99_ms=_ms(jitter, 99),
        rtp_packets=sum(len(call.rtp_at) for call in sip),
        rtp_lost=sum(_lost(call) for call in sip),
        answer_p50_ms=_ms(answers, 50),
        answer_p99_ms=_ms(answers, 99),
    )


def _strange(call: Call) -> int:
    return call.strange if isinstance(call, ProviderCall | LeanSipCall) else call.other_messages


def _ms(values: Sequence[float], q: float) -> float:
    return round(percentile(values, q) * 1000, 3)


async def run_step(
    n: int,
    *,
    leg: _Leg,
    gateway: GatewayProcess,
    realtime: RealtimeSide,
    http: aiohttp.ClientSession,
    step_s: float,
    ramp_s: float,
    settle_s: float,
    baseline_rss_kb: int,
    profile_s: float = 0.0,
) -> tuple[StepResult, Profile | None, SipFigures | None]:
    """Ramp to `n` calls, settle, measure `step_s`, (profile), hang up, wait for the gateway to idle."""
    realtime.forget()
    load = leg.new_load(gateway)
    calls = await _ramp(load, n, ramp_s)
    await asyncio.sleep(settle_s)
    before = await _scrape(http, gateway.base)
    cpu0, self0, t0 = procstat.cpu_seconds(gateway.pid), procstat.cpu_seconds(), time.monotonic()
    steal0 = procstat.steal_seconds()
    await asyncio.sleep(step_s)
    cpu1, self1, t1 = procstat.cpu_seconds(gateway.pid), procstat.cpu_seconds(), time.monotonic()
    steal1 = procstat.steal_seconds()
    after = await _scrape(http, gateway.base)
    rss = procstat.rss_kb(gateway.pid)
    open_calls = sum(1 for c in calls if c.state is CallState.OPEN)
    spots: Profile | None = None
    if profile_s > 0:
        spots = hot_spots(await record(gateway.pid, profile_s, cpu=LOAD_CORE if _can_pin() else None))
    await load.aclose()
    idle = await _wait_idle(http, gateway.base)
    window = (t0, t1)
    matched = _latencies(calls, realtime.records(), leg.layout, window)
    sip = sip_figures(calls, window) if leg.provider == SIP else None
    lags = [lag for at, lag in zip(load.lag_at, load.lag_s, strict=True) if t0 <= at < t1]
    outcomes_before, outcomes_after = _outcomes(before), _outcomes(idle)
    outcomes = {
        k: round(v - outcomes_before.get(k, 0.0))
        for k, v in outcomes_after.items()
        if v > outcomes_before.get(k, 0)
    }
    wall = t1 - t0
    lag_p99 = _ms(lags, 99)
    result = StepResult(
        calls=n,
        calls_open=open_calls,
        window_s=round(wall, 2),
        gateway_cpu_pct=round(100 * (cpu1 - cpu0) / wall, 1),
        gateway_cpu_s_per_call_min=round((cpu1 - cpu0) / (max(1, open_calls) * wall / 60), 4),
        rss_mb=round(rss / 1024, 1),
        rss_kb_per_call=round((rss - baseline_rss_kb) / max(1, n), 1),
        caller_p50_ms=_ms(matched.caller, 50),
        caller_p99_ms=_ms(matched.caller, 99),
        bot_p50_ms=_ms(matched.bot, 50),
        bot_p99_ms=_ms(matched.bot, 99),
        bot_immediate_p99_ms=_ms(matched.bot_immediate, 99),
        gateway_caller_p99_ms=round(_window_p99_ms(before, after, "caller"), 3),
        gateway_bot_p99_ms=round(_window_p99_ms(before, after, "bot"), 3),
        caller_samples=len(matched.caller),
        bot_samples=len(matched.bot),
        bot_waited=len(matched.bot) - len(matched.bot_immediate),
        bot_unmatched=matched.unmatched,
        frames_sent=sum(len(c.sent_at) for c in calls),
        appends_received=matched.received,
        appends_expected=matched.expected,
        marks_requested=sum(c.marks_received for c in calls),
        marks_echoed=sum(c.marks_echoed for c in calls),
        clears=sum(c.clears for c in calls),
        strange=sum(_strange(c) for c in calls),
        calls_completed=outcomes.get("completed", 0),
        outcomes=outcomes,
        load_lag_p99_ms=lag_p99,
        load_cpu_pct=round(100 * (self1 - self0) / wall, 1),
        load_limited=not lag_p99 <= LOAD_LAG_LIMIT_MS,
        steal_pct=round(100 * (steal1 - steal0) / (wall * (os.cpu_count() or 1)), 1),
        within_bound=False,
    )
    result.within_bound = (
        not result.load_limited
        and open_calls == n
        and result.caller_p99_ms <= BOUND_MS
        and result.bot_immediate_p99_ms <= BOUND_MS
        and (sip is None or sip.rtp_jitter_p99_ms <= BOUND_MS)
    )
    return result, spots, sip


# -- the run ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every provider's run shares."""

    steps: Sequence[int]
    step_s: float
    ramp_s: float
    settle_s: float
    profile_s: float
    progress: bool


async def _run_steps(
    run: CapacityRun,
    leg: _Leg,
    plan: _Plan,
    *,
    gateway: GatewayProcess,
    realtime: RealtimeSide,
    http: aiohttp.ClientSession,
) -> None:
    """Every step of one provider against a started gateway (its idle RSS read after `settle_s`); fills
    in `run`."""
    await asyncio.sleep(plan.settle_s)
    baseline = procstat.rss_kb(gateway.pid)
    run.baseline_rss_mb = round(baseline / 1024, 1)
    for i, n in enumerate(plan.steps):
        last = i == len(plan.steps) - 1
        result, spots, sip = await run_step(
            n,
            leg=leg,
            gateway=gateway,
            realtime=realtime,
            http=http,
            step_s=plan.step_s,
            ramp_s=plan.ramp_s,
            settle_s=plan.settle_s,
            baseline_rss_kb=baseline,
            profile_s=plan.profile_s if last else 0.0,
        )
        run.steps.append(result)
        if sip is not None:
            run.sip.append(sip)
        if spots is not None:
            run.hot_spots, run.idle_pct, run.profiled_calls = spots.spots, spots.idle_pct, n
        if plan.progress:
            if i == 0:
                print(_HEADER, flush=True)
            print(_row(result), flush=True)
            if sip is not None:
                print(_sip_row(sip), flush=True)
    good = [s.calls for s in run.steps if s.within_bound]
    run.capacity_calls = max(good, default=0)


async def run_providers(
    providers: Sequence[str],
    steps: Sequence[int],
    *,
    formats: Mapping[str, WireFormat] | None = None,
    step_s: float = 20.0,
    ramp_s: float = 5.0,
    settle_s: float = 3.0,
    mode: str = "pcm16",
    realtime_kind: str = "stub",
    pin: bool = True,
    profile_s: float = 0.0,
    gateway_env: Mapping[str, str] | None = None,
    gateway_uvloop: bool = False,
    priority: int = 0,
    progress: bool = True,
    stub_config: StubConfig | None = None,
) -> list[CapacityRun]:
    """Run every step for each provider in turn (each against a fresh gateway process, all against one
    realtime side); one `CapacityRun` each, with `refused` set for a provider whose stream the gateway
    cannot carry in `mode`. `formats` picks a provider's format (default: see `leg_format`);
    `stub_config` shapes the stub's turns (its output format follows `mode`)."""
    pinned = pin and _can_pin()
    if pinned:
        os.sched_setaffinity(0, {LOAD_CORE})
    raised = _raise_priority(0, priority)
    plan = _Plan(steps, step_s, ramp_s, settle_s, profile_s, progress)
    realtime = RealtimeSide(realtime_kind, mode, stub_config)
    url = await realtime.start()
    env = {
        "LOG_LEVEL": "warning",
        "GATEWAY_MAX_CALLS": "100000",
        "GATEWAY_WORKERS": "1",
        "REALTIME_URL": url,
        "AUDIO_MODE": mode,
        **(gateway_env or {}),
    }
    runs: list[CapacityRun] = []
    try:
        async with aiohttp.ClientSession() as http:
            for provider in providers:
                run = CapacityRun(
                    mode,
                    realtime_kind,
                    pinned,
                    os.cpu_count() or 1,
                    step_s,
                    ramp_s,
                    settle_s,
                    provider=provider,
                )
                run.load_loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
                run.gateway_loop = "uvloop" if gateway_uvloop else "asyncio"
                runs.append(run)
                try:
                    fmt = leg_format(provider, mode, (formats or {}).get(provider))
                except ValueError as exc:
                    run.refused = str(exc)
                    if progress:
                        print(f"--provider {provider}: refused: {exc}", flush=True)
                    continue
                run.format = str(fmt)
                if progress:
                    print(f"--provider {provider} ({fmt}, AUDIO_MODE={mode})", flush=True)
                leg_env, sip_port = dict(env), None
                if provider == SIP:
                    sip_port = _free_udp_port()
                    leg_env["SIP_LISTEN"] = f"udp:127.0.0.1:{sip_port}"
                    leg_env.setdefault("RTP_PORTS", free_rtp_ports(2 * max(steps, default=1) + 200))
                gateway = GatewayProcess(leg_env, pin=pinned, uvloop=gateway_uvloop, sip_port=sip_port)
                try:
                    await gateway.start(http)
                    run.priority = priority if raised and _raise_priority(gateway.pid, priority) else 0
                    leg = _Leg.of(provider, fmt, mode)
                    await _run_steps(run, leg, plan, gateway=gateway, realtime=realtime, http=http)
                finally:
                    await gateway.stop()
    finally:
        await realtime.stop()
    return runs


async def run_capacity(
    steps: Sequence[int],
    *,
    provider: str = "twilio",
    fmt: WireFormat | None = None,
    step_s: float = 20.0,
    ramp_s: float = 5.0,
    settle_s: float = 3.0,
    mode: str = "pcm16",
    realtime_kind: str = "stub",
    pin: bool = True,
    profile_s: float = 0.0,
    gateway_env: Mapping[str, str] | None = None,
    gateway_uvloop: bool = False,
    priority: int = 0,
    progress: bool = True,
    stub_config: StubConfig | None = None,
) -> CapacityRun:
    """Run every step for one provider against one gateway process; returns the figures (see the module
    doc). ValueError if the gateway cannot carry the provider's stream in `mode`."""
    fmt = leg_format(provider, mode, fmt)
    (run,) = await run_providers(
        [provider],
        steps,
        formats={provider: fmt},
        step_s=step_s,
        ramp_s=ramp_s,
        settle_s=settle_s,
        mode=mode,
        realtime_kind=realtime_kind,
        pin=pin,
        profile_s=profile_s,
        gateway_env=gateway_env,
        gateway_uvloop=gateway_uvloop,
        priority=priority,
        progress=progress,
        stub_config=stub_config,
    )
    return run


def summarise(runs: Sequence[CapacityRun]) -> list[ProviderSummary]:
    """One line per provider: its capacity, and its costs at the largest step every provider that ran
    carried within bound (else the smallest step they all ran), so CPU and memory compare like for like."""
    ran = [run for run in runs if run.steps]
    common = set.intersection(*({s.calls for s in run.steps} for run in ran)) if ran else set()
    carried = [n for n in common if all(s.within_bound for run in ran for s in run.steps if s.calls == n)]
    at = max(carried, default=min(common, default=0))
    out: list[ProviderSummary] = []
    for run in runs:
        step = next((s for s in run.steps if s.calls == at), None)
        sip = next((f for f in run.sip if f.calls == at), None)
        if step is None:
            out.append(ProviderSummary(run.provider, run.format, run.capacity_calls, refused=run.refused))
            continue
        out.append(
            ProviderSummary(
                provider=run.provider,
                format=run.format,
                capacity_calls=run.capacity_calls,
                at_calls=at,
                gateway_cpu_pct=step.gateway_cpu_pct,
                gateway_cpu_s_per_call_min=step.gateway_cpu_s_per_call_min,
                rss_kb_per_call=step.rss_kb_per_call,
                bot_p99_ms=step.bot_p99_ms,
                bot_immediate_p99_ms=step.bot_immediate_p99_ms,
                within_bound=step.within_bound,
                rtp_jitter_p99_ms=sip.rtp_jitter_p99_ms if sip is not None else math.nan,
                answer_p99_ms=sip.answer_p99_ms if sip is not None else math.nan,
            )
        )
    return out


_HEADER = (
    f"{'calls':>5} {'open':>5} {'gwCPU%':>6} {'s/call-min':>10} {'RSS MB':>7} {'KB/call':>7} "
    f"{'caller p50/p99':>15} {'bot p50/p99':>13} {'imm p99':>7} {'gw own p99 c/b':>15} "
    f"{'appends/expected':>17} {'confirms':>9} {'lag p99':>7} {'loadCPU%':>8} {'steal%':>6}  verdict"
)


def _row(s: StepResult) -> str:
    verdict = "load-limited" if s.load_limited else ("ok" if s.within_bound else "over")
    return (
        f"{s.calls:>5} {s.calls_open:>5} {s.gateway_cpu_pct:>6.1f} {s.gateway_cpu_s_per_call_min:>10.4f} "
        f"{s.rss_mb:>7.1f} {s.rss_kb_per_call:>7.1f} "
        f"{s.caller_p50_ms:>7.2f}/{s.caller_p99_ms:<7.2f} {s.bot_p50_ms:>6.2f}/{s.bot_p99_ms:<6.2f} "
        f"{s.bot_immediate_p99_ms:>7.2f} "
        f"{s.gateway_caller_p99_ms:>7.2f}/{s.gateway_bot_p99_ms:<7.2f} "
        f"{s.appends_received:>8}/{s.appends_expected:<8} {s.marks_echoed:>4}/{s.marks_requested:<4} "
        f"{s.load_lag_p99_ms:>7.2f} {s.load_cpu_pct:>8.1f} {s.steal_pct:>6.1f}  "
        f"{verdict}"
    )


def _sip_row(f: SipFigures) -> str:
    return (
        f"{'':>5} sip: RTP jitter p50/p99 {f.rtp_jitter_p50_ms:.2f}/{f.rtp_jitter_p99_ms:.2f} ms "
        f"({f.rtp_packets} packets, {f.rtp_lost} lost), answer p50/p99 "
        f"{f.answer_p50_ms:.1f}/{f.answer_p99_ms:.1f} ms"
    )


def render(run: CapacityRun) -> str:
    """The printed report of one provider: settings, the table, the capacity, and the hot spots if
    profiled."""
    if run.refused:
        return f"--provider {run.provider}: refused: {run.refused}"
    lines = [
        f"gateway capacity on one core: provider={run.provider} format={run.format} mode={run.mode} "
        f"realtime={run.realtime} pinned={run.pinned} "
        f"(gateway core {GATEWAY_CORE}, load core {LOAD_CORE}) cpus={run.cpu_count} window={run.step_s:g}s "
        f"idle RSS {run.baseline_rss_mb} MB; event loops: gateway {run.gateway_loop}, load {run.load_loop}; "
        f"nice {run.priority}",
        "latencies in ms; caller: frame written -> append upstream; bot: delta sent -> first media out "
        "(imm: deltas whose message did not wait for later audio); confirms: sent/asked",
        _HEADER,
    ]
    sip = {f.calls: f for f in run.sip}
    for step in run.steps:
        lines.append(_row(step))
        if step.calls in sip:
            lines.append(_sip_row(sip[step.calls]))
    if run.sip:
        lines.append(
            "sip: caller = RTP packet sent -> append; bot (imm) = a "
            "reply's first delta -> its first RTP packet, less the wait for the pacer's 20 ms slot; RTP "
            "jitter = |gap - 20 ms| between the gateway's packets (within bound only when its p99 is too)"
        )
    waited = sum(s.bot_waited for s in run.steps)
    if waited:
        matched = sum(s.bot_samples for s in run.steps)
        lines.append(
            f"{waited} of {matched} matched deltas waited by design: {run.provider}'s minimum message size "
            "holds their audio until audio the service sent later fills the message; the verdict uses the "
            "other deltas' p99 (imm)"
        )
    lines.append(
        f"capacity: {run.capacity_calls} concurrent calls with both p99 <= {BOUND_MS:g} ms"
        + ("" if run.capacity_calls else " (no step qualified)")
    )
    if run.hot_spots:
        lines.append(
            f"gateway hot spots at {run.profiled_calls} calls (py-spy; % of busy samples, self / total; "
            f"idle in epoll {run.idle_pct:.1f}% of all samples):"
        )
        lines += [f"  {h.self_pct:5.1f}% {h.total_pct:5.1f}%  {h.function}" for h in run.hot_spots]
    return "\n".join(lines)


def render_summary(summary: Sequence[ProviderSummary]) -> str:
    """The per-provider summary of a `--provider all` run."""
    at = max((s.at_calls for s in summary), default=0)
    ran = [s for s in summary if not s.refused]
    why = "every provider within bound there" if all(s.within_bound for s in ran) else "not all within bound"
    lines = [
        f"summary: capacity per provider (calls within bound); costs at {at} concurrent calls, the step "
        f"all ran ({why}); bot p99 in ms, of all deltas / of those that did not wait by design",
        f"{'provider':<11} {'format':<10} {'capacity':>8} {'gwCPU%':>7} {'s/call-min':>10} {'KB/call':>8} "
        f"{'bot p99 all/imm':>16} {'jitter p99':>10} {'answer p99':>10}  verdict at {at}",
    ]
    for s in summary:
        if s.refused:
            lines.append(f"{s.provider:<11} refused: {s.refused}")
            continue
        lines.append(
            f"{s.provider:<11} {s.format:<10} {s.capacity_calls:>8} {s.gateway_cpu_pct:>7.1f} "
            f"{s.gateway_cpu_s_per_call_min:>10.4f} {s.rss_kb_per_call:>8.1f} "
            f"{s.bot_p99_ms:>7.2f}/{s.bot_immediate_p99_ms:<8.2f} {_opt(s.rtp_jitter_p99_ms):>10} "
            f"{_opt(s.answer_p99_ms):>10}  {'ok' if s.within_bound else 'over'}"
        )
    return "\n".join(lines)


def _opt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _parse_env(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--gateway-env needs KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _legs(text: str) -> tuple[str, ...]:
    if text == "all":
        return LEGS
    legs = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [leg for leg in legs if leg not in LEGS]
    if unknown or not legs:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or text!r}: one or more of {', '.join(LEGS)}")
    return legs


def _parse_format(text: str) -> WireFormat:
    encoding, _, rate = text.partition("/")
    try:
        return WireFormat.of(encoding, int(rate))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _formats(providers: Sequence[str], mode: str, requested: WireFormat | None) -> dict[str, WireFormat]:
    """The format per provider; SystemExit when one named alone cannot run (all: refused ones are skipped)."""
    if requested is not None and len(providers) > 1:
        raise SystemExit("--format needs a single --provider")
    if len(providers) > 1:
        return {}
    try:
        return {providers[0]: leg_format(providers[0], mode, requested)}
    except ValueError as exc:
        raise SystemExit(f"--provider {providers[0]}: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; prints the tables and writes the JSON. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--provider",
        type=_legs,
        default=("twilio",),
        metavar="P[,P...]|all",
        help=f"whose streams the calls are, one or several side by side ({', '.join(LEGS)}; all: every one)",
    )
    parser.add_argument(
        "--format",
        type=_parse_format,
        default=None,
        metavar="ENC/RATE",
        help="the stream's format for a provider with several (e.g. l16/16000; default: its first)",
    )
    parser.add_argument("--steps", default="50,100,200,300,400", help="concurrent calls per step")
    parser.add_argument("--step-s", type=float, default=20.0, help="steady measuring window per step")
    parser.add_argument("--ramp-s", type=float, default=5.0, help="calls are opened over this long")
    parser.add_argument("--settle-s", type=float, default=3.0, help="wait after the ramp before measuring")
    parser.add_argument("--mode", choices=("pcm16", "g711"), default="pcm16", help="the gateway's AUDIO_MODE")
    parser.add_argument("--realtime", choices=("stub", "emulator"), default="stub", help="the realtime side")
    parser.add_argument("--json", type=Path, default=OUT, help="where to write the figures")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the gateway and the load to cores")
    parser.add_argument(
        "--profile", type=float, default=0.0, metavar="S", help="py-spy the gateway for S s at the top step"
    )
    parser.add_argument("--gateway-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--nice", type=int, default=-5, help="nice value for both sides (root only; 0 leaves them alone)"
    )
    parser.add_argument(
        "--gateway-uvloop",
        action="store_true",
        help="run the gateway on uvloop (an experiment; needs uvloop)",
    )
    parser.add_argument(
        "--load-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the load side's event loop (auto: uvloop when installed: a cheaper load side)",
    )
    args = parser.parse_args(argv)
    providers = args.provider
    formats = _formats(providers, args.mode, args.format)
    use_uvloop = args.load_loop == "uvloop" or (args.load_loop == "auto" and uvloop_available())
    if (use_uvloop or args.gateway_uvloop) and not uvloop_available():
        raise SystemExit("uvloop is not installed: pip install uvloop")
    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    steps = [int(x) for x in args.steps.split(",") if x.strip()]
    runs = asyncio.run(
        run_providers(
            providers,
            steps,
            formats=formats,
            step_s=args.step_s,
            ramp_s=args.ramp_s,
            settle_s=args.settle_s,
            mode=args.mode,
            realtime_kind=args.realtime,
            pin=not args.no_pin,
            profile_s=args.profile,
            gateway_env=_parse_env(args.gateway_env),
            gateway_uvloop=args.gateway_uvloop,
            priority=args.nice,
            progress=True,
        )
    )
    print("\n\n".join(render(run) for run in runs))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1:  # one provider: the run itself, as before (now naming its provider and format)
        report: object = asdict(runs[0])
    else:
        summary = summarise(runs)
        print("\n" + render_summary(summary))
        report = {"runs": [asdict(run) for run in runs], "summary": [asdict(s) for s in summary]}
    args.json.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
