"""One call: the caller leg bridged to one realtime session.

The only module (with the app and the leg channels) that awaits during a call. Every decision is the
call core's (`gateway/call/core.py`): the leg's channel (`gateway/call/channel.py`: a provider's
WebSocket through its dialect, or a SIP call's RTP) turns the leg into events and carries out commands,
the realtime codec parses and builds the session's messages, and the core turns events into commands
for each side. The bridge moves them between the two sides, stamps time, and counts.

Lifecycle: wait for `start` (bounded), check the per-call stream token when signatures are on, dial
the realtime session, then run both directions in one TaskGroup. Whichever direction ends first
(caller hang-up, upstream close, fatal protocol violation) records the outcome and closes the other
side's socket, so the other direction ends too; an unexpected exception cancels the group. Either way
both sockets are closed and one summary line is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from websockets.exceptions import ConnectionClosed

from gateway.call.channel import CallEnded, LegChannel
from gateway.call.core import (
    Answered,
    AudioDropped,
    BargedIn,
    CallConfig,
    CallCore,
    CallerAudioDropped,
    CallMustEnd,
    DtmfPressed,
    Heard,
    Note,
    ResponseFailed,
    ToolCalled,
    ToolCancelled,
)
from gateway.call.outcome import Outcome
from gateway.call.recorder import CallMeta, CallRecord, RecordSettings, call_events_payload
from gateway.call.tools import (
    END_CALL,
    FILLER_INSTRUCTIONS,
    GOODBYE_INSTRUCTIONS,
    GOODBYE_OUTPUT,
    TRANSFER_CALL,
    ToolBox,
    ToolKind,
    error_output,
    parse_arguments,
)
from gateway.errors import AuthError
from gateway.metrics import GatewayMetrics
from gateway.realtime.events import (
    AudioDelta,
    CancelResponse,
    CreateResponse,
    ErrorReported,
    FunctionCallRequested,
    MalformedEvent,
    RealtimeCommand,
    RealtimeEvent,
    SessionUpdated,
    TruncateItem,
)
from gateway.realtime.link import SessionReconnected, UpstreamLink, UpstreamLostError
from gateway.realtime.session import SessionSettings
from gateway.realtime.upstream import Upstream, UpstreamConnectError, client_request_id
from gateway.telephony.control import CallControl, CallRef, ControlError
from gateway.telephony.control.factory import control_for
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MediaReceived,
    PlayAudio,
    PlayedTo,
    ProtocolViolation,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.provider import Dialect
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER, verify_stream_token
from gateway.webhook import WebhookFailed, post_json

__all__ = ["BridgeSettings", "CallBridge", "CallPlan", "CallServices", "CallSummary", "Leg"]

log = structlog.get_logger(__name__)

# Below this many bytes waiting in a transport a send cannot block (asyncio pauses writers at 64 KiB), so
# the send timeout, which costs a timer per message, is armed only above it.
UNHURRIED_BUFFER_BYTES = 16 * 1024
FRAME_S = 0.02  # how often a deferred tool action checks the playout
INBOUND_TRACKS = frozenset({"inbound", "inbound_track"})  # the caller's audio, as providers name it


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    """What one call needs to know of the gateway's settings (the app builds it from `Settings`)."""

    core: CallConfig
    start_timeout_s: float = 10.0
    caller_idle_timeout_s: float = 10.0
    send_timeout_s: float = 5.0
    max_call_s: float = 7200.0
    max_reconnects: int = 3
    renew_margin_s: float = 60.0
    record: RecordSettings = field(default_factory=RecordSettings)
    call_events_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class CallPlan:
    """What one call runs with, chosen once its leg has started (its bot profile): the realtime
    session's settings (tool definitions included), the core's, the tools offered and where
    `transfer_call` may go."""

    session: SessionSettings
    core: CallConfig
    tools: tuple[str, ...] = ()
    transfer_to: tuple[str, ...] = ()
    profile: str = "default"

    @classmethod
    def offering(
        cls,
        box: ToolBox,
        session: SessionSettings,
        core: CallConfig,
        tools: Sequence[str] | None = None,
        transfer_to: Sequence[str] | None = None,
        profile: str = "default",
    ) -> CallPlan:
        """A plan offering `tools` (None: the box's enabled ones) with `transfer_to` (None: the box's),
        their definitions put in the session."""
        offered = box.enabled if tools is None else tuple(tools)
        targets = box.transfer_to if transfer_to is None else tuple(transfer_to)
        if offered:
            session = dataclasses.replace(session, tools=box.definitions(offered, targets))
        return cls(session, core, offered, targets, profile)


