"""Barge-in controller: when the caller talks over the bot, what to send, in which order.

A sans-I/O state machine. The bridge feeds it the realtime events that matter (response created/done,
audio deltas, audio done, speech started, errors) and local speech detections, each with `now_ms`; it
answers with booleans (play this delta or drop it) and with commands to send, in order. It reads the
playback figures from the `PlaybackTracker` it was given; the bridge drives that tracker directly with
sends and mark echoes. Nothing in here reads a clock.

States and transitions are in `_TRANSITIONS` below (one table). In words:

* IDLE: no response is active (bot audio of a finished response may still be queued).
* RESPONDING: at least one response is active and not interrupted.
* INTERRUPTED: a barge-in happened and no new response has started since. Speech in this state does
  nothing: it is the same interruption. A new response (or audio of one) starts the next turn.

A barge-in is decided when speech starts while bot audio is audible, or while a response is active
even if none of its audio is audible. The second case covers two things: the response has sent nothing
yet (the caller spoke first: its content was generated without what the caller is saying now, and
server VAD with `interrupt_response` would cancel it for the same reason), and the response's audio ran
dry while more is still being generated (it would start talking over the caller a moment later).
Local detections act only while bot audio is audible: outside playback, turn-taking is server VAD's job,
and a local false positive (noise) cancelling a response the caller is waiting for is the worse error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Literal

from gateway.call.playback import ClearResult, PlaybackTracker
from gateway.realtime.events import (
    AudioDelta,
    AudioDone,
    CancelResponse,
    ErrorReported,
    ResponseCreated,
    ResponseDone,
    TruncateItem,
)
from gateway.telephony.events import ClearPlayback

__all__ = [
    "BENIGN_CANCEL_CODE",
    "BENIGN_TRUNCATE_MESSAGE",
    "BargeInCommand",
    "BargeInController",
    "BargeInMode",
    "BargeInStats",
    "CallState",
    "CancelPolicy",
    "ErrorClass",
    "SpeechDecision",
    "SpeechSource",
    "Verdict",
    "classify_error",
]

BENIGN_CANCEL_CODE = "response_cancel_not_active"
BENIGN_TRUNCATE_MESSAGE = "already shorter than"

BargeInCommand = ClearPlayback | CancelResponse | TruncateItem
ErrorClass = Literal["benign_cancel", "benign_truncate", "other"]
SpeechSource = Literal["server", "local", "key"]


class CallState(Enum):
    """Where the bot's turn stands."""

    IDLE = "idle"
    RESPONDING = "responding"
    INTERRUPTED = "interrupted"


class BargeInMode(StrEnum):
    """Which speech detections may interrupt the bot (setting BARGE_IN)."""

    SERVER = "server"
    LOCAL = "local"
    BOTH = "both"


class CancelPolicy(StrEnum):
    """When to send response.cancel on a barge-in."""

    ALWAYS = "always"
    AUTO = "auto"
    """Only when server VAD does not interrupt by itself (`interrupt_response` off)."""
    NEVER = "never"


class Verdict(StrEnum):
    """What a speech detection led to."""

    BARGE_IN = "barge_in"
    NOT_AUDIBLE = "not_audible"
    """No bot audio queued or playing and no response active (for local: no bot audio audible)."""
    ALREADY_INTERRUPTED = "already_interrupted"
    MODE_OFF = "mode_off"
    """The barge-in mode does not listen to this source."""


class _Trigger(Enum):
    RESPONSE_CREATED = "response_created"
    AUDIO_ADMITTED = "audio_admitted"
    LAST_RESPONSE_DONE = "last_response_done"
    BARGE_IN = "barge_in"


