"""Transcript and recording files: an incremental WAV that survives a crash, JSON lines that parse, a bot
turn cut where the caller barged in, safe file names, and the call-events payload."""

from __future__ import annotations

import json
import os
import signal
import wave
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.call.core import BargedIn, CallConfig, CallCore
from gateway.call.recorder import (
    CallMeta,
    CallRecord,
    RecordSettings,
    TranscriptWriter,
    WavWriter,
    call_events_payload,
    file_stem,
    heard_text,
    safe_call_id,
)
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.realtime.events import (
    AudioDelta,
    AudioDone,
    RealtimeEvent,
    ResponseCreated,
    ResponseDone,
    SpeechStarted,
    TranscriptDone,
    UserTranscript,
)
from gateway.realtime.link import SessionReconnected
from gateway.realtime.session import AudioFormat
from gateway.telephony.events import CallStarted, PlayAudio

RATE = 8000
MS = RATE // 1000
WALL = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
SILENT_FRAME = b"\xff" * 160  # 20 ms of mu-law silence
BOT_TEXT = "One two three four five six seven eight nine ten eleven twelve."


def stereo(n_frames: int, first: int = 0) -> bytes:
    """`n_frames` of interleaved stereo PCM16 with distinct values."""
    return (np.arange(first, first + 2 * n_frames) % 20000).astype("<i2").tobytes()


def test_wav_is_readable_after_the_writer_is_killed(tmp_path: Path) -> None:
    """A writer killed mid-call (SIGKILL, no close) leaves a WAV the stdlib reads, holding at least all
    audio up to the last header update."""
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    path = tmp_path / "crash.wav"
    pid = os.fork()
    if pid == 0:  # the child: write 1.25 s in 50 ms pieces, then die without closing
        try:
            writer = WavWriter(path, RATE, sync_every_s=0.5)
            for i in range(25):
                writer.append(stereo(50 * MS, first=i * 100 * MS))
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, RATE)
        frames = wav.getnframes()
        data = wav.readframes(frames)
    assert frames == 1000 * MS  # synced at 0.5 s and 1.0 s; the last 0.25 s was still in the buffer
    assert data == stereo(1000 * MS)


def test_wav_snapshot_is_readable_while_open_and_complete_after_close(tmp_path: Path) -> None:
    """The file on disk is a valid WAV at every sync, and close writes the final sizes."""
    path = tmp_path / "a.wav"
    writer = WavWriter(path, 16000)
    with wave.open(str(path), "rb") as wav:
        assert wav.getnframes() == 0
    writer.append(stereo(16000))
    snapshot = tmp_path / "snapshot.wav"
    snapshot.write_bytes(path.read_bytes())
    with wave.open(str(snapshot), "rb") as wav:
        assert wav.getnframes() == 16000
    writer.append(stereo(100, first=32000))
    writer.close()
    writer.close()
    with wave.open(str(path), "rb") as wav:
        assert wav.getframerate() == 16000
        assert wav.readframes(wav.getnframes()) == stereo(16000) + stereo(100, first=32000)
    with pytest.raises(FileExistsError):
        WavWriter(path, 8000)


def test_wav_refuses_partial_frames(tmp_path: Path) -> None:
    """Appending half a stereo frame is a bug: refused."""
    writer = WavWriter(tmp_path / "b.wav", RATE)
    with pytest.raises(ValueError, match="whole number"):
        writer.append(b"\x00\x00")
    writer.close()


def test_transcript_lines_are_flushed_as_written(tmp_path: Path) -> None:
    """Each entry is one JSON line, on disk as soon as it is written (no close needed)."""
    writer = TranscriptWriter(tmp_path / "t.jsonl")
    writer.write({"t_ms": 0, "type": "caller", "text": "héllo\nthere"})
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"t_ms": 0, "type": "caller", "text": "héllo\nthere"}]
    writer.close()


