"""Runs many simulated calls: concurrency, ramp-up, duration, a weighted scenario mix.

The mix is dealt by smooth weighted round-robin (deterministic: `barge_in:2, dtmf:1` gives
barge_in, dtmf, barge_in, barge_in, dtmf, barge_in, ...), so even a short run follows the weights.
Each run has a fresh random `run_id` (12 hex digits); call N's CallSid is "CA" + the run id + N in hex,
so the calls of two runs (or of two Locust processes) never share a CallSid, and one run's calls are
found in the gateway's logs by the prefix `CA<run id>`.

`run_load(config)` starts calls until `config.calls` have started or `config.duration_s` has passed,
never more than `config.concurrency` at once, the first wave spread over `config.ramp_up_s`. Each
call is one task: (optionally) the signed /twiml webhook, the WebSocket, then its scenario played on
an absolute 20 ms schedule, then hang-up (or the gateway's end that the scenario's `expect_end` waits
for: the bot's hang-up or transfer) and its `CallResult`. A call's failure is recorded as an error
kind, never raised. `embedded_target()` starts an in-process emulator and gateway on loopback;
with it, each call is also matched to its emulator session (by the `x-ms-client-request-id` the
gateway derives from the CallSid) for truncation and lost-audio figures.

With `provider="sip"` (`--sip`) each call is a `SipPhone` (`gateway.loadtest.sip_call`) placed to
`sip_target`: INVITE and RTP instead of the webhook and the WebSocket, the same scenarios and figures;
its Call-ID is the CallSid, so the emulator session is found the same way. `embedded_target(sip=True)`
gives the in-process gateway a SIP listener on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from gateway.emulator import EmulatorConfig, EmulatorServer, EmulatorSession
from gateway.loadtest.caller import CallerCore, PhoneView, StepTimeout, WrongEnd
from gateway.loadtest.client import FRAME_MS, PhoneCall, SharedTicker, monotonic_ms
from gateway.loadtest.measure import (
    CallResult,
    EmulatorFigures,
    MeasuredCall,
    Summary,
    aggregate,
    bot_audio_lost_ms,
    measure_call,
)
from gateway.loadtest.recordings import frames_in, silence_in
from gateway.loadtest.script import Scenario
from gateway.loadtest.sip_call import (
    DEFAULT_PLAYOUT_DELAY_MS,
    GATEWAY_HOLDBACK_MS,
    SipCallError,
    SipPhone,
)
from gateway.loadtest.wires import PROVIDERS, ULAW_8K, WireFrame, make_wire
from gateway.realtime.session import AudioFormat
from gateway.realtime.upstream import CLIENT_REQUEST_ID_HEADER, client_request_id
from gateway.stats import percentile
from gateway.telephony.signature import SIGNATURE_HEADER, compute_signature
from telcodec import BotPath, WireFormat

__all__ = [
    "CallRunner",
    "EmbeddedTarget",
    "LiveStats",
    "RunConfig",
    "RunResult",
    "ScenarioPhone",
    "call_sid",
    "embedded_target",
    "free_rtp_ports",
    "media_url",
    "new_run_id",
    "public_base_url",
    "run_load",
]

SESSION_CLOSE_WAIT_S = 3.0  # after hang-up, how long to wait for the emulator to record the session's end
SID_HEX_DIGITS = 32  # a Twilio SID is two letters and 32 hex digits
RUN_ID_HEX_DIGITS = 12  # 48 random bits: runs started at the same moment on many machines still differ
SIP = "sip"  # the `provider` of SIP calls
CLOSE_SETTLE_S = 0.5  # a send failed on a closed socket: how long the reader may take to see the close


def new_run_id() -> str:
    """A fresh random run id (12 hex digits): the first part of each of the run's CallSids."""
    return secrets.token_hex(RUN_ID_HEX_DIGITS // 2)


def call_sid(run_id: str, index: int) -> str:
    """The CallSid of call `index` of run `run_id`: "CA", the run id, the index in hex; 32 digits in all."""
    return f"CA{run_id}{index:0{SID_HEX_DIGITS - len(run_id)}x}"


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What to run. `calls=None` with a `duration_s`: keep starting calls until the duration is over."""

    url: str
    mix: tuple[tuple[Scenario, float], ...]
    calls: int | None = 10
    concurrency: int = 10
    ramp_up_s: float = 0.0
    duration_s: float | None = None
    seed: int = 0  # recorded with the results: the embedded emulator's seed
    run_id: str = field(default_factory=new_run_id)
    auth_token: str | None = None
    public_url: str | None = None  # the https:// base Twilio would use; default: from `url`
    keep_audio: bool = False
    append_ms: int = 20  # the gateway's APPEND_MS (for the caller-frames-lost allowance)
    open_timeout_s: float = 10.0
    keep_logs: bool = False  # keep each call's mark log and played spans in its result (tests)
    provider: str = "twilio"  # whose media stream the calls play (gateway.loadtest.wires.PROVIDERS)
    media_format: WireFormat | None = None  # the stream's format; default: the provider's
    sip_target: tuple[str, int] | None = None  # provider "sip": the gateway's SIP listener (UDP)
    playout_delay_ms: float = DEFAULT_PLAYOUT_DELAY_MS  # SIP: the simulated phone's jitter buffer

    def __post_init__(self) -> None:
        if self.provider == SIP:
            if self.sip_target is None or self.media_format not in (None, ULAW_8K):
                raise ValueError("SIP calls need a target HOST:PORT and stream PCMU (ulaw/8000)")
        else:
            make_wire(self.provider, "check", fmt=self.media_format)  # ValueError: unknown provider/format
        if self.auth_token is not None and self.provider != "twilio":
            raise ValueError(
                "signed calls (an auth token) are Twilio's: run the other providers' streams against a "
                "gateway without their secret"
            )
        if not self.mix:
            raise ValueError("at least one scenario is needed")
        if self.calls is None and self.duration_s is None:
            raise ValueError("give a number of calls, a duration, or both")
        if self.concurrency < 1 or (self.calls is not None and self.calls < 1):
            raise ValueError("calls and concurrency must be at least 1")
        if not re.fullmatch(r"[0-9a-f]{1,16}", self.run_id):
            raise ValueError(f"run_id {self.run_id!r}: 1 to 16 lowercase hex digits")


@dataclass(slots=True)
class LiveStats:
    """Counters the progress display reads while the run goes on."""

    started: int = 0
    active: int = 0
    done: int = 0
    failed: int = 0
    response_ms: list[float] = field(default_factory=list)

    def response_percentiles(self) -> tuple[float, float] | None:
        """(p50, p95) of response latency so far, or None before the first."""
        if not self.response_ms:
            return None
        return percentile(self.response_ms, 50), percentile(self.response_ms, 95)


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything a report needs."""

    config: dict[str, Any]
    results: tuple[CallResult, ...]
    summary: Summary
    loop_lag_ms: tuple[float, ...]
    started_at: float  # wall clock (epoch seconds)
    run_id: str = ""
    embedded: bool = False  # the target was an in-process gateway bridged to the emulator


@dataclass(frozen=True, slots=True)
class EmbeddedTarget:
    """An in-process gateway (at `url`) bridged to an in-process emulator."""

    url: str
    emulator: EmulatorServer
    append_ms: int
    app: Any = None  # the gateway's aiohttp Application (soak runs read its state for leaks)
    sip: tuple[str, int] | None = None  # its SIP listener (UDP), when started with sip=True
    sip_jitter_ms: int = 40  # its SIP_JITTER_MS

    @property
    def base(self) -> str:
        """The gateway's ws:// base URL (no path)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


def free_rtp_ports(count: int) -> str:
    """RTP_PORTS for a gateway on loopback: `count` ports (even and odd) from a random even port below
    the kernel's ephemeral range whose first port is free now (the gateway skips any taken later)."""
    while True:
        start = random.randrange(20000, 32000 - count) & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", start))
        except OSError:
            continue
        return f"{start}-{start + count - 1}"


@contextlib.asynccontextmanager
async def embedded_target(
    emulator_config: EmulatorConfig | None = None,
    gateway_env: Mapping[str, str] | None = None,
    *,
    sip: bool = False,
) -> AsyncIterator[EmbeddedTarget]:
    """Start the emulator and a gateway bridged to it, both on 127.0.0.1 with free ports; with `sip`, the
    gateway also listens for SIP on a free UDP port (RTP on free ports)."""
    from gateway.app import STATE_KEY, start_on_loopback
    from gateway.config import load_settings

    async with EmulatorServer(emulator_config or EmulatorConfig()) as emulator:
        env = {"LOG_LEVEL": "warning", **(gateway_env or {})}
        env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": "0", "REALTIME_URL": emulator.ga_url()}
        if sip:
            env |= {"SIP_LISTEN": "udp:127.0.0.1:0", "GATEWAY_WORKERS": "1"}
            env.setdefault("RTP_PORTS", free_rtp_ports(1000))
        settings = load_settings(env)
        runner, port = await start_on_loopback(settings)
        bound = runner.app[STATE_KEY].sip_bound if sip else []
        try:
            yield EmbeddedTarget(
                f"ws://127.0.0.1:{port}/media",
                emulator,
                settings.append_ms,
                runner.app,
                sip=("127.0.0.1", bound[0][2]) if bound else None,
                sip_jitter_ms=settings.sip_jitter_ms,
            )
        finally:
            await runner.cleanup()


def media_url(url: str, provider: str) -> str:
    """The media WebSocket URL for `provider`: `url` itself when it names a path, else the gateway's
    route for the provider (`/media` for Twilio, `/P/media` for the others) under the base `url`."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}: one of {', '.join(PROVIDERS)}")
    if urlsplit(url).path not in ("", "/"):
        return url
    return url.rstrip("/") + ("/media" if provider == "twilio" else f"/{provider}/media")


def public_base_url(ws_url: str) -> str:
    """The https/http base a gateway at this ws/wss URL sees itself as (what it signs against)."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}"


def _twiml_stream(text: str) -> tuple[str, dict[str, str]]:
    """The stream URL and `<Parameter>`s of a `<Connect><Stream>` TwiML answer."""
    root = ET.fromstring(text)
    stream = root.find("./Connect/Stream")
    if stream is None or "url" not in stream.attrib:
        raise ValueError("the TwiML has no <Connect><Stream url=...>")
    params = {p.attrib["name"]: p.attrib.get("value", "") for p in stream.findall("Parameter")}
    return stream.attrib["url"], params


class CallRunner:
    """One load run's state: the calls in flight, the results so far. `run()` runs the whole load;
    `run_call()` runs one call (the Locust worker drives it call by call)."""

    def __init__(self, config: RunConfig, emulator: EmulatorServer | None, live: LiveStats) -> None:
        self.config = config
        self.emulator = emulator
        self.live = live
        self.results: list[CallResult] = []
        self.scenarios = [scenario for scenario, _ in config.mix]
        self.weights = [weight for _, weight in config.mix]
        self.credit = [0.0] * len(self.weights)
        self.http: aiohttp.ClientSession | None = None  # set by run(), or by the owner before run_call()
        self.t0_ms = 0.0

    def pick(self) -> Scenario:
        """Smooth weighted round-robin: every prefix of the run follows the weights as closely as it can."""
        total = sum(self.weights)
        for i, weight in enumerate(self.weights):
            self.credit[i] += weight
        best = max(range(len(self.weights)), key=lambda i: self.credit[i])
        self.credit[best] -= total
        return self.scenarios[best]

    async def signed_twiml(self, call_sid: str) -> tuple[str, dict[str, str], float]:
        """POST /twiml as Twilio's webhook would; returns the stream URL, its parameters, the time taken."""
        assert self.http is not None
        assert self.config.auth_token is not None
        base = self.config.public_url or public_base_url(self.config.url)
        form = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "CallSid": call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": "+15550100000",
            "To": "+15550199999",
        }
        signature = compute_signature(self.config.auth_token, base.rstrip("/") + "/twiml", form)
        post_url = public_base_url(self.config.url) + "/twiml"
        started = monotonic_ms()
        async with self.http.post(post_url, data=form, headers={SIGNATURE_HEADER: signature}) as response:
            body = await response.text()
            if response.status != 200:
                raise _CallError(f"twiml_refused:{response.status}", body.strip()[:200])
        url, params = _twiml_stream(body)
        return url, params, monotonic_ms() - started

    async def run_call(self, index: int, scenario: Scenario | None = None) -> CallResult:
        """Run one call (of `scenario`, or the next of the mix) to its end; record and return its result."""
        scenario = scenario if scenario is not None else self.pick()
        sid = call_sid(self.config.run_id, index)
        self.live.started += 1
        self.live.active += 1
        if self.config.provider == SIP:
            return await self.run_sip_call(index, scenario, sid)
        error: str | None = None
        detail = ""
        twiml_ms = None
        call = PhoneCall(
            self.config.url,
            call_sid=sid,
            keep_audio=self.config.keep_audio,
            provider=self.config.provider,
            media_format=self.config.media_format,
        )
        call.open_timeout_s = self.config.open_timeout_s
        try:
            if self.config.auth_token is not None:
                stream_url, params, twiml_ms = await self.signed_twiml(sid)
                call.auth_token, call.signed_url, call.custom_parameters = (
                    self.config.auth_token,
                    stream_url,
                    params,
                )
            else:
                call.custom_parameters = {"CallSid": sid, "From": "+15550100000", "To": "+15550199999"}
            await self.open(call)
            await play_scenario(call, scenario)
        except _CallError as exc:
            error, detail = exc.kind, exc.detail
        except Exception as exc:  # a load generator reports, it does not crash
            error, detail = f"client_error:{type(exc).__name__}", str(exc)[:200]
        finally:
            with contextlib.suppress(Exception):
                await call.hang_up(send_stop=error is None)
        if error is None and call.protocol_errors:
            error, detail = "protocol_error", call.protocol_errors[0]
        padding = call.wire.max_padding
        return await self._record(
            call, index, scenario, error, detail, twiml_ms=twiml_ms, max_padding=padding
        )

    async def run_sip_call(self, index: int, scenario: Scenario, sid: str) -> CallResult:
        """Run one SIP call of `scenario` to its end (the Call-ID is the CallSid `sid`)."""
        assert self.config.sip_target is not None
        error: str | None = None
        detail = ""
        call = SipPhone(
            self.config.sip_target,
            call_sid=sid,
            keep_audio=self.config.keep_audio,
            playout_delay_ms=self.config.playout_delay_ms,
            open_timeout_s=self.config.open_timeout_s,
        )
        try:
            await call.open()
            await play_scenario(call, scenario)
        except SipCallError as exc:
            error, detail = exc.kind, exc.detail
        except _CallError as exc:
            error, detail = exc.kind, exc.detail
        except Exception as exc:  # a load generator reports, it does not crash
            error, detail = f"client_error:{type(exc).__name__}", str(exc)[:200]
        finally:
            with contextlib.suppress(Exception):
                await call.hang_up(send_stop=not call.closed)
        if error is None and call.protocol_errors:
            error, detail = "protocol_error", call.protocol_errors[0]
        rtp = (call.gap_deviations_ms(), call.sequence.lost, call.sequence.reordered)
        # The gateway pads a reply's last packet with up to 159 bytes of silence, and may hold back what
        # its jitter buffer holds of the caller's audio (never appended when the call ends).
        return await self._record(
            call,
            index,
            scenario,
            error,
            detail,
            rtp=rtp,
            max_padding=159,
            holdback_ms=GATEWAY_HOLDBACK_MS,
        )

    async def _record(
        self,
        call: PhoneCall | SipPhone,
        index: int,
        scenario: Scenario,
        error: str | None,
        detail: str,
        *,
        twiml_ms: float | None = None,
        rtp: tuple[list[float], int, int] | None = None,
        max_padding: int = 0,
        holdback_ms: int = 0,
    ) -> CallResult:
        ended = monotonic_ms()
        figures = None
        if self.emulator is not None and call.opened_ms:
            figures = await self.emulator_figures(call, max_padding)
        measured: MeasuredCall = call
        result = measure_call(
            measured,
            index=index,
            scenario=scenario.name,
            run_started_ms=self.t0_ms,
            ended_ms=ended,
            error=error,
            error_detail=detail,
            bot_speaks_first=scenario.bot_speaks_first,
            twiml_ms=twiml_ms,
            emulator=figures,
            append_ms=self.config.append_ms + holdback_ms,
            keep_logs=self.config.keep_logs,
            rtp=rtp,
        )
        self.results.append(result)
        self.live.active -= 1
        self.live.done += 1
        self.live.failed += 0 if result.ok else 1
        self.live.response_ms.extend(result.response_ms)
        return result

    async def open(self, call: PhoneCall) -> None:
        try:
            await call.open()
        except InvalidStatus as exc:
            raise _CallError(f"handshake_refused:{exc.response.status_code}", str(exc)) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise _CallError("connect_failed", f"{type(exc).__name__}: {exc}") from None

    async def emulator_figures(self, call: PhoneCall | SipPhone, max_padding: int) -> EmulatorFigures | None:
        assert self.emulator is not None
        wanted = client_request_id(call.call_sid)
        emulator = self.emulator

        def session() -> EmulatorSession | None:
            for candidate in reversed(emulator.sessions):
                if candidate.headers.get(CLIENT_REQUEST_ID_HEADER) == wanted:
                    return candidate
            return None

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SESSION_CLOSE_WAIT_S):
                await emulator.wait_for(lambda: (s := session()) is not None and s.closed)
        found = session()
        if found is None:
            return None
        # A SIP call hung up while the bot talked never got the rest of that reply: the gateway paces it
        # out in real time, so it was not lost, just not sent yet.
        cut = isinstance(call, SipPhone) and call.cut_by_hang_up
        return emulator_figures(found, bytes(call.received_media), call.format, max_padding, last_cut=cut)

    async def run(self) -> None:
        config = self.config
        self.t0_ms = monotonic_ms()
        slots = asyncio.Semaphore(config.concurrency)
        deadline = None if config.duration_s is None else self.t0_ms + config.duration_s * 1000
        async with aiohttp.ClientSession() as self.http, asyncio.TaskGroup() as group:
            index = 0
            while config.calls is None or index < config.calls:
                if index < config.concurrency and config.ramp_up_s > 0:
                    due = self.t0_ms + config.ramp_up_s * 1000 * index / config.concurrency
                    await asyncio.sleep(max(0.0, (due - monotonic_ms()) / 1000))
                await slots.acquire()
                if deadline is not None and monotonic_ms() >= deadline:
                    slots.release()
                    break
                group.create_task(self._guarded(index, slots))
                index += 1

    async def _guarded(self, index: int, slots: asyncio.Semaphore) -> None:
        try:
            await self.run_call(index)
        finally:
            slots.release()