@dataclass(frozen=True, slots=True)
class CallServices:
    """What calls share beyond the settings: the tools, an HTTP client for webhooks and providers' REST
    APIs, the providers' call control, and the choice of each call's plan (None: the settings' own)."""

    tools: ToolBox = field(default_factory=ToolBox)
    http: aiohttp.ClientSession | None = None
    controls: Mapping[str, CallControl] = field(default_factory=dict)
    plan_for: Callable[[CallStarted], CallPlan] | None = None


@dataclass(frozen=True, slots=True)
class Leg:
    """The caller's side of one call: its provider, its dialect, and the secret its stream token is
    checked with (None: no token is required)."""

    provider: str
    dialect: Dialect
    token_secret: str | None = None
    token_required: bool = True  # False: a stream without a token is accepted (one it carries is checked)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def now_ms() -> int:
    """Monotonic milliseconds: the clock every core in a call is fed."""
    return time.monotonic_ns() // 1_000_000


@dataclass(slots=True)
class CallSummary:
    """What the per-call summary line reports."""

    outcome: Outcome = Outcome.COMPLETED
    detail: str = ""
    frames_in: int = 0
    media_out: int = 0
    bot_audio_bytes: int = 0
    barge_ins: int = 0
    dtmf: list[str] = field(default_factory=list)
    tool_calls: int = 0
    profile: str | None = None
    upstream_connect_ms: float | None = None
    session_ready_ms: float | None = None  # provider socket open -> realtime session.updated
    response_latencies_ms: list[float] = field(default_factory=list)
    model_latencies_ms: list[float] = field(default_factory=list)
    upstream_errors: int = 0
    reconnects: int = 0
    flood_dropped: int = 0