@pytest.mark.parametrize(
    ("call_id", "expected"),
    [
        ("CA0123456789abcdef", "CA0123456789abcdef"),
        ("v3:abc-DEF_1.2", None),
        ("../../etc/passwd", None),
        ("", None),
        ("..", None),
        ("a" * 200, None),
        ("рус/ский", None),
    ],
)
def test_call_ids_are_sanitised_for_file_names(call_id: str, expected: str | None) -> None:
    """Safe ids stay as they are; any other is reduced to [A-Za-z0-9._-], never hidden, empty or a path,
    bounded in length, and tagged with a hash of the original."""
    name = safe_call_id(call_id)
    if expected is not None:
        assert name == expected
        return
    assert name
    assert not name.startswith(".")
    assert "/" not in name
    assert "\\" not in name
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert len(name) <= 64 + 9
    assert name != safe_call_id(call_id + "x")


def test_distinct_unsafe_ids_get_distinct_names() -> None:
    """Two ids that clean up to the same text keep different names."""
    assert safe_call_id("a/b") != safe_call_id("a:b")


def test_file_stem_is_utc_date_time_then_call_id() -> None:
    """`<YYYYMMDD>T<HHMMSS>Z_<id>`, in UTC whatever the clock's zone."""
    assert file_stem("CA1", WALL) == "20250102T030405Z_CA1"


def test_heard_text_cuts_at_the_heard_share() -> None:
    """Half the audio heard: about half the text, trailing space trimmed; nothing known: nothing."""
    assert heard_text("abcd efgh", 500, 1000) == "abcd"
    assert heard_text("abcd", 2000, 1000) == "abcd"
    assert heard_text("abcd", 0, 0) == ""


# -- the facade, on a real call core and a simulated clock -------------------------------------------


def tone_pcm24k(ms: int) -> bytes:
    """A loud 440 Hz tone, PCM16 at 24 kHz (the session's output)."""
    t = np.arange(ms * 24) / 24000
    return (np.sin(2 * np.pi * 440 * t) * 12000).astype("<i2").tobytes()


