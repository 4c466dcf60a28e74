"""The call core on a simulated clock: a Twilio phone (playout model + dialect), the core and the
emulator's session, all sans-I/O and wired as the bridge wires them, so barge-in and truncation accuracy
are deterministic and take milliseconds."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field

import pytest

from gateway.call.bargein import BargeInMode
from gateway.call.core import Answered, BargedIn, CallConfig, CallCore, CallMustEnd, DtmfPressed, Note
from gateway.call.dtmf import DtmfSettings
from gateway.call.outcome import Outcome
from gateway.emulator.session import Accepted, EmulatorConfig, EmulatorSession
from gateway.loadtest.playout import TwilioPlayout
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from gateway.realtime.codec import RealtimeCodec
from gateway.realtime.events import CreateResponse, RealtimeCommand, UpdateSession
from gateway.realtime.session import AudioFormat, Protocol, SessionSettings
from gateway.telephony.events import CallStarted, ClearPlayback, PlayAudio, PlayedTo
from gateway.telephony.twilio import TwilioDialect

SID = "MZ" + "0" * 32
FRAME_MS = 20
FRAME = 160


def _start() -> str:
    start = {
        "streamSid": SID,
        "callSid": "CA" + "1" * 32,
        "accountSid": "AC" + "2" * 32,
        "tracks": ["inbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    return json.dumps({"event": "start", "start": start, "streamSid": SID})


@dataclass
class SimCall:
    """One call on a simulated clock, wired as the bridge wires it (leg first, then the session)."""

    config: CallConfig = field(default_factory=CallConfig)
    emulator: EmulatorConfig = field(
        default_factory=lambda: EmulatorConfig(reply_ms=2000, realtime_factor=4.0)
    )
    now: float = 0.0
    tools: tuple[dict[str, object], ...] = ()  # the session's tool definitions

    def __post_init__(self) -> None:
        self.dialect = TwilioDialect()
        started = self.dialect.receive_text(_start())
        assert isinstance(started, CallStarted)
        self.phone = TwilioPlayout()
        session = SessionSettings(
            instructions="test", voice="alloy", greeting=self.config.greeting, tools=self.tools
        )
        self.codec = RealtimeCodec(Protocol.GA, session)
        self.session = EmulatorSession(Accepted(Protocol.GA, "gpt-realtime", "/v1/realtime"), self.emulator)
        self.core = CallCore(self.config, AudioFormat.PCM16)
        self.notes: list[Note] = []
        self.clear_at: list[float] = []
        self.played_at_clear: list[float] = []
        self._to_session(UpdateSession())
        self.core.start()
        self._flush()

    def _to_session(self, command: RealtimeCommand) -> None:
        self._from_session(self.session.receive_text(self.codec.encode(command), self.now).events)

    def _from_session(self, events: tuple[dict[str, object], ...]) -> None:
        for raw in events:
            self.core.receive_realtime(self.codec.decode(json.dumps(raw)), int(self.now))
            self._flush()

    def _flush(self) -> None:
        while (command := self.core.next_leg_command(int(self.now))) is not None:
            for text in self.dialect.send(command):
                self._phone_receives(json.loads(text))
        for realtime in self.core.realtime_to_send():
            self._from_session(self.session.receive_text(self.codec.encode(realtime), self.now).events)
        self.notes.extend(self.core.notes())

    def _phone_receives(self, message: dict[str, object]) -> None:
        kind = message["event"]
        if kind == "media":
            media = message["media"]
            assert isinstance(media, dict)
            echoes = self.phone.media(base64.b64decode(media["payload"]), self.now)
        elif kind == "mark":
            mark = message["mark"]
            assert isinstance(mark, dict)
            echoes = self.phone.mark(mark["name"], self.now)
        else:
            assert kind == "clear"
            self.clear_at.append(self.now)
            self.played_at_clear.append(self.phone.played_ms_at(self.now))
            echoes = self.phone.clear(self.now)
        self._echo(echoes)

    def _echo(self, names: list[str]) -> None:
        for name in names:
            event = self.dialect.receive_text(
                json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": name}})
            )
            assert isinstance(event, PlayedTo)
            self.core.receive_played_to(event.position, int(self.now))

    def speak(self, ulaw: bytes) -> None:
        """The caller's frames, one every 20 ms, with the phone and the session advancing in between."""
        for offset in range(0, len(ulaw), FRAME):
            self.advance(self.now + FRAME_MS)
            self.core.receive_caller_audio(ulaw[offset : offset + FRAME], int(self.now))
            self._flush()

    def advance(self, until: float) -> None:
        """Let time pass: the session sends what is due, the phone plays and echoes marks."""
        while True:
            due = [
                t
                for t in (self.session.next_due_ms, self.phone.next_due_ms())
                if t is not None and t <= until
            ]
            step = min(due, default=until)
            self.now = max(self.now, step)
            self._echo(self.phone.advance(self.now))
            self._from_session(self.session.poll(self.now).events)
            if step >= until:
                return