_TRANSITIONS: dict[tuple[CallState, _Trigger], CallState] = {
    (CallState.IDLE, _Trigger.RESPONSE_CREATED): CallState.RESPONDING,
    (CallState.RESPONDING, _Trigger.RESPONSE_CREATED): CallState.RESPONDING,
    (CallState.INTERRUPTED, _Trigger.RESPONSE_CREATED): CallState.RESPONDING,
    # Audio of a response whose response.created we never saw: it is active all the same.
    (CallState.IDLE, _Trigger.AUDIO_ADMITTED): CallState.RESPONDING,
    (CallState.INTERRUPTED, _Trigger.AUDIO_ADMITTED): CallState.RESPONDING,
    (CallState.RESPONDING, _Trigger.AUDIO_ADMITTED): CallState.RESPONDING,
    (CallState.RESPONDING, _Trigger.LAST_RESPONSE_DONE): CallState.IDLE,
    # The interrupted response finishing (cancelled) does not end the interruption.
    (CallState.INTERRUPTED, _Trigger.LAST_RESPONSE_DONE): CallState.INTERRUPTED,
    (CallState.IDLE, _Trigger.BARGE_IN): CallState.INTERRUPTED,
    (CallState.RESPONDING, _Trigger.BARGE_IN): CallState.INTERRUPTED,
}
"""Every allowed transition; a pair missing here is a bug in the controller (it raises)."""


@dataclass(frozen=True, slots=True)
class SpeechDecision:
    """The answer to a speech detection: send `commands` in this order, record the metrics.

    On `BARGE_IN` the commands are `ClearPlayback()`, then `CancelResponse` (per policy), then
    `TruncateItem` (unless nothing of the item was heard or it had finished playing). The tracker has
    already been cleared; also discard any bot audio you hold but have not sent (chunker, resampler).
    """

    verdict: Verdict
    source: SpeechSource
    decided_at_ms: int
    commands: tuple[BargeInCommand, ...] = ()
    flushed_ms: int = 0
    """Audio thrown away by the clear: sent but not yet heard."""
    truncated: TruncateItem | None = None
    cancelled_response_ids: tuple[str, ...] = ()
    """Responses interrupted (their deltas are dropped from now on), whether or not a cancel was sent."""


@dataclass(frozen=True, slots=True)
class BargeInStats:
    """Counters for metrics."""

    barge_ins: int
    speech_ignored: int
    dropped_deltas: int
    dropped_audio_ms: int
    benign_cancel_errors: int
    benign_truncate_errors: int


@dataclass(slots=True)
class _ItemAudio:
    """What the service sent of one item: received samples at the item's own rate."""

    response_id: str
    content_index: int
    sample_rate: int
    received_samples: int = 0
    done: bool = False

    def received_ms(self) -> int:
        return self.received_samples * 1000 // self.sample_rate


def classify_error(err: ErrorReported) -> ErrorClass:
    """Tell the expected races of barge-in apart from real errors; count and log the benign ones at debug."""
    if err.code == BENIGN_CANCEL_CODE:
        return "benign_cancel"
    if BENIGN_TRUNCATE_MESSAGE in err.message.lower():
        return "benign_truncate"
    return "other"