class _CallError(Exception):
    """Ends one call with an error kind (the aggregation key) and a detail."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail


class ScenarioPhone(PhoneView, Protocol):
    """What `play_scenario` drives: a provider's `PhoneCall` or a `SipPhone`."""

    @property
    def closed(self) -> bool: ...
    @property
    def close_code(self) -> int | None: ...
    @property
    def end_outcome(self) -> str | None: ...
    @property
    def format(self) -> WireFormat: ...
    async def send_caller_frame(
        self, frame: WireFrame, *, voiced: bool = ..., voice_end: bool = ..., interrupt_start: bool = ...
    ) -> None: ...
    async def send_dtmf(self, digit: str) -> None: ...
    async def wait_closed(self, timeout_s: float = ...) -> int | None: ...


async def play_scenario(call: ScenarioPhone, scenario: Scenario) -> None:
    """Play the scenario on an open call: one frame every 20 ms on an absolute schedule (no drift).

    Returns when the script hung up, or when the gateway ended the call as its `expect_end` step expects.
    Raises `_CallError` for a timeout, an end the script did not expect, or a socket the gateway closed
    before the script ended.
    """
    core = CallerCore(scenario, monotonic_ms())
    start = time.monotonic()
    slot = 0
    while True:
        await asyncio.sleep(max(0.0, start + slot * FRAME_MS / 1000 - time.monotonic()))
        if call.closed:
            _judge_end(core, call)
            return
        try:
            frame = core.next_frame(monotonic_ms(), call)
        except StepTimeout as exc:
            raise _CallError(exc.kind, str(exc)) from None
        if frame is None:
            return
        if frame.recording is None:
            audio = silence_in(call.format)
        else:
            audio = frames_in(frame.recording, call.format)[frame.index]
        try:
            await call.send_caller_frame(
                audio,
                voiced=frame.voiced,
                voice_end=frame.voice_end,
                interrupt_start=frame.interrupt_start,
            )
            if frame.dtmf is not None:
                await call.send_dtmf(frame.dtmf)
        except ConnectionClosed:
            with contextlib.suppress(TimeoutError):  # the reader may have yet to see the close
                await call.wait_closed(CLOSE_SETTLE_S)
            _judge_end(core, call)
            return
        slot += 1