def test_bot_answers_and_the_caller_hears_all_of_it() -> None:
    """A caller turn gets an answer; every byte the core sent plays at the phone, nothing is dropped."""
    call = SimCall()
    call.speak(speech_ulaw(800) + silence_ulaw(700))
    call.speak(silence_ulaw(3000))
    assert call.session.responses
    assert call.phone.played_ms == pytest.approx(2000, abs=5)
    assert call.clear_at == []
    answered = [n for n in call.notes if isinstance(n, Answered)]
    assert len(answered) == 1
    assert answered[0].response_ms is not None
    # The caller waited for VAD's silence window and the first delta; both are on the simulated clock.
    assert 500 <= answered[0].response_ms <= 620


@pytest.mark.parametrize("interrupt_after_ms", [300, 700, 1300])
def test_barge_in_truncates_at_what_the_phone_played(interrupt_after_ms: int) -> None:
    """Talking over the bot: one clear, nothing played after it, and the truncate the session accepted is
    what the phone had played of the item, to the millisecond (the simulated line has no delay)."""
    call = SimCall()
    call.speak(speech_ulaw(800) + silence_ulaw(700))
    while call.phone.played_ms < interrupt_after_ms:
        call.speak(silence_ulaw(FRAME_MS))
    call.speak(speech_ulaw(600))
    call.speak(silence_ulaw(200))
    assert len(call.clear_at) == 1
    assert len(call.session.truncations) == 1
    truncation = call.session.truncations[0]
    played = call.played_at_clear[0]
    assert abs(truncation.audio_end_ms - played) <= 1, (truncation.audio_end_ms, played)
    assert truncation.audio_end_ms <= played + 1  # never keeps audio the caller did not hear
    spans_after = [
        s for s in call.phone.spans if s.start_ms > call.clear_at[0] and s.start_ms < call.clear_at[0] + 200
    ]
    assert spans_after == []
    barged = [n for n in call.notes if isinstance(n, BargedIn)]
    assert len(barged) == 1
    assert barged[0].decision.truncated == truncation_command(call)


def truncation_command(call: SimCall) -> object:
    """The TruncateItem the core decided, as the session recorded it."""
    from gateway.realtime.events import TruncateItem

    t = call.session.truncations[0]
    return TruncateItem(t.item_id, t.content_index, t.audio_end_ms)


def test_local_detection_barges_in_without_waiting_for_server_vad() -> None:
    """With BARGE_IN=local the core clears on its own detector, before the session's VAD has spoken."""
    call = SimCall(config=CallConfig(barge_in=BargeInMode.LOCAL))
    call.speak(speech_ulaw(800) + silence_ulaw(700))
    while call.phone.played_ms < 600:
        call.speak(silence_ulaw(FRAME_MS))
    started_speaking = call.now
    call.speak(speech_ulaw(200))
    assert len(call.clear_at) == 1
    assert call.clear_at[0] - started_speaking <= 100  # the detector's attack, a few frames
    assert call.session.truncations