class BargeInController:
    """Decides which bot audio to play and what to send when the caller barges in.

    `server_interrupts` is the session's VAD `interrupt_response` (the service cancels the response by
    itself on speech); it matters only with `CancelPolicy.AUTO`.
    """

    def __init__(
        self,
        tracker: PlaybackTracker,
        *,
        mode: BargeInMode = BargeInMode.SERVER,
        cancel_policy: CancelPolicy = CancelPolicy.ALWAYS,
        server_interrupts: bool = True,
    ) -> None:
        self._tracker = tracker
        self._mode = BargeInMode(mode)
        self._cancel_policy = CancelPolicy(cancel_policy)
        self._server_interrupts = server_interrupts
        self._state = CallState.IDLE
        self._active: dict[str, None] = {}  # responses created, not done, not interrupted (ordered)
        self._finished: set[str] = set()
        self._interrupted_responses: set[str] = set()
        self._interrupted_items: set[str] = set()
        self._foreign_items: set[str] = set()  # items of a realtime session that has been replaced
        self._items: dict[str, _ItemAudio] = {}
        self._barge_ins = 0
        self._speech_ignored = 0
        self._dropped_deltas = 0
        self._dropped_ms = 0
        self._benign_cancel = 0
        self._benign_truncate = 0

    @property
    def state(self) -> CallState:
        """The current state."""
        return self._state

    @property
    def tracker(self) -> PlaybackTracker:
        """The playback tracker the controller reads (feed it sends and mark echoes)."""
        return self._tracker

    @property
    def mode(self) -> BargeInMode:
        """Which speech detections may interrupt."""
        return self._mode

    def stats(self) -> BargeInStats:
        """A snapshot of the counters."""
        return BargeInStats(
            barge_ins=self._barge_ins,
            speech_ignored=self._speech_ignored,
            dropped_deltas=self._dropped_deltas,
            dropped_audio_ms=self._dropped_ms,
            benign_cancel_errors=self._benign_cancel,
            benign_truncate_errors=self._benign_truncate,
        )

    # -- realtime events -----------------------------------------------------------------------------

    def on_response_created(self, event: ResponseCreated, now_ms: int) -> None:
        """A response began: it is active until its response.done."""
        self._active[event.response_id] = None
        self._fire(_Trigger.RESPONSE_CREATED)

    def on_audio_delta(self, event: AudioDelta, received_samples: int, sample_rate: int, now_ms: int) -> bool:
        """Say whether to play this delta; `received_samples` is its duration at its own `sample_rate`.

        False means drop it: its response or item was interrupted (it is counted). True means transcode
        and send it, then report each chunk to the tracker.
        """
        audio = self._items.get(event.item_id)
        if audio is None:
            audio = _ItemAudio(event.response_id, event.content_index, sample_rate)
            self._items[event.item_id] = audio
        elif audio.sample_rate != sample_rate:
            raise ValueError(f"item {event.item_id} changed rate {audio.sample_rate} -> {sample_rate}")
        audio.received_samples += received_samples
        if event.response_id in self._interrupted_responses or event.item_id in self._interrupted_items:
            self._dropped_deltas += 1
            self._dropped_ms += received_samples * 1000 // sample_rate
            return False
        if event.response_id not in self._finished:
            self._active.setdefault(event.response_id, None)
            self._fire(_Trigger.AUDIO_ADMITTED)
        return True

    def on_audio_done(self, event: AudioDone, now_ms: int) -> None:
        """The item's audio is complete: once it has all played, it is not truncated any more."""
        audio = self._items.get(event.item_id)
        if audio is not None:
            audio.done = True

    def on_response_done(self, event: ResponseDone, now_ms: int) -> None:
        """A response ended (any status): its items get no more audio."""
        self._finished.add(event.response_id)
        for audio in self._items.values():
            if audio.response_id == event.response_id:
                audio.done = True
        was_active = event.response_id in self._active
        self._active.pop(event.response_id, None)
        if was_active and not self._active:
            self._fire(_Trigger.LAST_RESPONSE_DONE)

    def on_session_lost(self, now_ms: int) -> None:
        """The realtime session was replaced: its responses are over, whatever they were doing."""
        lost = list(self._active)
        for response_id in lost:
            self._finished.add(response_id)
        for audio in self._items.values():
            audio.done = True
        # The new session has never heard of these items: they can be cleared from playback, not truncated.
        self._foreign_items.update(self._items)
        self._active.clear()
        if lost and self._state is CallState.RESPONDING:
            self._fire(_Trigger.LAST_RESPONSE_DONE)

    @property
    def responding(self) -> bool:
        """A response is active (created, not done, not interrupted)."""
        return bool(self._active)

    def quiet(self, now_ms: int) -> bool:
        """No response is running and no bot audio is queued or playing: a safe moment to swap sessions."""
        return not self._active and not self._tracker.is_audible(now_ms)

    def received_ms(self, item_id: str) -> int:
        """Audio the service sent for `item_id`, in ms at its own rate (0 if unknown)."""
        audio = self._items.get(item_id)
        return audio.received_ms() if audio is not None else 0

    def on_error(self, err: ErrorReported) -> ErrorClass:
        """Classify an error event (see `classify_error`) and count the benign races."""
        kind = classify_error(err)
        if kind == "benign_cancel":
            self._benign_cancel += 1
        elif kind == "benign_truncate":
            self._benign_truncate += 1
        return kind

    # -- speech --------------------------------------------------------------------------------------

    def on_speech_started(self, now_ms: int) -> SpeechDecision:
        """Server VAD heard the caller start talking; send the decision's commands in order."""
        if self._mode is BargeInMode.LOCAL:
            return self._ignore(Verdict.MODE_OFF, "server", now_ms)
        return self._speech("server", now_ms)

    def on_local_speech(self, now_ms: int) -> SpeechDecision:
        """The local detector heard the caller start talking; send the decision's commands in order."""
        if self._mode is BargeInMode.SERVER:
            return self._ignore(Verdict.MODE_OFF, "local", now_ms)
        if self._state is not CallState.INTERRUPTED and not self._tracker.is_audible(now_ms):
            return self._ignore(Verdict.NOT_AUDIBLE, "local", now_ms)
        return self._speech("local", now_ms)

    def on_key_press(self, now_ms: int) -> SpeechDecision:
        """The caller pressed a key (in any barge-in mode: a key press is never the bot's echo)."""
        return self._speech("key", now_ms)

    def _speech(self, source: SpeechSource, now_ms: int) -> SpeechDecision:
        if self._state is CallState.INTERRUPTED:
            return self._ignore(Verdict.ALREADY_INTERRUPTED, source, now_ms)
        if not self._active and not self._tracker.is_audible(now_ms):
            return self._ignore(Verdict.NOT_AUDIBLE, source, now_ms)
        return self._barge_in(source, now_ms)

    def _barge_in(self, source: SpeechSource, now_ms: int) -> SpeechDecision:
        cleared = self._tracker.clear(now_ms)
        commands: list[BargeInCommand] = [ClearPlayback()]
        interrupted = tuple(self._active)
        if self._should_cancel() or source == "key":  # the service's VAD never hears a key: always cancel
            commands.extend(CancelResponse(rid) for rid in interrupted)
        truncate = self._truncation(cleared)
        if truncate is not None:
            commands.append(truncate)
        self._interrupted_responses.update(interrupted)
        self._interrupted_items.update(it.item_id for it in cleared.items)
        self._active.clear()
        self._barge_ins += 1
        self._fire(_Trigger.BARGE_IN)
        return SpeechDecision(
            verdict=Verdict.BARGE_IN,
            source=source,
            decided_at_ms=now_ms,
            commands=tuple(commands),
            flushed_ms=cleared.flushed_ms,
            truncated=truncate,
            cancelled_response_ids=interrupted,
        )

    def _should_cancel(self) -> bool:
        if self._cancel_policy is CancelPolicy.AUTO:
            return not self._server_interrupts
        return self._cancel_policy is CancelPolicy.ALWAYS

    def _truncation(self, cleared: ClearResult) -> TruncateItem | None:
        """Truncate the item being heard at what was heard, never past what the service sent of it."""
        item_id = cleared.playing_item_id
        if item_id is None:
            # Nothing queued: only an item whose audio ran dry while more was coming is cut short.
            last = cleared.last_item_id
            item_id = last if last is not None and not self._audio_done(last) else None
        if item_id in self._foreign_items:
            return None
        figures = cleared.item(item_id) if item_id is not None else None
        audio = self._items.get(item_id) if item_id is not None else None
        if figures is None or audio is None or figures.heard_ms == 0:
            return None
        end_ms = min(figures.heard_ms, audio.received_ms())
        if audio.done and (figures.finished or end_ms >= audio.received_ms()):
            return None
        return TruncateItem(figures.item_id, audio.content_index, end_ms)

    def _audio_done(self, item_id: str) -> bool:
        audio = self._items.get(item_id)
        return audio is None or audio.done

    def _ignore(self, verdict: Verdict, source: SpeechSource, now_ms: int) -> SpeechDecision:
        self._speech_ignored += 1
        return SpeechDecision(verdict=verdict, source=source, decided_at_ms=now_ms)

    def _fire(self, trigger: _Trigger) -> None:
        try:
            self._state = _TRANSITIONS[self._state, trigger]
        except KeyError:  # pragma: no cover - the guards above make this unreachable
            raise AssertionError(f"no transition from {self._state} on {trigger}") from None