class CallBridge:
    """Runs one call from its leg's channel (opened, or about to be); then await `run()`."""

    def __init__(
        self,
        channel: LegChannel,
        leg: Leg,
        settings: BridgeSettings,
        metrics: GatewayMetrics,
        upstream: Upstream,
        services: CallServices | None = None,
    ) -> None:
        self.channel = channel
        self.services = services if services is not None else CallServices()
        self.settings = settings
        self.metrics = metrics
        self.upstream = upstream
        self.leg = leg
        self.dialect = leg.dialect
        self.core: CallCore | None = None  # once the leg has started and its audio format is known
        self.record: CallRecord | None = None  # transcript, recording, call events: with the core
        self.summary = CallSummary()
        # Per-frame metrics, bound once: labels() on every frame showed up in profiles.
        self._m_frames_in = metrics.frames_in
        self._m_frames_out = metrics.frames_out
        self._m_added_caller = metrics.added_latency.labels(direction="caller")
        self._m_added_bot = metrics.added_latency.labels(direction="bot")
        self._m_codec_caller = metrics.codec_time.labels(direction="caller")
        self._m_codec_bot = metrics.codec_time.labels(direction="bot")
        self._link: UpstreamLink | None = None
        self._opened_at = time.perf_counter()
        # When the message being handled arrived, per direction: the start of the added-latency clock.
        self._caller_msg_at = self._upstream_msg_at = 0.0
        self._plan: CallPlan | None = None
        self._call: CallRef | None = None
        self._group: asyncio.TaskGroup | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the call to its end; never raises except CancelledError (shutdown), which it re-raises."""
        self.metrics.active_calls.inc()
        try:
            await self._run()
        except CallEnded as end:
            self._end(end.outcome, end.detail)
        except asyncio.CancelledError:
            self._end(Outcome.SHUTDOWN)
            raise
        except Exception as exc:  # a bug must end this call cleanly, never the process
            log.exception("call_failed")
            self._end(Outcome.ERROR, type(exc).__name__)
        finally:
            await self._close_all()
            self.metrics.active_calls.dec()
            duration = time.perf_counter() - self._opened_at
            self.metrics.calls.labels(outcome=self.summary.outcome.label).inc()
            self.metrics.call_duration.observe(duration)
            self._log_summary(duration)
            if self.record is not None:
                entries = self.record.close(self._summary_fields(), now_ms())
                await self._post_call_events(entries)
            if self.summary.outcome is Outcome.BOT_HANGUP:
                await self._hang_up_at_provider()  # after the close, which it must never delay
            structlog.contextvars.unbind_contextvars(
                "provider", "call_sid", "stream_sid", "upstream_request_id", "bot"
            )

    async def _run(self) -> None:
        call = await self._await_start()
        structlog.contextvars.bind_contextvars(
            provider=self.leg.provider, call_sid=call.call_id, stream_sid=call.stream_id
        )
        self._check_stream_token(call)
        self._call = CallRef(self.leg.provider, call.call_id, call.account_id, call.custom_parameters)
        self._plan = plan = self._plan_for(call)
        self.summary.profile = plan.profile if self.services.plan_for is not None else None
        try:
            self.core = CallCore(plan.core, plan.session.input_format, call.format, self.dialect.playout)
        except ValueError as exc:  # a format this gateway's session cannot carry
            raise CallEnded(Outcome.PROTOCOL_ERROR, str(exc)) from None
        meta = CallMeta.of(self.leg.provider, call)  # also the tools' webhook's call, from and to
        self.record = CallRecord(self.settings.record, meta, self.core, now_ms())
        log.debug("call_started", tracks=list(call.tracks), parameters=sorted(call.custom_parameters))
        await self._dial_unless_hung_up(call.call_id)
        self._core.start()
        self.channel.ready()
        await self._flush_upstream()
        try:
            async with asyncio.timeout(self.settings.max_call_s), asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._caller_loop())
                group.create_task(self._upstream_loop())
                idle_s = self.channel.idle_timeout_s(self.settings.caller_idle_timeout_s)
                if idle_s is not None:
                    group.create_task(self._silence_watchdog(idle_s))
        except* CallEnded as ended:
            first = ended.exceptions[0]
            assert isinstance(first, CallEnded)
            raise first from None
        except* TimeoutError:
            raise CallEnded(
                Outcome.MAX_DURATION, f"call reached MAX_CALL_S={self.settings.max_call_s:g}"
            ) from None

    def _plan_for(self, call: CallStarted) -> CallPlan:
        """This call's plan: its bot profile's, or the settings' own with the enabled tools."""
        if self.services.plan_for is not None:
            return self.services.plan_for(call)
        return CallPlan.offering(self.services.tools, self.upstream.session, self.settings.core)

    def _end(self, outcome: Outcome, detail: str = "") -> None:
        """Record the first reason the call ended; later ones (the other side closing) do not overwrite it."""
        if self.summary.outcome is Outcome.COMPLETED and not self.summary.detail:
            self.summary.outcome, self.summary.detail = outcome, detail

    async def _await_start(self) -> CallStarted:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while True:
            event = await self._receive(
                deadline - time.monotonic(), Outcome.START_TIMEOUT, "no start in time"
            )
            if isinstance(event, CallStarted):
                return event
            if isinstance(event, CallStopped):
                raise CallEnded(Outcome.COMPLETED, "stopped before start")
            if isinstance(event, ProtocolViolation) and event.fatal:
                raise CallEnded(Outcome.PROTOCOL_ERROR, event.reason)

    async def _receive(
        self,
        timeout_s: float | None = None,
        timeout_outcome: Outcome = Outcome.START_TIMEOUT,
        timeout_detail: str = "",
    ) -> TelephonyEvent:
        """The leg's next event; a close, a socket error or a timeout ends the call."""
        try:
            event = await self.channel.receive(timeout_s)
        except TimeoutError:
            raise CallEnded(timeout_outcome, timeout_detail) from None
        self._caller_msg_at = time.perf_counter()
        return event

    def _check_stream_token(self, call: CallStarted) -> None:
        secret = self.leg.token_secret
        if secret is None:
            return
        token = call.custom_parameters.get(STREAM_TOKEN_PARAMETER)
        if token is None and not self.leg.token_required:
            return
        problem = verify_stream_token(secret, call.call_id, token, time.time())
        if problem is not None:
            self.metrics.rejected_requests.labels(route="media", reason="stream token").inc()
            raise CallEnded(Outcome.REJECTED, problem)

    async def _dial_unless_hung_up(self, call_id: str) -> None:
        """Dial the realtime session, unless the caller hangs up first (a SIP CANCEL while ringing): then
        the dial is abandoned, so a call nobody answered costs no session."""
        dialing = asyncio.ensure_future(self._dial(call_id))
        gone = asyncio.ensure_future(self.channel.hung_up())
        try:
            await asyncio.wait((dialing, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not dialing.done():
                dialing.cancel()
                with contextlib.suppress(asyncio.CancelledError, CallEnded):
                    await dialing
        if dialing.cancelled():
            raise CallEnded(Outcome.COMPLETED, f"caller hung up before the bot answered ({gone.result()})")
        dialing.result()

    async def _dial(self, call_id: str) -> None:
        request_id = client_request_id(call_id)
        structlog.contextvars.bind_contextvars(upstream_request_id=request_id)
        # Kept before it opens, so that closing the call closes whatever a cancelled dial left open.
        self._link = link = UpstreamLink(
            self.upstream,
            self.metrics,
            self._core.transcript,
            request_id=request_id,
            max_reconnects=self.settings.max_reconnects,
            renew_margin_s=self.settings.renew_margin_s,
            session=self._plan.session if self._plan is not None else None,
        )
        try:
            elapsed = await link.open()
        except UpstreamConnectError as exc:
            raise CallEnded(Outcome.UPSTREAM_FAILED, str(exc)) from None
        except AuthError as exc:
            self.metrics.upstream_errors.labels(code="auth").inc()
            raise CallEnded(Outcome.UPSTREAM_FAILED, str(exc)) from None
        except ConnectionClosed:
            raise CallEnded(Outcome.UPSTREAM_FAILED, "realtime session closed during set-up") from None
        self.summary.upstream_connect_ms = round(elapsed * 1000, 1)

    async def _close_all(self) -> None:
        if self._link is not None:
            self.summary.reconnects = self._link.reconnects
            with contextlib.suppress(Exception):
                await self._link.close()
        if not self.channel.closed:
            await self.channel.close(self.summary.outcome)

    def _log_summary(self, duration: float) -> None:
        """One line per call, at the outcome's level: a failed call is a warning (an error if ours)."""
        s = self.summary
        latencies = s.response_latencies_ms
        log.log(
            s.outcome.level,
            "call_summary",
            outcome=s.outcome.label,
            detail=s.detail or None,
            duration_s=round(duration, 3),
            frames_in=s.frames_in,
            media_out=s.media_out,
            bot_audio_ms=round(self.core.leg_format.duration_ms(s.bot_audio_bytes)) if self.core else 0,
            barge_ins=s.barge_ins,
            dtmf="".join(s.dtmf) or None,
            tool_calls=s.tool_calls or None,
            profile=s.profile,
            upstream_connect_ms=s.upstream_connect_ms,
            session_ready_ms=s.session_ready_ms,
            responses=len(s.model_latencies_ms),
            response_latency_ms_avg=_mean(latencies),
            response_latency_ms_max=max(latencies) if latencies else None,
            model_latency_ms_avg=_mean(s.model_latencies_ms),
            upstream_errors=s.upstream_errors,
            reconnects=s.reconnects,
            flood_dropped=s.flood_dropped or None,
        )

    def _summary_fields(self) -> dict[str, Any]:
        """The call summary for the transcript's last line and the call-events webhook (JSON only)."""
        s = self.summary
        return {
            "outcome": s.outcome.label,
            "detail": s.detail or None,
            "barge_ins": s.barge_ins,
            "dtmf": "".join(s.dtmf) or None,
            "tool_calls": s.tool_calls,
            "profile": s.profile,
            "responses": len(s.model_latencies_ms),
            "response_latency_ms_avg": _mean(s.response_latencies_ms),
            "reconnects": s.reconnects,
            "upstream_errors": s.upstream_errors,
        }

    async def _post_call_events(self, entries: list[dict[str, Any]]) -> None:
        """POST the ended call to CALL_EVENTS_WEBHOOK_URL, after both sockets closed (bounded by
        WEBHOOK_TIMEOUT_S; never raises)."""
        url, http = self.settings.call_events_url, self.services.http
        if url is None or http is None or self.record is None:
            return
        payload = call_events_payload(self._summary_fields(), entries, self.record.recording_path)
        answer = await post_json(
            http, url, payload, secret=self.settings.webhook_secret, timeout_s=self.settings.webhook_timeout_s
        )
        if isinstance(answer, WebhookFailed):
            log.warning("call_events_webhook_failed", reason=answer.reason)

    @property
    def _rec(self) -> CallRecord:
        assert self.record is not None, "the record exists once the leg has started"
        return self.record

    @property
    def _core(self) -> CallCore:
        assert self.core is not None, "the core exists once the leg has started"
        return self.core

    # -- moving commands -----------------------------------------------------------------------------

    async def _flush(self, received_at: float) -> None:
        """Send what the core decided: the leg's commands first (a clear goes out before the cancel and
        the truncate), then the realtime session's; then count what it noted."""
        await self._flush_leg(received_at)
        await self._flush_upstream()
        self._count(self._core.notes())

    async def _flush_leg(self, received_at: float) -> None:
        first_media = True
        while (command := self._core.next_leg_command(now := now_ms())) is not None:
            if isinstance(command, PlayAudio):  # before the send's await: another loop may pull meanwhile
                self._rec.bot_audio(command.payload, command.end_position, now)
            await self._send_caller(command)
            if isinstance(command, PlayAudio):
                if first_media:
                    first_media = False
                    self._m_added_bot.observe(time.perf_counter() - received_at)
                self.summary.media_out += 1
                self.summary.bot_audio_bytes += len(command.payload)
                self._m_frames_out.inc()
            elif isinstance(command, ClearPlayback):
                self.metrics.barge_in_latency.observe(time.perf_counter() - received_at)

    async def _flush_upstream(self) -> None:
        for command in self._core.realtime_to_send():
            await self._send_upstream(command)
            if isinstance(command, CancelResponse):
                self.metrics.cancels.inc()
            elif isinstance(command, TruncateItem):
                self.metrics.truncates.inc()

    def _count(self, notes: list[Note]) -> None:
        for note in notes:
            match note:
                case AudioDropped():
                    self.metrics.dropped_deltas.inc()
                case Answered(response_ms=response_ms, model_ms=model_ms):
                    self.metrics.model_latency.observe(model_ms / 1000)
                    self.summary.model_latencies_ms.append(model_ms)
                    if response_ms is not None:
                        self.metrics.response_latency.observe(response_ms / 1000)
                        self.summary.response_latencies_ms.append(response_ms)
                case BargedIn(decision=decision):
                    self._rec.barge_in(note)
                    self.summary.barge_ins += 1
                    self.metrics.barge_ins.inc()
                    self.metrics.flushed_audio.inc(decision.flushed_ms / 1000)
                    log.debug(
                        "barge_in",
                        source=decision.source,
                        flushed_ms=decision.flushed_ms,
                        truncate_ms=decision.truncated.audio_end_ms if decision.truncated else None,
                        cancelled=list(decision.cancelled_response_ids),
                    )
                case CallerAudioDropped():
                    self.summary.flood_dropped += 1
                    self.metrics.dropped_frames.labels(reason="flood").inc()
                case DtmfPressed(digit=digit):
                    self._rec.dtmf(digit, now_ms())
                    self.summary.dtmf.append(digit)
                    self.metrics.dtmf.inc()
                    log.debug("dtmf", digit=digit)
                case ResponseFailed(response_id=response_id, reason=reason):
                    self.metrics.upstream_errors.labels(code="response_failed").inc()
                    log.warning("response_failed", response_id=response_id, reason=reason)
                case CallMustEnd(outcome=outcome, detail=detail):
                    raise CallEnded(outcome, detail)
                case ToolCalled(call=call):
                    self._rec.tool_call(call.name, call.arguments, call.call_id, now_ms())
                    self._on_tool_call(call)
                case Heard(call=call):
                    self._on_heard(call)
                case ToolCancelled(call=call):
                    self.metrics.tool_calls.labels(tool=self._tool_label(call.name), result="cancelled").inc()
                    log.info("tool_cancelled", tool=call.name, reason="the caller interrupted")

    # -- tools ---------------------------------------------------------------------------------------

    def _tool_label(self, name: str) -> str:
        """A metric label for a tool: its name when it is one this call was offered (bounded), else
        "unknown", so a model inventing names cannot grow the label set."""
        return name if self._plan is not None and name in self._plan.tools else "unknown"

    def _on_tool_call(self, call: FunctionCallRequested) -> None:
        """Start a tool call: answer at once what can be (unknown tools, bad arguments), defer the
        actions that wait until the caller has heard the bot out, and run the webhook's in a task."""
        assert self._plan is not None
        self.summary.tool_calls += 1
        kind = self.services.tools.kind(call.name, self._plan.tools)
        log.info("tool_called", tool=call.name, kind=kind.value, tool_call_id=call.call_id)
        now = now_ms()
        if kind is ToolKind.UNKNOWN:
            self._tool_done(call, error_output(f"there is no tool named {call.name}"), "unknown")
        elif kind is ToolKind.END_CALL:
            self._core.act_when_heard(call.call_id, now, goodbye=(GOODBYE_OUTPUT, GOODBYE_INSTRUCTIONS))
            self._spawn(self._watch_playout())
        elif kind is ToolKind.TRANSFER:
            problem = self._transfer_problem(call)
            if problem is not None:
                self._tool_done(call, error_output(problem), "refused")
            else:
                self._core.act_when_heard(call.call_id, now)
                self._spawn(self._watch_playout())
        else:
            self._spawn(self._run_webhook_tool(call))

    async def _watch_playout(self) -> None:
        """While a deferred action waits, look every frame whether the caller has heard the bot out:
        the caller's own frames usually tell the core, but a leg may fall silent (hold, a dead phone)."""
        while self._core.acting_when_heard:
            await asyncio.sleep(FRAME_S)
            self._core.poll_tools(now_ms())
            await self._flush(time.perf_counter())

    def _transfer_problem(self, call: FunctionCallRequested) -> str | None:
        assert self._plan is not None
        arguments = parse_arguments(call.arguments)
        if isinstance(arguments, str):
            return arguments
        destination = arguments.get("destination")
        if destination not in self._plan.transfer_to:
            return f"transfer_call may only go to one of: {', '.join(self._plan.transfer_to)}"
        try:
            control_for(self.services.controls, self.leg.provider)
        except ControlError as exc:
            return str(exc)
        return None

    def _on_heard(self, call: FunctionCallRequested) -> None:
        """The caller heard the bot's last words before a deferred action: hang up, or transfer."""
        if call.name == END_CALL:
            self.metrics.tool_calls.labels(tool=END_CALL, result="ok").inc()
            raise CallEnded(Outcome.BOT_HANGUP, "the bot ended the call")
        self._spawn(self._transfer(call))

    def _spawn(self, work: Any) -> None:
        assert self._group is not None, "tools run while both directions do"
        self._group.create_task(work)

    def _tool_done(self, call: FunctionCallRequested, output: str, result: str) -> None:
        """Hand a tool's output to the core (the flush that follows sends it)."""
        self.metrics.tool_calls.labels(tool=self._tool_label(call.name), result=result).inc()
        level = log.info if result == "ok" else log.warning
        level("tool_result", tool=call.name, result=result, tool_call_id=call.call_id)
        self._core.tool_result(call.call_id, output, now_ms())
        self._rec.tool_result(call.call_id, output, now_ms())

    async def _run_webhook_tool(self, call: FunctionCallRequested) -> None:
        """The operator's tool over the webhook; a filler response meanwhile when it is slow."""
        box = self.services.tools
        if self.services.http is None:
            output, result = error_output("tools are not available"), "error"
        else:
            started = time.perf_counter()
            running = asyncio.ensure_future(box.run_webhook(self.services.http, call, self._tool_context()))
            if box.filler_ms:
                done, _ = await asyncio.wait((running,), timeout=box.filler_ms / 1000)
                if not done and self._core.tool_filler(call.call_id, FILLER_INSTRUCTIONS):
                    await self._flush(time.perf_counter())
            output, answered = await running
            self.metrics.tool_latency.observe(time.perf_counter() - started)
            result = "ok" if answered else "error"
        self._tool_done(call, output, result)
        await self._flush(time.perf_counter())

    def _tool_context(self) -> dict[str, Any]:
        """What the webhook is told of the call besides the tool and its arguments."""
        assert self._plan is not None
        meta = self._rec.meta
        return {
            "call_id": meta.call_id,
            "provider": meta.provider,
            "from": meta.caller,
            "to": meta.callee,
            "profile": self._plan.profile,
        }

    async def _transfer(self, call: FunctionCallRequested) -> None:
        """Ask the leg's provider (or the SIP peer) to transfer; success ends the call `transferred`,
        a failure tells the model, and the call goes on."""
        control = self.services.controls[self.leg.provider]
        assert self._call is not None
        arguments = parse_arguments(call.arguments)
        assert isinstance(arguments, dict)  # checked when the call came
        destination = str(arguments["destination"])
        try:
            await control.transfer(self._call, destination)
        except ControlError as exc:
            self._tool_done(call, error_output(f"the transfer failed: {exc}"), "error")
            await self._flush(time.perf_counter())
            return
        self.metrics.tool_calls.labels(tool=TRANSFER_CALL, result="ok").inc()
        raise CallEnded(Outcome.TRANSFERRED, f"transferred to {destination}")

    async def _hang_up_at_provider(self) -> None:
        """After the bot hung up and the leg is closed: the provider's REST hang-up, where configured."""
        control = self.services.controls.get(self.leg.provider)
        if control is None or self._call is None:
            return
        try:
            await control.hang_up(self._call)
        except ControlError as exc:
            log.warning("provider_hangup_failed", reason=str(exc))

    # -- caller -> upstream --------------------------------------------------------------------------

    async def _caller_loop(self) -> None:
        while True:
            event = await self._receive()
            await self._on_telephony(event)
            await self._flush(self._caller_msg_at)

    async def _silence_watchdog(self, idle_s: float) -> None:
        """End the call when the provider sends nothing for CALLER_IDLE_TIMEOUT_S (Twilio streams 50 frames
        a second, silence included). One timer per call instead of one per message."""
        while True:
            await asyncio.sleep(idle_s / 4)
            if time.perf_counter() - self._caller_msg_at > idle_s:
                raise CallEnded(Outcome.CALLER_TIMEOUT, f"no message from the provider for {idle_s:g}s")

    async def _on_telephony(self, event: TelephonyEvent) -> None:
        match event:
            case MediaReceived(track=track) if track not in INBOUND_TRACKS:
                # A provider streaming both tracks would feed the bot its own voice: only the caller's.
                self.metrics.dropped_frames.labels(reason="not_inbound").inc()
            case MediaReceived(payload=payload):
                self.summary.frames_in += 1
                self._m_frames_in.inc()
                now = now_ms()
                await self._renew_if_due(now)
                started = time.perf_counter()
                self._core.receive_caller_audio(payload, now)
                self._m_codec_caller.observe(time.perf_counter() - started)
                self._rec.caller_audio(payload, now)
                if self._core.clear_pending:  # the local detector barged in: the clear goes out first
                    await self._flush_leg(started)  # timed from the frame reaching the detector
                if self._core.realtime_pending():
                    await self._flush_upstream()
                    self._m_added_caller.observe(time.perf_counter() - self._caller_msg_at)
            case PlayedTo(position=position):
                now = now_ms()
                self._rec.tick(now)  # the recording samples playback before the tracker re-anchors
                self._core.receive_played_to(position, now)
            case DtmfReceived(digit=digit):
                self._core.receive_dtmf(digit, now_ms())
            case CallStopped():
                raise CallEnded(Outcome.COMPLETED, "caller hung up")
            case ProtocolViolation(reason=reason, fatal=fatal):
                self.metrics.protocol_violations.labels(peer="provider").inc()
                log.warning("provider_protocol_violation", reason=reason, fatal=fatal)
                if fatal:
                    raise CallEnded(Outcome.PROTOCOL_ERROR, reason)
            case _:
                pass

    async def _renew_if_due(self, now: int) -> None:
        """Replace a session about to expire while the bot is quiet, so no sentence is cut off."""
        link = self._link
        if link is not None and link.renewal_due(time.time()) and self._core.quiet(now):
            log.info("upstream_renewing", expires_at=link.expires_at)
            await link.renew()

    async def _send_upstream(self, command: RealtimeCommand) -> None:
        assert self._link is not None
        if self._link.write_buffer_size() < UNHURRIED_BUFFER_BYTES:
            await self._link.send(command)  # cannot block: the transport is far below its high-water mark
            return
        try:
            async with asyncio.timeout(self.settings.send_timeout_s):
                await self._link.send(command)
        except TimeoutError:
            raise CallEnded(Outcome.UPSTREAM_FAILED, "realtime session stopped reading") from None

    # -- upstream -> caller --------------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        assert self._link is not None
        try:
            async for event in self._link.events():
                self._upstream_msg_at = time.perf_counter()
                await self._on_realtime(event)
                await self._flush(self._upstream_msg_at)
        except UpstreamLostError as lost:
            raise CallEnded(Outcome.UPSTREAM_CLOSED, str(lost)) from None
        raise CallEnded(Outcome.UPSTREAM_CLOSED, "realtime session ended")

    async def _on_realtime(self, event: RealtimeEvent | SessionReconnected) -> None:
        match event:
            case SessionReconnected(carried_audio_ms=carried_ms):
                if self._core.session_replaced(carried_ms, now_ms()):
                    log.debug("response_requested_after_reconnect")
            case ErrorReported():
                self._on_error(event)
            case SessionUpdated():
                if self.summary.session_ready_ms is None:
                    self.summary.session_ready_ms = round((time.perf_counter() - self._opened_at) * 1000, 1)
            case MalformedEvent(reason=reason):
                self.metrics.protocol_violations.labels(peer="realtime").inc()
                log.warning("realtime_malformed_event", reason=reason)
            case AudioDelta():
                started = time.perf_counter()
                self._core.receive_realtime(event, now_ms())
                self._m_codec_bot.observe(time.perf_counter() - started)
            case _:
                self._core.receive_realtime(event, now_ms())
        self._rec.realtime(event, now_ms())

    async def _send_caller(self, command: TelephonyCommand) -> None:
        await self.channel.send(command)

    def _on_error(self, err: ErrorReported) -> None:
        kind = self._core.classify_error(err)
        assert self._link is not None
        failed = self._link.sent_command(err.event_id)
        if isinstance(failed, CreateResponse):
            self._core.response_refused(now_ms())
        command = type(failed).__name__ if failed is not None else "unknown"
        self.metrics.command_errors.labels(command=command, code=err.code or "none").inc()
        if kind != "other":
            self.metrics.benign_races.labels(kind=kind).inc()
            log.debug("realtime_benign_race", kind=kind, code=err.code, message=err.message)
            return
        self.summary.upstream_errors += 1
        self.metrics.upstream_errors.labels(code=err.code or err.error_type or "unknown").inc()
        log.warning(
            "realtime_error",
            code=err.code,
            error_type=err.error_type,
            message=err.message,
            failed_command=command,
        )
