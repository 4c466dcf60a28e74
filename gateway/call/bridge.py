"""One call: the provider's WebSocket bridged to one realtime session.

The only module (with the app) that awaits. Everything it decides comes from sans-I/O cores: the
Twilio dialect parses and serializes, the realtime codec encodes and decodes, the playback tracker
and barge-in controller decide what was heard and what to send on an interruption, `CallAudio`
converts audio. The bridge moves bytes between sockets, stamps time, and counts.

Lifecycle: wait for `start` (bounded), check the per-call stream token when signatures are on, dial
the realtime session, then run both directions in one TaskGroup. Whichever direction ends first
(caller hang-up, upstream close, fatal protocol violation) records the outcome and closes the other
side's socket, so the other direction ends too; an unexpected exception cancels the group. Either way
both sockets are closed and one summary line is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from websockets.exceptions import ConnectionClosed

from gateway.call.audio import PROVIDER_RATE, CallAudio
from gateway.call.bargein import BargeInController, BargeInMode, CancelPolicy, SpeechDecision, Verdict
from gateway.call.link import SessionReconnected, UpstreamLink, UpstreamLostError
from gateway.call.localvad import LocalVad
from gateway.call.outcome import Outcome
from gateway.call.playback import PlaybackTracker
from gateway.call.ratelimit import FrameBudget
from gateway.call.timeline import CallerTimeline
from gateway.call.transcript import Transcript
from gateway.config import Settings
from gateway.errors import AuthError
from gateway.metrics import GatewayMetrics
from gateway.realtime.events import (
    AppendAudio,
    AudioDelta,
    AudioDone,
    CancelResponse,
    CreateResponse,
    ErrorReported,
    MalformedEvent,
    RealtimeCommand,
    RealtimeEvent,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    TruncateItem,
    UserTranscript,
)
from gateway.realtime.upstream import Upstream, UpstreamConnectError, client_request_id
from gateway.sockets import close_or_abort
from gateway.telephony.events import (
    CallStarted,
    CallStopped,
    ClearPlayback,
    DtmfReceived,
    MarkPlayed,
    MediaReceived,
    ProtocolViolation,
    SendMedia,
    TelephonyCommand,
    TelephonyEvent,
)
from gateway.telephony.streamtoken import STREAM_TOKEN_PARAMETER, verify_stream_token
from gateway.telephony.twilio import TwilioDialect
from telcodec import ulaw_decode

__all__ = ["CallBridge", "CallSummary"]

log = structlog.get_logger(__name__)

FRAME_MS = 20
PROVIDER_CLOSE_TIMEOUT_S = 2.0
# Below this many bytes waiting in a transport a send cannot block (asyncio pauses writers at 64 KiB), so
# the send timeout, which costs a timer per message, is armed only above it.
UNHURRIED_BUFFER_BYTES = 16 * 1024
FRAMES_PER_S = 1000 // FRAME_MS
FLOOD_BURST_FRAMES = 3 * FRAMES_PER_S  # Twilio may deliver a few seconds of backlog after a stall
FLOOD_LIMIT_FRAMES = 10 * FRAMES_PER_S  # dropping more than 10 s of excess audio: a hostile client
PROVIDER_BYTES_PER_MS = PROVIDER_RATE // 1000  # mu-law: one byte per sample


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


def now_ms() -> int:
    """Monotonic milliseconds: the clock every core in a call is fed."""
    return time.monotonic_ns() // 1_000_000


class _CallEnded(Exception):  # noqa: N818 - ends a call on purpose; not an error
    """Raised inside the call to end it on purpose, with its outcome and the cause."""

    def __init__(self, outcome: Outcome, detail: str = "") -> None:
        super().__init__(outcome, detail)
        self.outcome = outcome
        self.detail = detail


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
    upstream_connect_ms: float | None = None
    session_ready_ms: float | None = None  # provider socket open -> realtime session.updated
    response_latencies_ms: list[float] = field(default_factory=list)
    model_latencies_ms: list[float] = field(default_factory=list)
    upstream_errors: int = 0
    reconnects: int = 0
    flood_dropped: int = 0


class CallBridge:
    """Runs one call from the provider's WebSocket; construct after `prepare`, then await `run()`."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        settings: Settings,
        metrics: GatewayMetrics,
        upstream: Upstream,
        transport: asyncio.Transport | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport  # the provider's TCP connection, to abort when a close cannot finish
        self.settings = settings
        self.metrics = metrics
        self.upstream = upstream
        self.dialect = TwilioDialect()
        self.audio = CallAudio(upstream.session.input_format)
        self.tracker = PlaybackTracker(PROVIDER_RATE)
        self.bargein = BargeInController(
            self.tracker,
            mode=BargeInMode(settings.barge_in),
            cancel_policy=CancelPolicy(settings.cancel_policy),
            server_interrupts=settings.vad_interrupt_response,
        )
        self.summary = CallSummary()
        # Per-frame metrics, bound once: labels() on every frame showed up in profiles.
        self._m_frames_in = metrics.frames_in
        self._m_frames_out = metrics.frames_out
        self._m_codec_caller = metrics.codec_time.labels(direction="caller")
        self._m_codec_bot = metrics.codec_time.labels(direction="bot")
        self._m_added_caller = metrics.added_latency.labels(direction="caller")
        self._m_added_bot = metrics.added_latency.labels(direction="bot")
        self.transcript = Transcript()
        self._link: UpstreamLink | None = None
        self._budget = FrameBudget(FRAMES_PER_S, FLOOD_BURST_FRAMES)
        self._opened_at = time.perf_counter()
        self._append_bytes = upstream.session.input_format.bytes_per_ms * settings.append_ms
        self._append_buffer = bytearray()
        self._chunk_bytes = PROVIDER_BYTES_PER_MS * settings.playout_chunk_ms
        # Response latency runs from when the caller stopped talking: the arrival of the frame holding the
        # end of speech, found through the timeline from speech_stopped's position in the input buffer.
        self.timeline = CallerTimeline()
        self._speech_ended_at: float | None = None
        self._speech_stopped_at: float | None = None  # when speech_stopped arrived (model latency)
        # When the message being handled arrived, per direction: the start of the added-latency clock.
        self._caller_msg_at = self._upstream_msg_at = 0.0
        self._local_vad = LocalVad(PROVIDER_RATE) if settings.barge_in != "server" else None
        self._current_item: str | None = None
        self._turn_owed = False  # the caller finished a turn and no response has started since

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the call to its end; never raises except CancelledError (shutdown), which it re-raises."""
        self.metrics.active_calls.inc()
        try:
            await self._run()
        except _CallEnded as end:
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
            structlog.contextvars.unbind_contextvars("call_sid", "stream_sid", "upstream_request_id")

    async def _run(self) -> None:
        call = await self._await_start()
        structlog.contextvars.bind_contextvars(call_sid=call.call_id, stream_sid=call.stream_id)
        self._check_stream_token(call)
        log.debug("call_started", tracks=list(call.tracks), parameters=sorted(call.custom_parameters))
        self._link = await self._dial(call.call_id)
        if self.upstream.session.greeting:
            await self._send_upstream(CreateResponse(instructions=self.upstream.session.greeting))
        try:
            async with asyncio.timeout(self.settings.max_call_s), asyncio.TaskGroup() as group:
                group.create_task(self._caller_loop())
                group.create_task(self._upstream_loop())
                group.create_task(self._silence_watchdog())
        except* _CallEnded as ended:
            first = ended.exceptions[0]
            assert isinstance(first, _CallEnded)
            raise first from None
        except* TimeoutError:
            raise _CallEnded(
                Outcome.MAX_DURATION, f"call reached MAX_CALL_S={self.settings.max_call_s:g}"
            ) from None

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
                raise _CallEnded(Outcome.COMPLETED, "stopped before start")
            if isinstance(event, ProtocolViolation) and event.fatal:
                raise _CallEnded(Outcome.PROTOCOL_ERROR, event.reason)

    async def _receive(
        self,
        timeout_s: float | None = None,
        timeout_outcome: Outcome = Outcome.START_TIMEOUT,
        timeout_detail: str = "",
    ) -> TelephonyEvent:
        """The provider's next message as an event; a close, a socket error or a timeout ends the call."""
        try:
            # Without a timeout aiohttp arms no timer; the call loop's silence check is the watchdog.
            msg = await self.ws.receive(timeout=None if timeout_s is None else max(0.001, timeout_s))
        except TimeoutError:
            raise _CallEnded(timeout_outcome, timeout_detail) from None
        self._caller_msg_at = time.perf_counter()
        if msg.type is WSMsgType.TEXT:
            return self.dialect.receive_text(msg.data)
        if msg.type is WSMsgType.BINARY:
            return self.dialect.receive_bytes(msg.data)
        if self.ws.close_code == WSCloseCode.MESSAGE_TOO_BIG:
            raise _CallEnded(Outcome.PROTOCOL_ERROR, "message over the size limit")
        if msg.type is WSMsgType.ERROR:
            raise _CallEnded(Outcome.PROTOCOL_ERROR, f"provider socket error: {self.ws.exception()}")
        raise _CallEnded(Outcome.COMPLETED, f"caller closed the socket (code {self.ws.close_code})")

    def _check_stream_token(self, call: CallStarted) -> None:
        secret = self.settings.twilio_auth_token
        if secret is None:
            return
        token = call.custom_parameters.get(STREAM_TOKEN_PARAMETER)
        problem = verify_stream_token(secret, call.call_id, token, time.time())
        if problem is not None:
            self.metrics.rejected_requests.labels(route="media", reason="stream token").inc()
            raise _CallEnded(Outcome.REJECTED, problem)

    async def _dial(self, call_id: str) -> UpstreamLink:
        request_id = client_request_id(call_id)
        structlog.contextvars.bind_contextvars(upstream_request_id=request_id)
        link = UpstreamLink(
            self.upstream,
            self.metrics,
            self.transcript,
            request_id=request_id,
            max_reconnects=self.settings.upstream_max_reconnects,
            renew_margin_s=self.settings.upstream_renew_margin_s,
        )
        try:
            elapsed = await link.open()
        except UpstreamConnectError as exc:
            raise _CallEnded(Outcome.UPSTREAM_FAILED, str(exc)) from None
        except AuthError as exc:
            self.metrics.upstream_errors.labels(code="auth").inc()
            raise _CallEnded(Outcome.UPSTREAM_FAILED, str(exc)) from None
        except ConnectionClosed:
            raise _CallEnded(Outcome.UPSTREAM_FAILED, "realtime session closed during set-up") from None
        self.summary.upstream_connect_ms = round(elapsed * 1000, 1)
        return link

    async def _close_all(self) -> None:
        if self._link is not None:
            self.summary.reconnects = self._link.reconnects
            with contextlib.suppress(Exception):
                await self._link.close()
        if not self.ws.closed:
            await self._close_provider(self.summary.outcome.close_code)

    async def _close_provider(self, code: int) -> None:
        """Close the provider's socket; a peer that does not read cannot hold the close: abort after 2 s."""
        closing = self.ws.close(code=code, message=self.summary.outcome.label.encode())
        await close_or_abort(closing, self.transport, PROVIDER_CLOSE_TIMEOUT_S)

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
            bot_audio_ms=s.bot_audio_bytes // PROVIDER_BYTES_PER_MS,
            barge_ins=s.barge_ins,
            dtmf="".join(s.dtmf) or None,
            upstream_connect_ms=s.upstream_connect_ms,
            session_ready_ms=s.session_ready_ms,
            responses=len(latencies),
            response_latency_ms_avg=_mean(latencies),
            response_latency_ms_max=max(latencies) if latencies else None,
            model_latency_ms_avg=_mean(s.model_latencies_ms),
            upstream_errors=s.upstream_errors,
            reconnects=s.reconnects,
            flood_dropped=s.flood_dropped or None,
        )

    # -- caller -> upstream --------------------------------------------------------------------------

    async def _caller_loop(self) -> None:
        while True:
            await self._on_telephony(await self._receive())

    async def _silence_watchdog(self) -> None:
        """End the call when the provider sends nothing for CALLER_IDLE_TIMEOUT_S (Twilio streams 50 frames
        a second, silence included). One timer per call instead of one per message."""
        idle_s = self.settings.caller_idle_timeout_s
        while True:
            await asyncio.sleep(idle_s / 4)
            if time.perf_counter() - self._caller_msg_at > idle_s:
                raise _CallEnded(Outcome.CALLER_TIMEOUT, f"no message from the provider for {idle_s:g}s")

    async def _on_telephony(self, event: TelephonyEvent) -> None:
        match event:
            case MediaReceived(payload=payload):
                await self._on_caller_media(payload)
            case MarkPlayed(name=name):
                self.tracker.on_mark_played(name, now_ms())
            case DtmfReceived(digit=digit):
                self.summary.dtmf.append(digit)
                self.metrics.dtmf.inc()
                log.debug("dtmf", digit=digit)
            case CallStopped():
                raise _CallEnded(Outcome.COMPLETED, "caller hung up")
            case ProtocolViolation(reason=reason, fatal=fatal):
                self.metrics.protocol_violations.labels(peer="provider").inc()
                log.warning("provider_protocol_violation", reason=reason, fatal=fatal)
                if fatal:
                    raise _CallEnded(Outcome.PROTOCOL_ERROR, reason)
            case _:
                pass

    async def _on_caller_media(self, payload: bytes) -> None:
        self.summary.frames_in += 1
        self._m_frames_in.inc()
        now = now_ms()
        if not self._budget.allow(now):
            self.summary.flood_dropped += 1
            self.metrics.dropped_frames.labels(reason="flood").inc()
            if self._budget.dropped > FLOOD_LIMIT_FRAMES:
                raise _CallEnded(Outcome.FLOOD, "caller audio far faster than real time")
            return
        await self._renew_if_due(now)
        started = time.perf_counter()
        converted = self.audio.caller_to_session(payload)
        self._m_codec_caller.observe(time.perf_counter() - started)
        if self._local_vad is not None:
            await self._detect_local_speech(payload)
        self._append_buffer += converted
        self.timeline.on_audio(len(payload) / PROVIDER_BYTES_PER_MS, self._caller_msg_at)
        # Appends are whole multiples of APPEND_MS; the resampler's held-back delay waits for the next.
        ready = len(self._append_buffer) - len(self._append_buffer) % self._append_bytes
        if ready:
            chunk = bytes(self._append_buffer[:ready])
            del self._append_buffer[:ready]
            await self._send_upstream(AppendAudio(chunk))
            self._m_added_caller.observe(time.perf_counter() - self._caller_msg_at)

    async def _detect_local_speech(self, ulaw: bytes) -> None:
        assert self._local_vad is not None
        now = now_ms()
        if self._local_vad.on_frame(ulaw_decode(ulaw), bot_audible=self.tracker.is_audible(now)):
            decision = self.bargein.on_local_speech(now)
            if decision.verdict is Verdict.BARGE_IN:
                await self._apply_barge_in(decision, time.perf_counter())

    async def _renew_if_due(self, now: int) -> None:
        """Replace a session about to expire while the bot is quiet, so no sentence is cut off."""
        link = self._link
        if link is not None and link.renewal_due(time.time()) and self.bargein.quiet(now):
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
            raise _CallEnded(Outcome.UPSTREAM_FAILED, "realtime session stopped reading") from None

    # -- upstream -> caller --------------------------------------------------------------------------

    async def _upstream_loop(self) -> None:
        assert self._link is not None
        try:
            async for event in self._link.events():
                self._upstream_msg_at = time.perf_counter()
                await self._on_realtime(event)
        except UpstreamLostError as lost:
            raise _CallEnded(Outcome.UPSTREAM_CLOSED, str(lost)) from None
        raise _CallEnded(Outcome.UPSTREAM_CLOSED, "realtime session ended")

    async def _on_realtime(self, event: RealtimeEvent | SessionReconnected) -> None:
        now = now_ms()
        match event:
            case SessionReconnected():
                # The old session's responses died with it; audio already queued at the provider plays on.
                owed = self._turn_owed or self.bargein.responding
                self.timeline.reset(event.carried_audio_ms)
                self.bargein.on_session_lost(now)
                self.audio.drop_bot_audio()
                self._current_item = None
                if owed:  # the caller is waiting for an answer the old session never finished
                    self._turn_owed = False
                    await self._send_upstream(CreateResponse())
                    log.debug("response_requested_after_reconnect")
            case AudioDelta():
                await self._on_audio_delta(event, now)
            case AudioDone():
                generation = self.tracker.generation
                self.bargein.on_audio_done(event, now)
                if event.item_id == self._current_item:
                    await self._send_bot_audio(event.item_id, self.audio.end_bot_item(), generation)
                    self._current_item = None
            case SpeechStarted():
                await self._on_speech_started(now)
            case SpeechStopped(audio_end_ms=audio_end_ms):
                self._speech_stopped_at = time.perf_counter()
                # audio_end_ms includes VAD's silence window; the caller stopped that much earlier.
                silence_ms = self.upstream.session.turn_detection.silence_duration_ms
                self._speech_ended_at = self.timeline.arrival_of(audio_end_ms - silence_ms)
                self._turn_owed = self.upstream.session.turn_detection.create_response
            case ResponseCreated():
                self._turn_owed = False
                self.bargein.on_response_created(event, now)
            case ResponseDone():
                self.bargein.on_response_done(event, now)
                if event.status == "failed":
                    self.metrics.upstream_errors.labels(code="response_failed").inc()
                    log.warning("response_failed", response_id=event.response_id, reason=event.reason)
            case ErrorReported():
                self._on_error(event)
            case TranscriptDone(item_id=item_id, transcript=text):
                self.transcript.on_assistant(item_id, text)
            case UserTranscript(item_id=item_id, transcript=text):
                self.transcript.on_user(item_id, text)
            case SessionUpdated() | SessionCreated():
                if self.summary.session_ready_ms is None and isinstance(event, SessionUpdated):
                    self.summary.session_ready_ms = round((time.perf_counter() - self._opened_at) * 1000, 1)
            case MalformedEvent(reason=reason):
                self.metrics.protocol_violations.labels(peer="realtime").inc()
                log.warning("realtime_malformed_event", reason=reason)
            case _:
                pass

    async def _on_audio_delta(self, event: AudioDelta, now: int) -> None:
        generation = self.tracker.generation
        samples = self.audio.session_samples(event.audio)
        if not self.bargein.on_audio_delta(event, samples, self.audio.session_rate, now):
            self.metrics.dropped_deltas.inc()
            return
        if self._current_item not in (None, event.item_id):
            # A new item without the previous one's audio.done: emit the old tail first.
            await self._send_bot_audio(self._current_item, self.audio.end_bot_item(), generation)
        self._current_item = event.item_id
        started = time.perf_counter()
        ulaw = self.audio.bot_to_provider(event.audio)
        self._m_codec_bot.observe(time.perf_counter() - started)
        await self._send_bot_audio(event.item_id, ulaw, generation)

    async def _send_bot_audio(self, item_id: str | None, ulaw: bytes, generation: int) -> None:
        """Send mu-law bot audio in chunks, each followed by the tracker's mark.

        `generation` is the tracker's generation when the audio was admitted: a barge-in handled by the
        caller's task while this one waits on a send bumps it, and the rest of the audio is dropped.
        Between the check and the media write nothing awaits, so no chunk can follow a clear.
        """
        if item_id is None or not ulaw:
            return
        if item_id == self._current_item and self._speech_stopped_at is not None:
            self._record_response_latency(time.perf_counter())
        for start in range(0, len(ulaw), self._chunk_bytes):
            if self.tracker.generation != generation:
                self.metrics.dropped_deltas.inc()
                return
            chunk = ulaw[start : start + self._chunk_bytes]
            mark = self.tracker.on_audio_sent(item_id, len(chunk), now_ms())
            await self._send_caller(SendMedia(chunk))
            if start == 0:
                added = time.perf_counter() - self._upstream_msg_at
                self._m_added_bot.observe(added)
            await self._send_caller(mark)
            self.summary.media_out += 1
            self.summary.bot_audio_bytes += len(chunk)
            self._m_frames_out.inc()

    def _record_response_latency(self, first_audio_at: float) -> None:
        """The first bot audio of an answer goes out: response latency (from the end of the caller's
        speech) and model latency (from the speech_stopped event)."""
        assert self._speech_stopped_at is not None
        model = first_audio_at - self._speech_stopped_at
        self.metrics.model_latency.observe(model)
        self.summary.model_latencies_ms.append(round(model * 1000, 1))
        if self._speech_ended_at is not None:  # unknown right after a session was replaced
            latency = first_audio_at - self._speech_ended_at
            self.metrics.response_latency.observe(latency)
            self.summary.response_latencies_ms.append(round(latency * 1000, 1))
        self._speech_stopped_at = self._speech_ended_at = None

    async def _send_caller(self, command: TelephonyCommand) -> None:
        if not self.dialect.can_send:  # Twilio said stop: the stream is over, whatever the bot still says
            raise _CallEnded(Outcome.COMPLETED, "caller hung up")
        text = self.dialect.send(command)
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        try:
            if buffered < UNHURRIED_BUFFER_BYTES:
                await self.ws.send_str(text)  # cannot block: the transport is far below its high-water mark
            else:
                async with asyncio.timeout(self.settings.send_timeout_s):
                    await self.ws.send_str(text)
        except ConnectionResetError:
            raise _CallEnded(Outcome.COMPLETED, "caller went away") from None
        except TimeoutError:
            raise _CallEnded(Outcome.SLOW_CONSUMER, "the provider stopped reading bot audio") from None

    async def _on_speech_started(self, now: int) -> None:
        received = time.perf_counter()
        decision = self.bargein.on_speech_started(now)
        if decision.verdict is Verdict.BARGE_IN:
            await self._apply_barge_in(decision, received)

    async def _apply_barge_in(self, decision: SpeechDecision, received: float) -> None:
        self.audio.drop_bot_audio()
        self._current_item = None
        for command in decision.commands:
            if isinstance(command, ClearPlayback):
                await self._send_caller(command)
                self.metrics.barge_in_latency.observe(time.perf_counter() - received)
            elif isinstance(command, CancelResponse):
                await self._send_upstream(command)
                self.metrics.cancels.inc()
            elif isinstance(command, TruncateItem):
                await self._send_upstream(command)
                self.metrics.truncates.inc()
                total = self.bargein.received_ms(command.item_id)
                self.transcript.on_truncated(command.item_id, command.audio_end_ms, total)
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

    def _on_error(self, err: ErrorReported) -> None:
        kind = self.bargein.on_error(err)
        assert self._link is not None
        failed = self._link.sent_command(err.event_id)
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