def _judge_end(core: CallerCore, call: ScenarioPhone) -> None:
    """The gateway ended the call: return when the script was waiting for that end, else raise."""
    outcome = call.end_outcome or "closed"
    try:
        if core.gateway_ended(outcome):
            return
    except WrongEnd as exc:
        raise _CallError(exc.kind, str(exc)) from None
    code = call.close_code if call.close_code is not None else "none"
    raise _CallError(
        f"closed_by_gateway:{code}", f"the gateway ended the call mid-script (outcome {outcome})"
    )


def _expected(audio: bytes, session_format: AudioFormat | None, wire: WireFormat) -> bytes:
    """What the gateway turns one item's audio into for the phone (a fresh BotPath per item, flushed)."""
    if session_format is AudioFormat.PCM16:
        path = BotPath(wire.encoding, wire.rate)
        return path.process(audio) + path.flush()
    return bytes(audio)  # g711: mu-law passes through (only a mu-law 8 kHz leg may use it)


def emulator_figures(
    session: EmulatorSession,
    received: bytes,
    fmt: WireFormat = ULAW_8K,
    max_padding: int = 0,
    *,
    last_cut: bool = False,
) -> EmulatorFigures:
    """The emulator's side of one call: caller audio it got, bot audio it sent and what of it was lost
    (`received` is the phone's audio in `fmt`, its replies' ends padded with up to `max_padding` bytes
    of silence where the leg pads them; `last_cut`: the call ended while the last reply was still being
    sent to the phone, so that one may have reached it as any prefix)."""
    items = [
        (
            _expected(bytes(item.audio), item.audio_format, fmt),
            item.status == "completed" and item.truncated_ms is None,
        )
        for item in session.assistant_items
    ]
    if last_cut and items:
        items[-1] = (items[-1][0], False)
    lost = bot_audio_lost_ms(
        received,
        items,
        fmt.bytes_per_ms,
        silence=fmt.silence(1)[:1],
        max_padding=max_padding,
    )
    return EmulatorFigures(
        caller_audio_received_ms=session.input_audio_ms,
        bot_audio_sent_ms=sum(fmt.duration_ms(len(expected)) for expected, _ in items),
        bot_audio_lost_ms=lost,
        truncations_ms=tuple(t.audio_end_ms for t in session.truncations),
    )