def test_no_audio_follows_a_clear_even_if_queued() -> None:
    """Bot audio queued in the core when the caller barges in is dropped, never pulled."""
    core = CallCore(CallConfig(), AudioFormat.PCM16)
    core.receive_realtime(_created("r1"), 0)
    core.receive_realtime(_delta("r1", "i1", 1000), 0)
    first = core.next_leg_command(0)
    assert isinstance(first, PlayAudio)
    core.receive_realtime(_speech_started(), 100)
    assert isinstance(core.next_leg_command(100), ClearPlayback)
    assert core.next_leg_command(100) is None


def test_flood_ends_the_call() -> None:
    """Caller audio far faster than real time is dropped, then the core says the call must end."""
    core = CallCore(CallConfig(), AudioFormat.PCM16)
    for _ in range(800):
        core.receive_caller_audio(b"\xff" * FRAME, 0)
    ends = [n for n in core.notes() if isinstance(n, CallMustEnd)]
    assert ends
    assert ends[0].outcome is Outcome.FLOOD


def test_greeting_is_asked_for_at_start() -> None:
    """With a greeting, start() asks the session for a response with those instructions."""
    core = CallCore(CallConfig(greeting="Say hello"), AudioFormat.PCM16)
    core.start()
    assert core.realtime_to_send() == [CreateResponse(instructions="Say hello")]


def test_replaced_session_asks_again_for_an_owed_answer() -> None:
    """A session lost after the caller's turn ended, before the answer began, gets a new response.create."""
    core = CallCore(CallConfig(), AudioFormat.PCM16)
    core.receive_realtime(_speech_stopped(900), 1000)
    assert core.session_replaced(carried_audio_ms=40.0, now_ms=1100)
    assert core.realtime_to_send() == [CreateResponse()]
    assert not core.session_replaced(carried_audio_ms=0.0, now_ms=1200)


def _created(response_id: str) -> object:
    from gateway.realtime.events import ResponseCreated

    return ResponseCreated(response_id)


def _delta(response_id: str, item_id: str, ms: int) -> object:
    from gateway.realtime.events import AudioDelta

    return AudioDelta(response_id, item_id, 0, b"\x00\x10" * (ms * 24))


def _speech_started() -> object:
    from gateway.realtime.events import SpeechStarted

    return SpeechStarted(audio_start_ms=0, item_id="u1")


def _speech_stopped(audio_end_ms: int) -> object:
    from gateway.realtime.events import SpeechStopped

    return SpeechStopped(audio_end_ms=audio_end_ms, item_id="u1")


def test_playout_rule_cuts_whole_frames_and_pads_the_last() -> None:
    """A leg that takes only whole 20 ms L16 frames (Vonage-like) gets them: short audio waits for more
    of its item, and the item's end is padded with silence to a whole frame."""
    from gateway.realtime.events import AudioDone
    from gateway.telephony.events import PlayoutRule
    from telcodec import WireFormat

    leg = WireFormat.of("l16", 16000)
    rule = PlayoutRule(chunk_ms=20, min_bytes=640, multiple_bytes=640)
    core = CallCore(CallConfig(), AudioFormat.PCM16, leg, rule)
    core.receive_realtime(_created("r1"), 0)
    core.receive_realtime(_delta("r1", "i1", 50), 0)  # 50 ms: two frames now, 10 ms held back
    sizes = []
    while (command := core.next_leg_command(0)) is not None:
        assert isinstance(command, PlayAudio)
        sizes.append(len(command.payload))
    assert sizes == [640, 640]
    core.receive_realtime(AudioDone("r1", "i1"), 10)
    tail = core.next_leg_command(10)
    assert isinstance(tail, PlayAudio)
    assert len(tail.payload) == 640
    assert tail.end_position == 3 * 320  # positions count samples at the leg's rate
    assert core.next_leg_command(10) is None


def test_g711_session_refuses_a_non_mulaw_leg() -> None:
    """AUDIO_MODE=g711 passes mu-law through; a leg in another format is refused with a clear error."""
    from telcodec import WireFormat

    with pytest.raises(ValueError, match="AUDIO_MODE=g711"):
        CallCore(CallConfig(), AudioFormat.G711_ULAW, WireFormat.of("alaw", 8000))


