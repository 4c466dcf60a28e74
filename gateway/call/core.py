"""The call core: every decision of one call, sans-I/O, between a caller leg and a realtime session.

It owns the audio conversion, the aggregation of caller audio into appends, the playback tracker, the
barge-in controller, which bot item is playing, whether the caller is owed an answer, and the timeline
that dates the caller's speech. It takes leg events and realtime events with `now_ms` and returns
commands for each side separately, in the style of python-websockets' `Protocol`:

- feed it: `receive_caller_audio`, `receive_played_to`, `receive_dtmf`, `receive_realtime`,
  `session_replaced`, and the results of the tools it asked for (`tool_result`, `act_when_heard`,
  `tool_filler`);
- drain it: `realtime_to_send()` (send in order), `next_leg_command(now_ms)` (pull one at a time, and
  write each before pulling the next: a barge-in between two pulls drops the audio not yet pulled, so no
  bot audio can follow a clear), and `notes()` (what happened, for metrics and logs).

The I/O around it (`bridge.py`) moves bytes, stamps time and counts. Nothing in here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.call.audio import TWILIO_FORMAT, CallAudio
from gateway.call.bargein import (
    BargeInController,
    BargeInMode,
    CancelPolicy,
    ErrorClass,
    SpeechDecision,
    Verdict,
)
from gateway.call.dtmf import DtmfSettings, KeyCollector, keys_message
from gateway.call.localvad import LocalVad
from gateway.call.outcome import Outcome
from gateway.call.playback import PlaybackTracker
from gateway.call.ratelimit import FrameBudget
from gateway.call.timeline import CallerTimeline
from gateway.realtime.events import (
    AppendAudio,
    AudioDelta,
    AudioDone,
    CancelResponse,
    CreateItem,
    CreateResponse,
    ErrorReported,
    FunctionCallRequested,
    FunctionOutput,
    RealtimeCommand,
    RealtimeEvent,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    TruncateItem,
    UserTranscript,
)
from gateway.realtime.session import AudioFormat
from gateway.realtime.transcript import Transcript
from gateway.telephony.events import ClearPlayback, PlayAudio, PlayoutRule, TelephonyCommand
from telcodec import WireFormat

__all__ = [
    "Answered",
    "AudioDropped",
    "BargedIn",
    "CallConfig",
    "CallCore",
    "CallMustEnd",
    "CallerAudioDropped",
    "DtmfPressed",
    "Heard",
    "Note",
    "ResponseFailed",
    "ToolCalled",
    "ToolCancelled",
]

DEFAULT_PLAYOUT = PlayoutRule()  # PLAYOUT_CHUNK_MS pieces, no minimum (Twilio)
FRAMES_PER_S = 50  # the legs send 20 ms frames
FLOOD_BURST_FRAMES = 3 * FRAMES_PER_S  # a provider may deliver a few seconds of backlog after a stall
FLOOD_LIMIT_FRAMES = 10 * FRAMES_PER_S  # dropping more than 10 s of excess audio: a hostile client
CANCELLED_OUTPUT = '{"status": "cancelled", "reason": "the caller interrupted; the call goes on"}'


@dataclass(frozen=True, slots=True)
class CallConfig:
    """The few settings a call's decisions depend on."""

    append_ms: int = 20
    playout_chunk_ms: int = 40
    barge_in: BargeInMode = BargeInMode.SERVER
    cancel_policy: CancelPolicy = CancelPolicy.ALWAYS
    server_interrupts: bool = True  # the session's VAD cancels its own response on speech
    create_response: bool = True  # the session's VAD starts a response when the caller stops
    vad_silence_ms: int = 500  # speech_stopped.audio_end_ms includes this much silence
    greeting: str | None = None
    dtmf: DtmfSettings = field(default_factory=DtmfSettings)


# -- notes: what happened, for the I/O layer's metrics and logs --------------------------------------


@dataclass(frozen=True, slots=True)
class BargedIn:
    """The caller talked over the bot; `decision` says what was sent. `heard_of_ms` is the truncated
    item's audio received from the service (0 without a truncate)."""

    decision: SpeechDecision
    heard_of_ms: int


@dataclass(frozen=True, slots=True)
class Answered:
    """The first bot audio of an answer went to the leg. `response_ms`: from the end of the caller's
    speech (None when that moment is unknown, right after a session was replaced); `model_ms`: from the
    speech_stopped event."""

    response_ms: float | None
    model_ms: int


