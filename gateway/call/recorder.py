"""Per-call transcripts (JSON lines) and stereo recordings (WAV): the files, and the facade the bridge owns.

`CallRecord` is built by the bridge once the leg has started (the core exists, so the leg's rate and the
playback tracker are known) and is fed at the moments listed on its methods. It writes, per call:

- `<TRANSCRIPT_DIR>/<YYYYMMDD>T<HHMMSS>Z_<call id>.jsonl`: one JSON object per line, each line handed
  to the OS as it is written: `{"t_ms": ms since the call started, "at": ISO-8601 UTC, "type": ...}`
  with type `call_start`, `caller`, `bot`, `dtmf`, `tool_call`, `tool_result`, `call_end`. Lines are in
  the order they were written; `t_ms` is when the thing happened (a caller turn: when the caller
  started speaking; a bot turn: when its audio started playing), so a bot turn, written once its
  playback is settled, can carry an earlier `t_ms` than the line before it.
- `<RECORDING_DIR>/<same name>.wav`: stereo PCM16 at the leg's rate, the caller left and the bot right
  (`gateway.call.record`). The header's sizes are rewritten after every second of audio, so a crash
  leaves a file that any WAV reader opens, complete up to the last second or so.

A bot turn is written once both its final text (`TranscriptDone`) and its fate are known: interrupted
(a barge-in: its text is cut at the share of its audio the caller heard, `"interrupted": true`), played
in full (its audio is done and has all played), or cut by the end of the call. File errors are logged
and turn that output off; they never end the call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import structlog

from gateway.call.core import BargedIn, CallCore
from gateway.call.record import CHANNELS, StereoMixer, TrackerTap
from gateway.realtime.events import (
    AudioDelta,
    AudioDone,
    RealtimeEvent,
    ResponseDone,
    SpeechStarted,
    TranscriptDone,
    UserTranscript,
)
from gateway.realtime.link import SessionReconnected
from gateway.realtime.transcript import heard_share
from gateway.telephony.events import CallStarted

__all__ = [
    "CallMeta",
    "CallRecord",
    "RecordSettings",
    "TranscriptWriter",
    "WavWriter",
    "call_events_payload",
    "file_stem",
    "heard_text",
    "safe_call_id",
    "wav_header",
]

log = structlog.get_logger(__name__)

SAMPLE_WIDTH: Final = 2  # PCM16
WAV_HEADER_BYTES: Final = 44
MAX_WAV_DATA_BYTES: Final = (0xFFFFFFFF - (WAV_HEADER_BYTES - 8)) // 4 * 4  # RIFF sizes are 32-bit
SYNC_EVERY_S: Final = 1.0  # rewrite the WAV header after this much audio
WRITE_BUFFER_BYTES: Final = 64 * 1024
TAKE_EVERY_MS: Final = 200  # drain the mixer and settle bot turns this often (from caller frames)
MAX_ID_CHARS: Final = 64
MAX_NAME_TRIES: Final = 100
MAX_TOOL_TEXT_CHARS: Final = 8192  # a tool's arguments or output beyond this are clipped in the transcript
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


# -- files ------------------------------------------------------------------------------------------


def wav_header(sample_rate: int, channels: int, data_bytes: int) -> bytes:
    """The 44-byte header of a PCM16 WAV file holding `data_bytes` of audio."""
    block = channels * SAMPLE_WIDTH
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        WAV_HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * block,
        block,
        8 * SAMPLE_WIDTH,
        b"data",
        data_bytes,
    )


class WavWriter:
    """A PCM16 WAV file written as it grows: the header first, audio appended, and the RIFF and data
    sizes rewritten after every `sync_every_s` of audio (and on `sync`/`close`), always after the audio
    they count has been handed to the OS. A process killed mid-call leaves a readable file.

    Refuses to overwrite (FileExistsError). Stops growing at the format's 4 GiB limit.
    """

    def __init__(
        self, path: Path, sample_rate: int, channels: int = CHANNELS, *, sync_every_s: float = SYNC_EVERY_S
    ) -> None:
        self.path = path
        self.sample_rate = sample_rate
        self.channels = channels
        self._frame = channels * SAMPLE_WIDTH
        self._sync_every = max(1, int(sample_rate * sync_every_s)) * self._frame
        self._data = self._synced = 0
        self._file = path.open("xb", buffering=WRITE_BUFFER_BYTES)
        self._file.write(wav_header(sample_rate, channels, 0))
        self._file.flush()

    @property
    def data_bytes(self) -> int:
        """Audio appended so far, in bytes."""
        return self._data

    @property
    def closed(self) -> bool:
        """`close` was called."""
        return self._file.closed

    def append(self, pcm: bytes) -> None:
        """Append whole frames of interleaved PCM16 (ValueError on a partial frame)."""
        if len(pcm) % self._frame:
            raise ValueError(f"{len(pcm)} bytes is not a whole number of {self._frame}-byte frames")
        pcm = pcm[: MAX_WAV_DATA_BYTES - self._data]
        if not pcm:
            return
        self._file.write(pcm)
        self._data += len(pcm)
        if self._data - self._synced >= self._sync_every:
            self.sync()

    def sync(self) -> None:
        """Make the file a complete WAV of everything appended so far: the audio first, then its sizes."""
        if self._synced == self._data:
            return
        file = self._file
        file.flush()
        file.seek(4)
        file.write(struct.pack("<I", WAV_HEADER_BYTES - 8 + self._data))
        file.seek(WAV_HEADER_BYTES - 4)
        file.write(struct.pack("<I", self._data))
        file.seek(0, os.SEEK_END)
        file.flush()
        self._synced = self._data

    def close(self) -> None:
        """Write the final sizes and close (idempotent)."""
        if self._file.closed:
            return
        try:
            self.sync()
        finally:
            self._file.close()


class TranscriptWriter:
    """A JSON-lines file: one object per line, each line handed to the OS as it is written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = path.open("x", encoding="utf-8", buffering=1, newline="\n")  # line-buffered

    def write(self, entry: Mapping[str, Any]) -> None:
        """Append one object as one line."""
        self._file.write(json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n")

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()


def safe_call_id(call_id: str) -> str:
    """`call_id` as a file-name part: ASCII letters, digits, `.`, `_` and `-` only, never empty, hidden or
    a path, at most MAX_ID_CHARS; an id that had to change gets a hash of the original, so two ids never
    share a name."""
    cleaned = _UNSAFE.sub("_", call_id).lstrip(".")[:MAX_ID_CHARS]
    if cleaned and cleaned == call_id:
        return cleaned
    digest = hashlib.sha256(call_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned or 'call'}-{digest}"


def file_stem(call_id: str, started: datetime) -> str:
    """`<YYYYMMDD>T<HHMMSS>Z_<call id>`: the name of a call's files, without the extension."""
    return f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}_{safe_call_id(call_id)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def heard_text(text: str, heard_ms: int, total_ms: int) -> str:
    """The part of a bot item's `text` the caller heard: cut at the heard share of its audio."""
    return heard_share(text, heard_ms / total_ms if total_ms > 0 else 0.0)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TOOL_TEXT_CHARS else text[:MAX_TOOL_TEXT_CHARS] + "…"


def _arguments(arguments: str) -> Any:
    """A tool call's arguments as JSON when they parse (they should), else as clipped text."""
    if len(arguments) <= MAX_TOOL_TEXT_CHARS:
        try:
            return json.loads(arguments)
        except ValueError:
            pass
    return _clip(arguments)


# -- the facade -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordSettings:
    """Where a call's files go (None: that output is off), and whether the call-events webhook wants the
    transcript back from `CallRecord.close`."""

    transcript_dir: Path | None = None
    recording_dir: Path | None = None
    keep_entries: bool = False

    @property
    def enabled(self) -> bool:
        """Anything is recorded at all."""
        return bool(self.transcript_dir or self.recording_dir or self.keep_entries)


@dataclass(frozen=True, slots=True)
class CallMeta:
    """Who the call is between, for the transcript's first line and the webhook."""

    call_id: str
    provider: str
    caller: str | None = None  # "from"
    callee: str | None = None  # "to"

    @classmethod
    def of(cls, provider: str, call: CallStarted) -> CallMeta:
        """From a leg's start: the numbers come from the custom parameters the answer webhook forwarded
        (`From`/`To`, as Twilio, Plivo and Exotel name them; `from`/`to`, as Vonage does)."""
        params = call.custom_parameters

        def pick(*names: str) -> str | None:
            return next((params[name] for name in names if params.get(name)), None)

        return cls(call.call_id, provider, pick("From", "from"), pick("To", "to"))


@dataclass(slots=True)
class _BotTurn:
    """A bot item on its way to the transcript."""

    item_id: str
    started_ms: int  # when its audio started playing (as estimated when its first audio arrived)
    response_id: str | None = None
    text: str | None = None
    audio_done: bool = False
    settled: bool = False  # its playback is over: `cut` says how
    cut: tuple[int, int] | None = None  # (heard_ms, total_ms) when it was interrupted


class CallRecord:
    """One call's transcript and recording. Build it right after the call core (`CallCore`) exists, feed
    it as each method says, and `close` it when the call ends. With nothing configured it does nothing,
    cheaply. It reads the core's tracker, timeline and audio decoder; it never changes the core."""

    def __init__(
        self,
        settings: RecordSettings,
        meta: CallMeta,
        core: CallCore,
        now_ms: int,
        *,
        wall: datetime | None = None,
    ) -> None:
        """`now_ms`: the call's clock now (the recording's first sample, `t_ms` 0); `wall`: the same moment
        in UTC (default: now)."""
        self.settings = settings
        self.meta = meta
        self._core = core
        self._rate = core.leg_format.rate
        self._start_ms = now_ms
        self._wall = (wall or datetime.now(UTC)).astimezone(UTC)
        self._entries: list[dict[str, Any]] | None = [] if settings.keep_entries else None
        self._transcript: TranscriptWriter | None = None
        self._wav: WavWriter | None = None
        self._tap: TrackerTap | None = None
        self._bots: dict[str, _BotTurn] = {}
        self._speech: dict[str, int] = {}  # caller items: when the caller started speaking
        self._next_due_ms = now_ms
        self._closed = False
        if settings.enabled:
            self._open(file_stem(meta.call_id, self._wall), now_ms)
        self._add(
            now_ms,
            "call_start",
            {
                "call_id": meta.call_id,
                "provider": meta.provider,
                "from": meta.caller,
                "to": meta.callee,
                "sample_rate": self._rate,
                "recording": self._wav.path.name if self._wav else None,
            },
        )

    @property
    def enabled(self) -> bool:
        """Something is being recorded."""
        return self._transcript is not None or self._wav is not None or self._entries is not None

    @property
    def transcript_path(self) -> Path | None:
        """The transcript file, if one is being written."""
        return self._transcript.path if self._transcript else None

    @property
    def recording_path(self) -> Path | None:
        """The WAV file, if one is being written."""
        return self._wav.path if self._wav else None

    # -- audio ---------------------------------------------------------------------------------------

    def caller_audio(self, payload: bytes, now_ms: int) -> None:
        """A caller frame (the leg's encoding) the core was just given (`MediaReceived`, inbound track)."""
        if self._tap is not None:
            self._tap.caller(self._core.audio.caller_samples(payload), now_ms)
        if now_ms >= self._next_due_ms:
            self._next_due_ms = now_ms + TAKE_EVERY_MS
            self._write_audio(now_ms)
            self._settle(now_ms)

    def bot_audio(self, payload: bytes, end_position: int, now_ms: int) -> None:
        """A `PlayAudio` the core just handed out at `now_ms`: call it before awaiting its send."""
        if self._tap is not None:
            self._tap.sent(self._core.audio.caller_samples(payload), end_position, now_ms)

    def tick(self, now_ms: int) -> None:
        """Sample the playback tracker now: call it just before the core takes a playback confirmation
        (`PlayedTo`), whose re-anchoring would otherwise blur where the bot's audio played."""
        if self._tap is not None:
            self._tap.sample(now_ms)

    def barge_in(self, note: BargedIn) -> None:
        """The core's `BargedIn` note: the recording's bot channel stops at the heard point, and the
        interrupted bot turns are cut where the caller stopped hearing them."""
        decision = note.decision
        at = decision.decided_at_ms
        if self._tap is not None:
            self._tap.cleared(at, decision.flushed_ms)
        truncated = decision.truncated
        for turn in self._bots.values():
            if turn.settled:
                continue
            if truncated is not None and turn.item_id == truncated.item_id:
                turn.cut = (truncated.audio_end_ms, note.heard_of_ms)
            else:
                turn.cut = self._cut_at(turn, at)
            turn.settled = True
        self._write_settled()

    # -- conversation --------------------------------------------------------------------------------

    def realtime(self, event: RealtimeEvent | SessionReconnected, now_ms: int) -> None:
        """Any realtime event the core was given; the recorder takes what it needs from the few that
        matter (speech started, audio, transcripts, response done, a replaced session)."""
        match event:
            case SessionReconnected():
                for pending in self._bots.values():  # the old session's items get no more audio
                    pending.audio_done = True
            case AudioDelta(item_id=item_id, response_id=response_id):
                self.bot_delta(item_id, response_id, now_ms)
            case AudioDone(item_id=item_id):
                if (turn := self._bots.get(item_id)) is not None:
                    turn.audio_done = True
            case ResponseDone(response_id=response_id):
                for turn in self._bots.values():
                    if turn.response_id == response_id:
                        turn.audio_done = True
            case TranscriptDone(item_id=item_id, transcript=text):
                self.bot_turn(item_id, text, now_ms)
            case SpeechStarted(item_id=item_id, audio_start_ms=audio_start_ms):
                arrived = self._core.timeline.arrival_of(audio_start_ms)
                self.caller_started(item_id, now_ms if arrived is None else int(arrived))
            case UserTranscript(item_id=item_id, transcript=text):
                self.caller_turn(item_id, text, now_ms)
            case _:
                pass

    def bot_delta(self, item_id: str, response_id: str | None, now_ms: int) -> None:
        """Bot audio of `item_id` arrived (`AudioDelta`); the first one dates the turn."""
        if self._tap is not None:
            self._tap.item(item_id)
        if item_id not in self._bots and self._entries_on:
            queued = self._core.tracker.queued_samples(now_ms)  # it plays after what is queued
            self._bots[item_id] = _BotTurn(item_id, now_ms + queued * 1000 // self._rate, response_id)

    def bot_turn(self, item_id: str, text: str, now_ms: int) -> None:
        """The bot item's final text (`TranscriptDone`); written once its playback is settled."""
        if not self._entries_on:
            return
        turn = self._bots.get(item_id)
        if turn is None:
            turn = self._bots[item_id] = _BotTurn(item_id, now_ms)
        turn.text = text
        self._settle(now_ms)

    def caller_started(self, item_id: str, at_ms: int) -> None:
        """The caller started speaking at `at_ms` (`SpeechStarted`): the time of that caller turn."""
        if self._entries_on:
            self._speech[item_id] = at_ms

    def caller_turn(self, item_id: str, text: str, now_ms: int) -> None:
        """The caller's words for a user item (`UserTranscript`)."""
        self._settle(now_ms)
        self._add(self._speech.pop(item_id, now_ms), "caller", {"item_id": item_id, "text": text})

    def dtmf(self, keys: str, now_ms: int) -> None:
        """The caller pressed keys (the core's `DtmfPressed` note: one key)."""
        self._settle(now_ms)
        self._add(now_ms, "dtmf", {"keys": keys})

    def tool_call(self, name: str, arguments: str, call_id: str, now_ms: int) -> None:
        """The model called a tool with `arguments` (its JSON text)."""
        self._settle(now_ms)
        self._add(now_ms, "tool_call", {"call_id": call_id, "name": name, "arguments": _arguments(arguments)})

    def tool_result(self, call_id: str, output: str, now_ms: int) -> None:
        """The tool call `call_id` returned `output` (what goes back to the model)."""
        self._settle(now_ms)
        self._add(now_ms, "tool_result", {"call_id": call_id, "output": _clip(output)})

    def close(self, summary: Mapping[str, Any], now_ms: int) -> list[dict[str, Any]]:
        """The call ended: finish the recording, write the last turns and the `call_end` line (with
        `summary`, which must be JSON), close the files. Returns the transcript, ordered by `t_ms`, when
        `keep_entries` is set (for `call_events_payload`), else []. Idempotent."""
        if not self._closed:
            self._closed = True
            self._finish_audio(now_ms)
            for turn in list(self._bots.values()):
                if not turn.settled:
                    turn.cut, turn.settled = self._cut_at(turn, now_ms), True
                if turn.text is None and turn.cut is not None and turn.cut[0] == 0:
                    del self._bots[turn.item_id]  # no words, none of its audio heard: nothing to show
                elif turn.text is None:
                    turn.text = ""
            self._write_settled()
            self._add(now_ms, "call_end", {"duration_ms": now_ms - self._start_ms, **summary})
            if self._transcript is not None:
                self._transcript.close()
        return sorted(self._entries or [], key=lambda entry: int(entry["t_ms"]))

    # -- internals -----------------------------------------------------------------------------------

    @property
    def _entries_on(self) -> bool:
        return self._transcript is not None or self._entries is not None

    def _open(self, stem: str, now_ms: int) -> None:
        tdir, rdir = self.settings.transcript_dir, self.settings.recording_dir
        name = next(
            (
                candidate
                for candidate in (stem, *(f"{stem}-{n}" for n in range(1, MAX_NAME_TRIES)))
                if not (tdir and (tdir / f"{candidate}.jsonl").exists())
                and not (rdir and (rdir / f"{candidate}.wav").exists())
            ),
            f"{stem}-{os.getpid()}-{now_ms}",
        )
        try:
            if tdir is not None:
                self._transcript = TranscriptWriter(tdir / f"{name}.jsonl")
        except OSError as exc:
            log.warning("transcript_open_failed", path=str(tdir), error=str(exc))
        try:
            if rdir is not None:
                self._wav = WavWriter(rdir / f"{name}.wav", self._rate)
                self._tap = TrackerTap(StereoMixer(self._rate, now_ms), self._core.tracker)
        except OSError as exc:
            log.warning("recording_open_failed", path=str(rdir), error=str(exc))

    def _add(self, at_ms: int, kind: str, fields: Mapping[str, Any]) -> None:
        if not self._entries_on:
            return
        t_ms = at_ms - self._start_ms
        entry: dict[str, Any] = {
            "t_ms": t_ms,
            "at": _iso(self._wall + timedelta(milliseconds=t_ms)),
            "type": kind,
        }
        entry.update((key, value) for key, value in fields.items() if key not in entry)
        if self._entries is not None:
            self._entries.append(entry)
        if self._transcript is not None:
            try:
                self._transcript.write(entry)
            except (
                OSError,
                TypeError,
                ValueError,
            ) as exc:  # TypeError/ValueError: a summary that is not JSON
                log.warning("transcript_write_failed", path=str(self._transcript.path), error=str(exc))
                self._transcript.close()
                self._transcript = None

    def _write_audio(self, now_ms: int) -> None:
        if self._wav is None or self._tap is None:
            return
        try:
            self._wav.append(self._tap.mixer.take(now_ms))
        except OSError as exc:
            self._recording_failed(exc)

    def _finish_audio(self, now_ms: int) -> None:
        if self._wav is None or self._tap is None:
            return
        self._tap.sample(now_ms)
        try:
            self._wav.append(self._tap.mixer.finish(now_ms))
            self._wav.close()
        except OSError as exc:
            self._recording_failed(exc)
            return
        stats = self._tap.mixer.stats()
        log.debug(
            "recording_closed",
            path=str(self._wav.path),
            seconds=round(stats.released_samples / self._rate, 3),
            caller_dropped_ms=stats.caller_dropped_samples * 1000 // self._rate,
            bot_flushed_ms=stats.bot_flushed_samples * 1000 // self._rate,
            inexact_clears=self._tap.inexact_clears,
        )
        self._tap = None  # the file is complete: nothing more goes into it

    def _recording_failed(self, exc: OSError) -> None:
        assert self._wav is not None
        log.warning("recording_write_failed", path=str(self._wav.path), error=str(exc))
        with contextlib.suppress(OSError):
            self._wav.close()
        self._wav = self._tap = None

    def _cut_at(self, turn: _BotTurn, now_ms: int) -> tuple[int, int] | None:
        """None if the turn had played in full by `now_ms`, else (heard ms, ms received of it)."""
        figures = self._core.tracker.item(turn.item_id, now_ms)
        total = self._core.bargein.received_ms(turn.item_id)
        if turn.audio_done and figures.finished and (figures.sent_samples or total == 0):
            return None
        return (min(figures.heard_ms, total), total)

    def _settle(self, now_ms: int) -> None:
        """Bot turns whose audio is done and has all played are settled as played in full."""
        if not self._bots:
            return
        tracker = self._core.tracker
        for turn in self._bots.values():
            if turn.settled or turn.text is None or not turn.audio_done:
                continue
            figures = tracker.item(turn.item_id, now_ms)
            # An item none of whose audio was sent yet may be held behind another one's: wait for silence.
            if figures.finished and (figures.sent_samples or not tracker.is_audible(now_ms)):
                turn.settled = True
        self._write_settled()

    def _write_settled(self) -> None:
        """Write the settled turns whose text is known, in the order they started."""
        done = [turn for turn in self._bots.values() if turn.settled and turn.text is not None]
        for turn in sorted(done, key=lambda t: t.started_ms):
            del self._bots[turn.item_id]
            self._add(turn.started_ms, "bot", self._bot_fields(turn))

    def _bot_fields(self, turn: _BotTurn) -> dict[str, Any]:
        text = turn.text or ""
        if turn.cut is None:
            total = self._core.bargein.received_ms(turn.item_id)
            return {
                "item_id": turn.item_id,
                "text": text,
                "interrupted": False,
                "heard_ms": total,
                "total_ms": total,
            }
        heard, total = turn.cut
        return {
            "item_id": turn.item_id,
            "text": heard_text(text, heard, total),
            "interrupted": True,
            "heard_ms": heard,
            "total_ms": total,
            "full_text": text,
        }


def call_events_payload(
    summary: Mapping[str, Any],
    transcript_entries: Sequence[Mapping[str, Any]],
    recording_path: Path | str | None,
) -> dict[str, Any]:
    """The call-events webhook's JSON for an ended call: the call's identity and times (from the
    transcript's `call_start` and `call_end` lines), the bridge's `summary`, the transcript, and where the
    recording is (None: none was made). POST it with `gateway.webhook.post_json`."""
    none: Mapping[str, Any] = {}
    start = next((e for e in transcript_entries if e.get("type") == "call_start"), none)
    end = next((e for e in reversed(transcript_entries) if e.get("type") == "call_end"), none)
    recording = None
    if recording_path is not None:
        recording = {
            "path": str(recording_path),
            "format": "wav",
            "sample_rate": start.get("sample_rate"),
            "channels": ["caller", "bot"],
        }
    return {
        "event": "call.ended",
        "call_id": start.get("call_id"),
        "provider": start.get("provider"),
        "from": start.get("from"),
        "to": start.get("to"),
        "started_at": start.get("at"),
        "ended_at": end.get("at"),
        "duration_ms": end.get("duration_ms"),
        "summary": dict(summary),
        "transcript": [dict(entry) for entry in transcript_entries],
        "recording": recording,
    }
