"""The simulated caller (sans-I/O): which 20 ms frame to send next, given the scenario and the phone.

The I/O layer calls `next_frame(now_ms, phone)` once per frame slot (every 20 ms on an absolute
schedule). The answer is a `Frame` (a pre-encoded payload, flags saying what the frame means for the
measurements, and maybe a DTMF key to press) or None when the caller hangs up. Listening steps read
the simulated phone (`PhoneView`: what has been played, what is queued, when bot audio last arrived),
so "interrupt after 800 ms of the bot" is exact on the phone's own playback clock. A step that waits
too long raises `StepTimeout` (`EndMissing` for an `expect_end` step). When the gateway ends the call,
the I/O layer asks `gateway_ended(outcome)` whether the script was waiting for that end; an end the
script did not expect raises `WrongEnd`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from gateway.loadtest.recordings import FRAME_MS, SILENCE_PAYLOAD, Recording
from gateway.loadtest.script import (
    Dtmf,
    ExpectEnd,
    HangUp,
    Interrupt,
    Say,
    Scenario,
    Silence,
    Step,
    WaitForBot,
)

__all__ = [
    "DTMF_INTERVAL_FRAMES",
    "CallerCore",
    "EndMissing",
    "Frame",
    "PhoneView",
    "StepTimeout",
    "WrongEnd",
]

DTMF_INTERVAL_FRAMES = 5  # one key every 100 ms


class StepTimeout(Exception):  # noqa: N818 - a scenario outcome, reported as the error kind "timeout"
    """A listening step (or the whole call) waited longer than its timeout; `kind` is the report's error
    kind."""

    kind = "timeout"


class EndMissing(StepTimeout):
    """An `expect_end` step timed out: the gateway had not ended the call."""

    kind = "end_missing"


class WrongEnd(Exception):  # noqa: N818 - a scenario outcome, reported as the error kind "wrong_end:..."
    """The gateway ended the call as `outcome` where the script's `expect_end` wanted another end."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.kind = f"wrong_end:{outcome}"