@dataclass(frozen=True, slots=True)
class AudioDropped:
    """Bot audio of an interrupted response was dropped, never played."""


@dataclass(frozen=True, slots=True)
class CallerAudioDropped:
    """A caller frame beyond the flood budget was dropped."""


@dataclass(frozen=True, slots=True)
class DtmfPressed:
    """The caller pressed a key."""

    digit: str


@dataclass(frozen=True, slots=True)
class ResponseFailed:
    """A response ended with status failed."""

    response_id: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class CallMustEnd:
    """The call cannot go on: end it with this outcome."""

    outcome: Outcome
    detail: str


@dataclass(frozen=True, slots=True)
class ToolCalled:
    """The model called a tool: run it, then hand its result to `tool_result` (or, for an action that
    must wait until the caller has heard the bot out, to `act_when_heard`)."""

    call: FunctionCallRequested


@dataclass(frozen=True, slots=True)
class Heard:
    """The caller has heard the bot out after a deferred tool call (`act_when_heard`): act on it now."""

    call: FunctionCallRequested


@dataclass(frozen=True, slots=True)
class ToolCancelled:
    """The caller interrupted the bot before a deferred tool call acted: it never will."""

    call: FunctionCallRequested


Note = (
    BargedIn
    | Answered
    | AudioDropped
    | CallerAudioDropped
    | DtmfPressed
    | ResponseFailed
    | CallMustEnd
    | ToolCalled
    | Heard
    | ToolCancelled
)


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One message of converted bot audio, waiting to be pulled."""

    item_id: str
    audio: bytes
    generation: int


class CallCore:
    """One call's decisions. Construct once the leg has started (its format is known)."""

    def __init__(
        self,
        config: CallConfig,
        session_format: AudioFormat,
        leg_format: WireFormat = TWILIO_FORMAT,
        playout: PlayoutRule = DEFAULT_PLAYOUT,
    ) -> None:
        """ValueError if the session cannot carry this leg's format (AUDIO_MODE=g711 and a non-mu-law leg)."""
        self.config = config
        self.leg_format = leg_format
        self.audio = CallAudio(session_format, leg_format)
        self.tracker = PlaybackTracker(leg_format.rate)
        self.bargein = BargeInController(
            self.tracker,
            mode=config.barge_in,
            cancel_policy=config.cancel_policy,
            server_interrupts=config.server_interrupts,
        )
        self.transcript = Transcript()
        self.timeline = CallerTimeline()
        self._local_vad = LocalVad(leg_format.rate) if config.barge_in is not BargeInMode.SERVER else None
        self._budget = FrameBudget(FRAMES_PER_S, FLOOD_BURST_FRAMES)
        self._keys = KeyCollector(config.dtmf)
        self._append_bytes = session_format.bytes_per_ms * config.append_ms
        self._playout = playout
        ahead_ms = playout.max_ahead_ms
        self._max_ahead_samples = None if ahead_ms is None else ahead_ms * leg_format.rate // 1000
        self._multiple = max(playout.multiple_bytes, leg_format.bytes_per_sample)
        chunk = leg_format.frame_bytes(playout.chunk_ms or config.playout_chunk_ms)
        self._chunk_bytes = max(playout.min_bytes, chunk - chunk % self._multiple, self._multiple)
        self._silence = leg_format.silence(1)[: leg_format.bytes_per_sample]
        self._append_buffer = bytearray()
        self._to_realtime: list[RealtimeCommand] = []
        self._clear_pending = False
        self._bot_queue: deque[_Chunk] = deque()
        self._bot_held = bytearray()  # the current item's audio too short for a message (PlayoutRule)
        self._notes: list[Note] = []
        self._current_item: str | None = None
        self._turn_owed = False  # the caller finished a turn and no response has started since
        self._speech_ended_ms: float | None = None
        self._speech_stopped_ms: int | None = None
        # Tools: calls waiting for their output, responses that carried audio, the deferred actions, and
        # whether a response must be asked for once the outputs are in and the service is free.
        self._tool_calls: dict[str, FunctionCallRequested] = {}
        self._voiced: deque[str] = deque(maxlen=16)  # the latest responses that carried audio
        self._deferred: list[FunctionCallRequested] = []
        self._unanswered: set[str] = set()  # deferred calls without an output yet
        self._respond_owed: str | None = None  # instructions ("" for none) for the response owed
        self._requested = False  # a response.create went out and its response.created has not come

    # -- outputs -------------------------------------------------------------------------------------

    def start(self) -> None:
        """The realtime session is configured: a greeting, if any, is asked for now."""
        if self.config.greeting:
            self._request(self.config.greeting)

    def realtime_to_send(self) -> list[RealtimeCommand]:
        """Commands for the realtime session, in order (drains them)."""
        out, self._to_realtime = self._to_realtime, []
        return out

    @property
    def clear_pending(self) -> bool:
        """A barge-in decided a clear that has not been pulled yet (send it before anything else)."""
        return self._clear_pending

    def realtime_pending(self) -> bool:
        """Commands for the realtime session are waiting."""
        return bool(self._to_realtime)

    def notes(self) -> list[Note]:
        """What happened since the last call (drains them)."""
        out, self._notes = self._notes, []
        return out

    def next_leg_command(self, now_ms: int) -> TelephonyCommand | None:
        """The next command for the leg, or None. Audio is committed to the tracker when pulled: write
        it before pulling again."""
        if self._clear_pending:
            self._clear_pending = False
            return ClearPlayback()
        ahead = self._max_ahead_samples
        if ahead is not None and self._bot_queue and self.tracker.queued_samples(now_ms) >= ahead:
            return None  # the provider's buffer is full enough: pulled again as the caller's frames arrive
        while self._bot_queue:
            chunk = self._bot_queue.popleft()
            if chunk.generation != self.tracker.generation:  # queued before a barge-in: never played
                self._notes.append(AudioDropped())
                continue
            if chunk.item_id == self._current_item and self._speech_stopped_ms is not None:
                self._answered(now_ms)
            samples = len(chunk.audio) // self.leg_format.bytes_per_sample
            end = self.tracker.on_audio_sent(chunk.item_id, samples, now_ms)
            return PlayAudio(chunk.audio, end)
        return None

    # -- the caller's side ---------------------------------------------------------------------------

    def receive_caller_audio(self, payload: bytes, now_ms: int) -> None:
        """One frame of caller audio in the leg's encoding."""
        if not self._budget.allow(now_ms):
            self._notes.append(CallerAudioDropped())
            if self._budget.dropped > FLOOD_LIMIT_FRAMES:
                self._notes.append(CallMustEnd(Outcome.FLOOD, "caller audio far faster than real time"))
            return
        if self._local_vad is not None:
            audible = self.tracker.is_audible(now_ms)
            if self._local_vad.on_frame(self.audio.caller_samples(payload), bot_audible=audible):
                self._speech(self.bargein.on_local_speech(now_ms))
        self._append_buffer += self.audio.caller_to_session(payload)
        self.timeline.on_audio(self.leg_format.duration_ms(len(payload)), now_ms)
        if (keys := self._keys.poll(now_ms)) is not None:  # the caller paused after some keys
            self._tell_keys(keys)
        self.poll_tools(now_ms)
        # Appends are whole multiples of APPEND_MS; the resampler's held-back delay waits for the next.
        ready = len(self._append_buffer) - len(self._append_buffer) % self._append_bytes
        if ready:
            self._to_realtime.append(AppendAudio(bytes(self._append_buffer[:ready])))
            del self._append_buffer[:ready]

    def receive_played_to(self, position: int, now_ms: int) -> None:
        """The leg confirmed playback up to `position`."""
        self.tracker.on_played_to(position, now_ms)

    def receive_dtmf(self, digit: str, now_ms: int) -> None:
        """The caller pressed a key: counted; with DTMF forwarding, a barge-in while the bot talks, and
        collected into an entry the model is told of once it ends (terminator, count, or a pause)."""
        self._notes.append(DtmfPressed(digit))
        if not self.config.dtmf.forward:
            return
        self._speech(self.bargein.on_key_press(now_ms))
        keys = self._keys.press(digit, now_ms)
        if keys is not None:
            self._tell_keys(keys)

    def _tell_keys(self, keys: str) -> None:
        """One user item naming the keys, then a response to it."""
        self._to_realtime.append(CreateItem("user", keys_message(keys)))
        self._request(None)

    # -- the realtime side ---------------------------------------------------------------------------

    def receive_realtime(self, event: RealtimeEvent, now_ms: int) -> None:
        """A realtime event; lifecycle events (session.*, errors) are the I/O layer's, and ignored here."""
        match event:
            case AudioDelta():
                self._on_delta(event, now_ms)
            case AudioDone(item_id=item_id):
                self.bargein.on_audio_done(event, now_ms)
                if item_id == self._current_item:
                    self._queue_bot(item_id, self.audio.end_bot_item(), last=True)
                    self._current_item = None
            case SpeechStarted():
                self._speech(self.bargein.on_speech_started(now_ms))
            case SpeechStopped(audio_end_ms=audio_end_ms):
                self._speech_stopped_ms = now_ms
                self._speech_ended_ms = self.timeline.arrival_of(audio_end_ms - self.config.vad_silence_ms)
                self._turn_owed = self.config.create_response
            case ResponseCreated():
                self._turn_owed = self._requested = False
                self.bargein.on_response_created(event, now_ms)
            case ResponseDone(response_id=response_id, status=status, reason=reason):
                self.bargein.on_response_done(event, now_ms)
                if status == "failed":
                    self._notes.append(ResponseFailed(response_id, reason))
                    self._requested = False  # a response.create the service could not run
                self.poll_tools(now_ms)
            case FunctionCallRequested(call_id=call_id):
                self._tool_calls[call_id] = event
                self._notes.append(ToolCalled(event))
            case TranscriptDone(item_id=item_id, transcript=text):
                self.transcript.on_assistant(item_id, text)
            case UserTranscript(item_id=item_id, transcript=text):
                self.transcript.on_user(item_id, text)
            case _:
                pass

    def session_replaced(self, carried_audio_ms: float, now_ms: int) -> bool:
        """The realtime session was replaced; its responses died with it (audio already queued at the
        leg plays on). Returns True when an answer was owed and has been asked for again."""
        owed = self._turn_owed or self.bargein.responding
        self.timeline.reset(carried_audio_ms)
        self.bargein.on_session_lost(now_ms)
        self.audio.drop_bot_audio()
        self._bot_held.clear()
        self._current_item = None
        self._tool_calls.clear()  # the old session's calls: their outputs would name unknown call ids
        self._respond_owed, self._requested = None, False
        if owed:  # the caller is waiting for an answer the old session never finished
            self._turn_owed = False
            self._request(None)
        return owed

    # -- tools -----------------------------------------------------------------------------------------

    def tool_result(self, call_id: str, output: str, now_ms: int, *, respond: str | None = "") -> bool:
        """A tool's output for the model; then, once every pending call is answered and no response is
        running, one `response.create` (`respond`: its instructions, "" for none; None: no response).
        False when the call is unknown (answered already, or its session was replaced)."""
        if self._tool_calls.pop(call_id, None) is None:
            if call_id not in self._unanswered:
                return False
            self._unanswered.discard(call_id)
        self._to_realtime.append(FunctionOutput(call_id, output))
        if respond is not None and self._respond_owed is None:
            self._respond_owed = respond
        self.poll_tools(now_ms)
        return True

    def act_when_heard(self, call_id: str, now_ms: int, *, goodbye: tuple[str, str] | None = None) -> bool:
        """Note `Heard(call)` once the response that made this call is done and its audio has played out
        (hang-up, transfer: the caller hears the bot's last words first). With `goodbye` (output, spoken
        instructions), a response that said nothing first gets the output and a spoken reply to wait for.
        A barge-in before then cancels the action (`ToolCancelled`). False when the call is unknown."""
        call = self._tool_calls.get(call_id)
        if call is None:
            return False
        if goodbye is not None and call.response_id not in self._voiced:
            output, instructions = goodbye
            self.tool_result(call_id, output, now_ms, respond=instructions)
        else:
            del self._tool_calls[call_id]
            self._unanswered.add(call_id)  # answered if the action fails or is cancelled
        self._deferred.append(call)
        self.poll_tools(now_ms)
        return True

    def tool_filler(self, call_id: str, instructions: str) -> bool:
        """A tool is slow: have the bot say something meanwhile, if it is silent and the call still
        pending. The tool's own answer is asked for after the filler."""
        if call_id not in self._tool_calls or self.bargein.responding or self._requested:
            return False
        self._request(instructions)
        return True

    @property
    def acting_when_heard(self) -> bool:
        """A deferred tool action waits for the caller to hear the bot out (poll with `poll_tools`)."""
        return bool(self._deferred)

    def poll_tools(self, now_ms: int) -> None:
        """Ask for the owed response once the outputs are in and the service is free; then note the
        deferred actions once the caller has heard the bot out. Called at every caller frame and
        response.done, and by the I/O layer while an action waits (a leg that sends no audio, such as a
        SIP phone on hold, gives the core no other moment to notice playback ending)."""
        if self._respond_owed is None and not self._deferred:
            return
        if self.bargein.responding or self._requested:
            return
        if self._respond_owed is not None:
            if not self._tool_calls:
                instructions, self._respond_owed = self._respond_owed, None
                self._request(instructions or None)
            return
        if self._heard_out(now_ms):
            calls, self._deferred = self._deferred, []
            self._notes.extend(Heard(call) for call in calls)

    def response_refused(self, now_ms: int) -> None:
        """The service refused a response.create of ours (one was running already): the tools' owed
        response is asked for again once that one is done."""
        self._requested = False
        self.poll_tools(now_ms)

    def _heard_out(self, now_ms: int) -> bool:
        return not self._bot_queue and not self._bot_held and not self.tracker.is_audible(now_ms)

    def _request(self, instructions: str | None) -> None:
        self._to_realtime.append(CreateResponse(instructions=instructions))
        self._requested = True

    def classify_error(self, error: ErrorReported) -> ErrorClass:
        """Tell the expected races of barge-in from real errors (counting the benign ones)."""
        return self.bargein.on_error(error)

    def quiet(self, now_ms: int) -> bool:
        """No response running and no bot audio queued or playing: a safe moment to swap sessions."""
        return self.bargein.quiet(now_ms)

    # -- decisions -----------------------------------------------------------------------------------

    def _on_delta(self, event: AudioDelta, now_ms: int) -> None:
        samples = self.audio.session_samples(event.audio)
        if not self.bargein.on_audio_delta(event, samples, self.audio.session_rate, now_ms):
            self._notes.append(AudioDropped())
            return
        if self._current_item not in (None, event.item_id):
            # A new item without the previous one's audio.done: the old tail goes first.
            self._queue_bot(self._current_item, self.audio.end_bot_item(), last=True)
        self._current_item = event.item_id
        if not self._voiced or self._voiced[-1] != event.response_id:
            self._voiced.append(event.response_id)
        self._queue_bot(event.item_id, self.audio.bot_to_provider(event.audio))

    def _queue_bot(self, item_id: str | None, audio: bytes, *, last: bool = False) -> None:
        """Cut an item's converted audio into messages as the leg's PlayoutRule wants them."""
        if item_id is None:
            return
        held = self._bot_held
        held += audio
        size, multiple = self._chunk_bytes, self._multiple
        whole = len(held) - len(held) % size
        generation = self.tracker.generation
        for start in range(0, whole, size):
            self._bot_queue.append(_Chunk(item_id, bytes(held[start : start + size]), generation))
        del held[:whole]
        if not held:
            return
        if last:
            short = max(self._playout.min_bytes - len(held), (-len(held)) % multiple)
            held += self._silence * (short // len(self._silence))
        elif self._playout.min_bytes:
            return  # too short for a message: wait for more of this item
        tail = len(held) - len(held) % multiple
        if tail:
            self._bot_queue.append(_Chunk(item_id, bytes(held[:tail]), generation))
            del held[:tail]
        if last:
            held.clear()

    def _speech(self, decision: SpeechDecision) -> None:
        if decision.verdict is not Verdict.BARGE_IN:
            return
        self.audio.drop_bot_audio()
        self._current_item = None
        dropped = len(self._bot_queue)
        self._bot_queue.clear()
        self._bot_held.clear()
        self._notes.extend(AudioDropped() for _ in range(dropped))
        heard_of_ms = 0
        for command in decision.commands:
            if isinstance(command, ClearPlayback):
                self._clear_pending = True
            elif isinstance(command, CancelResponse):
                self._to_realtime.append(command)
            elif isinstance(command, TruncateItem):
                self._to_realtime.append(command)
                heard_of_ms = self.bargein.received_ms(command.item_id)
                self.transcript.on_truncated(command.item_id, command.audio_end_ms, heard_of_ms)
        self._notes.append(BargedIn(decision, heard_of_ms))
        if self._deferred:  # the caller spoke up before the bot's last words ended: do not act
            cancelled, self._deferred = self._deferred, []
            for call in cancelled:
                self._notes.append(ToolCancelled(call))
                if call.call_id in self._unanswered:
                    self._unanswered.discard(call.call_id)
                    self._to_realtime.append(FunctionOutput(call.call_id, CANCELLED_OUTPUT))

    def _answered(self, now_ms: int) -> None:
        assert self._speech_stopped_ms is not None
        ended = self._speech_ended_ms
        self._notes.append(
            Answered(None if ended is None else now_ms - ended, now_ms - self._speech_stopped_ms)
        )
        self._speech_stopped_ms = self._speech_ended_ms = None