def test_max_ahead_holds_audio_until_playback_catches_up() -> None:
    """With a bounded provider buffer, the core sends no more than max_ahead_ms ahead of playback and
    releases the rest as time (and confirmations) move the playhead."""
    from gateway.telephony.events import PlayoutRule

    rule = PlayoutRule(chunk_ms=20, min_bytes=160, multiple_bytes=160, max_ahead_ms=100)
    core = CallCore(CallConfig(), AudioFormat.PCM16, playout=rule)
    core.receive_realtime(_created("r1"), 0)
    core.receive_realtime(_delta("r1", "i1", 1000), 0)
    sent_at_0 = 0
    while core.next_leg_command(0) is not None:
        sent_at_0 += 1
    assert sent_at_0 == 5  # 100 ms of 20 ms frames
    assert core.next_leg_command(10) is not None  # 90 ms queued: one more frame may go
    assert core.next_leg_command(10) is None  # 110 ms queued: held
    released = 0
    while core.next_leg_command(60) is not None:
        released += 1
    assert released == 2  # 60 ms queued at 60: two frames bring it back to 100 ms
    assert core.tracker.queued_samples(60) == 100 * 8


def _key_items(call: SimCall) -> list[str]:
    """The texts of the user items the session received (what the model was told of keys)."""
    return [
        part["text"]
        for event in call.session.client_events
        if event["type"] == "conversation.item.create"
        for part in event["item"]["content"]  # type: ignore[index, union-attr]
    ]


def test_keys_reach_the_model_as_one_user_item_then_a_response() -> None:
    """1 2 3 # -> one user item naming the keys, then response.create; the model answers it."""
    call = SimCall()
    for key in "123#":
        call.advance(call.now + 150)
        call.core.receive_dtmf(key, int(call.now))
        call._flush()
    assert _key_items(call) == ["The caller pressed 1 2 3 #"]
    kinds = [event["type"] for event in call.session.client_events]
    assert kinds.index("response.create") > kinds.index("conversation.item.create")
    call.speak(silence_ulaw(400))
    assert call.session.responses
    assert [n.digit for n in call.notes if isinstance(n, DtmfPressed)] == list("123#")


def test_a_pause_ends_an_entry_without_terminator() -> None:
    """Keys then a pause of DTMF_PAUSE_MS (the caller's frames keep coming) -> the item is sent."""
    call = SimCall(config=CallConfig(dtmf=DtmfSettings(pause_ms=1000)))
    call.core.receive_dtmf("4", int(call.now))
    call.core.receive_dtmf("2", int(call.now))
    call.speak(silence_ulaw(900))
    assert _key_items(call) == []
    call.speak(silence_ulaw(200))
    assert _key_items(call) == ["The caller pressed 4 2"]


def test_a_key_while_the_bot_talks_is_a_barge_in() -> None:
    """A key pressed while the bot is heard clears the phone, cancels and truncates, in server VAD mode
    too (the service's VAD never hears a key: the gateway cancels the response still being generated)."""
    call = SimCall(emulator=EmulatorConfig(reply_ms=3000, realtime_factor=1.0))
    call.speak(speech_ulaw(800) + silence_ulaw(700))
    while call.phone.played_ms < 500:
        call.speak(silence_ulaw(FRAME_MS))
    call.core.receive_dtmf("5", int(call.now))
    call._flush()
    assert len(call.clear_at) == 1
    assert len(call.session.truncations) == 1
    assert abs(call.session.truncations[0].audio_end_ms - call.played_at_clear[0]) <= 1
    assert any(event["type"] == "response.cancel" for event in call.session.client_events)


def test_dtmf_off_counts_keys_and_tells_the_model_nothing() -> None:
    """DTMF_MODE=off: keys are noted (metrics, summary) and never sent, nor do they interrupt."""
    call = SimCall(config=CallConfig(dtmf=DtmfSettings(forward=False)))
    for key in "12#":
        call.core.receive_dtmf(key, int(call.now))
    call._flush()
    call.speak(silence_ulaw(3000))
    assert _key_items(call) == []
    assert [n.digit for n in call.notes if isinstance(n, DtmfPressed)] == list("12#")