class PhoneView(Protocol):
    """What the caller can observe of its own phone."""

    @property
    def played_ms(self) -> float:
        """Bot audio played so far."""
        ...

    @property
    def queued_ms(self) -> float:
        """Bot audio received and not yet played."""
        ...

    @property
    def media_count(self) -> int:
        """Bot media messages received so far."""
        ...

    @property
    def last_media_ms(self) -> float:
        """When the last bot media message arrived (0 if none)."""
        ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame to send, and what it means for the measurements."""

    payload: str
    voiced: bool = False  # caller speech: the bot's next audio starts a new turn
    voice_end: bool = False  # the last voiced frame of a `say`: response latency starts when it is sent
    interrupt_start: bool = False  # the first frame talking over the bot: barge-in latency starts
    dtmf: str | None = None  # a key to press right after this frame
    recording: Recording | None = None  # where the frame comes from (None: silence), for other formats
    index: int = 0  # the frame's index in `recording`


SILENT = Frame(SILENCE_PAYLOAD)


class CallerCore:
    """Plays a `Scenario` frame by frame; construct when the stream has started."""

    def __init__(self, scenario: Scenario, now_ms: float) -> None:
        self.scenario = scenario
        self.deadline_ms = now_ms + scenario.timeout_s * 1000
        self.step_index = -1
        self.finished = False
        self._frame = 0  # frames sent in the current step
        self._step_started_ms = now_ms
        self._media_at_start = 0
        self._played_at_start = 0.0
        self._talking = False  # an Interrupt step has started talking
        self._enter(0, now_ms, None)

    @property
    def step(self) -> Step | None:
        """The step being played (None once the script is over)."""
        steps = self.scenario.steps
        return steps[self.step_index] if 0 <= self.step_index < len(steps) else None

    def _enter(self, index: int, now_ms: float, phone: PhoneView | None) -> None:
        self.step_index, self._frame, self._talking = index, 0, False
        self._step_started_ms = now_ms
        if phone is not None:
            self._media_at_start, self._played_at_start = phone.media_count, phone.played_ms

    def next_frame(self, now_ms: float, phone: PhoneView) -> Frame | None:
        """The frame for the slot at `now_ms`, or None: hang up now."""
        if now_ms > self.deadline_ms:
            raise StepTimeout(f"call exceeded its {self.scenario.timeout_s:g} s timeout")
        while (step := self.step) is not None:
            frame = self._play(step, now_ms, phone)
            if frame is not None:
                self._frame += 1
                return frame
            self._enter(self.step_index + 1, now_ms, phone)
        self.finished = True
        return None

    def _play(self, step: Step, now_ms: float, phone: PhoneView) -> Frame | None:
        """This step's frame for the slot, or None when the step is over (the next one takes the slot)."""
        match step:
            case Say(recording=recording):
                return _recording_frame(recording, self._frame)
            case Silence(ms=ms):
                return SILENT if self._frame * FRAME_MS < ms else None
            case Dtmf(digits=digits):
                return _key_frame(digits, self._frame)
            case HangUp(after_s=after_s):
                if self._frame * FRAME_MS < after_s * 1000:
                    return SILENT
                self.step_index = len(self.scenario.steps)  # nothing may follow a hang-up
                return None
            case ExpectEnd(outcome=outcome, timeout_s=timeout_s):
                if now_ms - self._step_started_ms > timeout_s * 1000:
                    raise EndMissing(
                        f"step {self.step_index} (expect_end {outcome}): the call was still up after "
                        f"{timeout_s:g} s"
                    )
                return SILENT  # only the gateway ends this step
            case WaitForBot():
                return self._wait_for_bot(step, now_ms, phone)
            case Interrupt():
                return self._interrupt(step, now_ms, phone)

    def gateway_ended(self, outcome: str) -> bool:
        """The gateway ended the call as `outcome` (its label: bot_hangup, transferred, ...). True: the
        script was at its `expect_end` step and that is the end it expects (the call passed); False: the
        script was elsewhere (the gateway cut it short). Raises `WrongEnd` for another end than expected."""
        step = self.step
        if not isinstance(step, ExpectEnd):
            return False
        if not step.accepts(outcome):
            wanted = "bot_hangup or transferred" if step.outcome == "any" else step.outcome
            raise WrongEnd(outcome, f"expected the call to end {wanted}; the gateway ended it: {outcome}")
        self.finished = True
        return True

    def _check_step_timeout(self, timeout_s: float, now_ms: float, what: str) -> None:
        if now_ms - self._step_started_ms > timeout_s * 1000:
            raise StepTimeout(f"step {self.step_index} ({what}): nothing after {timeout_s:g} s")

    def _wait_for_bot(self, step: WaitForBot, now_ms: float, phone: PhoneView) -> Frame | None:
        started = phone.media_count > self._media_at_start
        if started and phone.queued_ms == 0 and now_ms - phone.last_media_ms >= step.quiet_ms:
            return None
        what = "wait_for_bot: the bot kept talking" if started else "wait_for_bot: no bot audio"
        self._check_step_timeout(step.timeout_s, now_ms, what)
        return SILENT

    def _interrupt(self, step: Interrupt, now_ms: float, phone: PhoneView) -> Frame | None:
        if not self._talking:
            if phone.played_ms - self._played_at_start < step.after_ms:
                heard = phone.played_ms - self._played_at_start
                self._check_step_timeout(
                    step.timeout_s, now_ms, f"interrupt_after_ms: only {heard:.0f} ms of the bot heard"
                )
                return SILENT
            self._talking, self._frame = True, 0
        if step.recording is None:  # keys over the bot
            return _key_frame(step.digits, self._frame)
        frame = _recording_frame(step.recording, self._frame)
        if frame is not None and self._frame == 0:
            return replace(frame, interrupt_start=True)
        return frame


def _key_frame(digits: str, index: int) -> Frame | None:
    """The `index`-th frame of pressing `digits`, one every 100 ms; None once they are all pressed."""
    if index >= len(digits) * DTMF_INTERVAL_FRAMES:
        return None
    key, slot = divmod(index, DTMF_INTERVAL_FRAMES)
    return Frame(SILENCE_PAYLOAD, dtmf=digits[key]) if slot == 0 else SILENT


def _recording_frame(recording: Recording, index: int) -> Frame | None:
    if index >= recording.frames:
        return None
    voiced = index <= recording.last_voiced_frame
    return Frame(
        recording.payloads[index],
        voiced=voiced,
        voice_end=index == recording.last_voiced_frame,
        recording=recording,
        index=index,
    )