class Call:
    """A call core and its recorder, wired as the bridge wires them, on a simulated clock."""

    def __init__(self, settings: RecordSettings, call_id: str = "CA/1 2", now: int = 10_000) -> None:
        self.core = CallCore(CallConfig(), AudioFormat.PCM16)
        self.now = now
        started = CallStarted("MZ1", call_id, "AC1", ("inbound",), {"From": "+15550100", "To": "+15550199"})
        self.record = CallRecord(settings, CallMeta.of("twilio", started), self.core, now, wall=WALL)

    def pump(self) -> None:
        """Pull the core's leg commands and notes, feeding the recorder as the bridge does."""
        while (command := self.core.next_leg_command(self.now)) is not None:
            if isinstance(command, PlayAudio):
                self.record.bot_audio(command.payload, command.end_position, self.now)
        for note in self.core.notes():
            if isinstance(note, BargedIn):
                self.record.barge_in(note)

    def event(self, event: RealtimeEvent) -> None:
        self.core.receive_realtime(event, self.now)
        self.record.realtime(event, self.now)
        self.pump()

    def frames(self, ms: int) -> None:
        """`ms` of silent caller frames, one every 20 ms."""
        for _ in range(ms // 20):
            self.now += 20
            self.core.receive_caller_audio(SILENT_FRAME, self.now)
            self.record.caller_audio(SILENT_FRAME, self.now)
            self.pump()

    def bot_says(self, response: str, item: str, ms: int, text: str) -> None:
        """A whole bot answer arriving at once (faster than real time), with its transcript."""
        self.event(ResponseCreated(response))
        for _ in range(ms // 100):
            self.event(AudioDelta(response, item, 0, tone_pcm24k(100)))
        self.event(AudioDone(response, item))
        self.event(TranscriptDone(response, item, text))


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_barge_in_cuts_the_bot_turn_and_the_recording_at_the_same_point(tmp_path: Path) -> None:
    """The caller talks over a 2 s answer after about 1 s of it: the transcript's bot line carries the
    heard share of the text and is marked interrupted; the WAV's bot channel goes silent at that moment;
    a later answer that plays in full is written whole."""
    settings = RecordSettings(tmp_path / "t", tmp_path / "r", keep_entries=True)
    settings.transcript_dir.mkdir()  # type: ignore[union-attr]
    settings.recording_dir.mkdir()  # type: ignore[union-attr]
    call = Call(settings)
    call.frames(200)
    call.event(SpeechStarted(0, "u1"))
    call.frames(400)
    call.event(UserTranscript("u1", "What is the time?"))
    call.bot_says("r1", "b1", 2000, BOT_TEXT)
    bot_started = call.now
    call.frames(1000)
    barge_at = call.now
    call.event(SpeechStarted(1500, "u2"))
    call.event(ResponseDone("r1", "cancelled"))
    call.frames(600)
    call.event(UserTranscript("u2", "Stop."))
    call.bot_says("r2", "b2", 500, "Okay.")
    call.frames(800)
    call.record.dtmf("5", call.now)
    call.record.tool_call("lookup", '{"q": 1}', "call_1", call.now)
    call.record.tool_result("call_1", "found", call.now)
    entries = call.record.close({"outcome": "completed", "barge_ins": 1}, call.now)

    transcript = call.record.transcript_path
    assert transcript is not None
    assert transcript.name.startswith("20250102T030405Z_CA_1_2-")  # cleaned, plus a hash
    lines = read_lines(transcript)
    assert [line["type"] for line in lines] == [
        "call_start",
        "caller",
        "bot",
        "caller",
        "bot",
        "dtmf",
        "tool_call",
        "tool_result",
        "call_end",
    ]
    assert lines[0]["from"] == "+15550100"
    assert lines[0]["call_id"] == "CA/1 2"
    assert lines[0]["at"] == "2025-01-02T03:04:05.000Z"
    cut = lines[2]
    assert cut["interrupted"] is True
    assert cut["total_ms"] == 2000
    assert 950 <= cut["heard_ms"] <= 1050
    assert BOT_TEXT.startswith(cut["text"])
    assert 0.4 * len(BOT_TEXT) <= len(cut["text"]) <= 0.55 * len(BOT_TEXT)
    assert cut["full_text"] == BOT_TEXT
    assert bot_started - 10_000 <= cut["t_ms"] <= bot_started - 10_000 + 60
    whole = lines[4]
    assert (whole["text"], whole["interrupted"], whole["heard_ms"]) == ("Okay.", False, 500)
    assert lines[6]["arguments"] == {"q": 1}
    assert lines[-1]["outcome"] == "completed"
    assert lines[-1]["duration_ms"] == call.now - 10_000
    assert [e["t_ms"] for e in entries] == sorted(line["t_ms"] for line in lines)

    recording = call.record.recording_path
    assert recording is not None
    assert recording.stem == transcript.stem
    with wave.open(str(recording), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, RATE)
        both = np.frombuffer(wav.readframes(wav.getnframes()), "<i2")
    assert len(both) // 2 == (call.now - 10_000) * MS
    bot = both[1::2].astype(np.int32)
    barge = (barge_at - 10_000) * MS
    heard = cut["heard_ms"] * MS
    assert np.abs(bot[barge - heard + 10 * MS : barge - 10 * MS]).mean() > 3000  # the bot talking
    assert not bot[barge : barge + 500 * MS].any()  # and silent from the barge-in on
    assert not both[0::2].any()  # the caller sent silence


def test_unfinished_bot_turn_is_cut_by_the_end_of_the_call(tmp_path: Path) -> None:
    """The caller hangs up mid-answer: the turn is written at close with what was heard."""
    call = Call(RecordSettings(transcript_dir=tmp_path))
    call.bot_says("r1", "b1", 2000, BOT_TEXT)
    call.frames(500)
    call.record.close({}, call.now)
    path = call.record.transcript_path
    assert path is not None
    bot = next(line for line in read_lines(path) if line["type"] == "bot")
    assert bot["interrupted"] is True
    assert 450 <= bot["heard_ms"] <= 520
    assert call.record.recording_path is None


def test_nothing_configured_writes_nothing(tmp_path: Path) -> None:
    """With no directory and no webhook, the recorder stays out of the way and returns no entries."""
    call = Call(RecordSettings())
    assert not call.record.enabled
    call.bot_says("r1", "b1", 300, "Hi.")
    call.frames(400)
    assert call.record.close({}, call.now) == []
    assert list(tmp_path.iterdir()) == []


def test_same_call_in_the_same_second_gets_a_second_name(tmp_path: Path) -> None:
    """Files are never overwritten: a second call with the same id and start second gets `-1`."""
    settings = RecordSettings(tmp_path, tmp_path)
    first, second = Call(settings, "CA1"), Call(settings, "CA1")
    assert first.record.transcript_path == tmp_path / "20250102T030405Z_CA1.jsonl"
    assert second.record.recording_path == tmp_path / "20250102T030405Z_CA1-1.wav"
    for call in (first, second):
        call.record.close({}, call.now)


def test_call_events_payload_carries_call_summary_transcript_and_recording(tmp_path: Path) -> None:
    """The webhook body names the call, its times, the summary, every transcript entry and the file."""
    call = Call(RecordSettings(recording_dir=tmp_path, keep_entries=True), "CA9")
    call.frames(100)
    call.event(UserTranscript("u1", "Hi"))
    entries = call.record.close({"outcome": "completed"}, call.now)
    payload = call_events_payload({"outcome": "completed"}, entries, call.record.recording_path)
    assert payload["event"] == "call.ended"
    assert (payload["call_id"], payload["provider"], payload["from"]) == ("CA9", "twilio", "+15550100")
    assert payload["started_at"] == "2025-01-02T03:04:05.000Z"
    assert payload["ended_at"] == "2025-01-02T03:04:05.100Z"
    assert payload["duration_ms"] == 100
    assert [e["type"] for e in payload["transcript"]] == ["call_start", "caller", "call_end"]
    assert payload["recording"] == {
        "path": str(tmp_path / "20250102T030405Z_CA9.wav"),
        "format": "wav",
        "sample_rate": RATE,
        "channels": ["caller", "bot"],
    }
    json.dumps(payload)
    assert call_events_payload({}, [], None)["recording"] is None


def test_settings_refuse_a_record_dir_that_is_missing_or_a_file(tmp_path: Path) -> None:
    """TRANSCRIPT_DIR and RECORDING_DIR must be existing directories: start-up names the bad one."""
    settings = load_settings({"TRANSCRIPT_DIR": str(tmp_path), "RECORDING_DIR": str(tmp_path)})
    assert settings.transcript_dir == settings.recording_dir == str(tmp_path)
    with pytest.raises(ConfigError, match=r"TRANSCRIPT_DIR=.*not an existing directory"):
        load_settings({"TRANSCRIPT_DIR": str(tmp_path / "missing")})
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="RECORDING_DIR="):
        load_settings({"RECORDING_DIR": str(tmp_path / "file")})


def test_a_replaced_session_settles_its_bot_turns_once_played(tmp_path: Path) -> None:
    """The old session's item never gets its audio.done; the replacement says no more audio comes, so
    the turn is written as played in full once its audio has played, not at the end of the call."""
    call = Call(RecordSettings(transcript_dir=tmp_path))
    call.event(ResponseCreated("r1"))
    call.event(AudioDelta("r1", "b1", 0, tone_pcm24k(300)))
    call.event(TranscriptDone("r1", "b1", "Hello there."))
    call.record.realtime(SessionReconnected("drop", 0), call.now)
    call.frames(600)
    path = call.record.transcript_path
    assert path is not None
    bot = read_lines(path)[-1]
    assert (bot["type"], bot["text"], bot["interrupted"]) == ("bot", "Hello there.", False)
    call.record.close({}, call.now)