def _describe(config: RunConfig) -> dict[str, Any]:
    if config.provider == SIP:
        assert config.sip_target is not None
        url, fmt = f"sip:{config.sip_target[0]}:{config.sip_target[1]}", ULAW_8K
    else:
        url, fmt = config.url, config.media_format or make_wire(config.provider, "describe").format
    return {
        "url": url,
        "provider": config.provider,
        "format": str(fmt),
        "calls": config.calls,
        "concurrency": config.concurrency,
        "ramp_up_s": config.ramp_up_s,
        "duration_s": config.duration_s,
        "seed": config.seed,
        "run_id": config.run_id,
        "signed": config.auth_token is not None,
        "public_url": config.public_url,
        "scenarios": {scenario.name: weight for scenario, weight in config.mix},
    }


async def run_load(
    config: RunConfig, *, emulator: EmulatorServer | None = None, live: LiveStats | None = None
) -> RunResult:
    """Run the load; with `emulator` (embedded mode) each call is matched to its emulator session."""
    run = CallRunner(config, emulator, live if live is not None else LiveStats())
    started_at = time.time()
    ticker = SharedTicker.for_running_loop()
    lag_before = len(ticker.lag_ms)
    await run.run()
    duration_s = (monotonic_ms() - run.t0_ms) / 1000
    lag = tuple(ticker.lag_ms[lag_before:])
    results = tuple(sorted(run.results, key=lambda r: r.index))
    summary = aggregate(results, duration_s, lag)
    embedded = emulator is not None
    return RunResult(_describe(config), results, summary, lag, started_at, config.run_id, embedded)
