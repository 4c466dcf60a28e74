"""Transcripts, recordings and the call-events webhook after a call with a barge-in, over real sockets: the
bot's text and its audio stop where the caller stopped hearing them (the Twilio client plays in real time
and keeps every byte it played, the truth both are held against)."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.scenarios import play_interruption
from gateway.webhook import SIGNATURE_HEADER, verify_signature
from telcodec import ulaw_decode
from tests.conftest import start_gateway
from tests.integration.test_gateway_call import wait_for

SECRET = "call-events-secret"
RECORD_TOLERANCE_MS = 20  # a frame: the phone's playout and the tracker's model tick at 20 ms


def _voiced(samples: np.ndarray) -> np.ndarray:
    """The samples that are not exactly zero. The recording is as played, so it holds the silences where
    the phone's buffer ran dry; the phone's own record of what it played does not: the voice without
    them is what both must agree on, sample for sample."""
    return samples[samples != 0]


async def _events_hook(seen: list[tuple[bytes, str | None]]) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        seen.append((await request.read(), request.headers.get(SIGNATURE_HEADER)))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def test_transcript_recording_and_webhook_cut_where_the_caller_stopped_hearing(tmp_path: Path) -> None:
    seen: list[tuple[bytes, str | None]] = []
    hook, port = await _events_hook(seen)
    transcripts, recordings = tmp_path / "t", tmp_path / "r"
    transcripts.mkdir()
    recordings.mkdir()
    env = {
        "TRANSCRIPT_DIR": str(transcripts),
        "RECORDING_DIR": str(recordings),
        "CALL_EVENTS_WEBHOOK_URL": f"http://127.0.0.1:{port}/events",
        "WEBHOOK_SECRET": SECRET,
        "TRANSCRIPTION_MODEL": "whisper-1",
    }
    try:
        async with EmulatorServer(EmulatorConfig(reply_ms=4000, realtime_factor=1.5)) as emulator:
            gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), **env})
            try:
                async with TwilioCall(gateway.media_url, custom_parameters={"From": "+15550001"}) as call:
                    result = await play_interruption(call, interrupt_after_ms=1200)
                    session = emulator.sessions[0]
                    await wait_for(lambda: session.truncations)
                    await asyncio.sleep(0.3)
                await wait_for(lambda: not gateway.state.calls and bool(seen))
            finally:
                await gateway.runner.cleanup()
    finally:
        await hook.cleanup()
    truncate = session.truncations[0]

    # The transcript: the bot's turn cut at the truncation, with the share of its words heard.
    [transcript] = transcripts.glob("*.jsonl")
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [lines[0]["type"], lines[-1]["type"]] == ["call_start", "call_end"]
    assert lines[0]["call_id"] == call.call_sid
    assert lines[-1]["outcome"] == "completed"
    assert lines[-1]["barge_ins"] == 1
    [bot] = [line for line in lines if line["type"] == "bot" and line["item_id"] == truncate.item_id]
    assert bot["interrupted"] is True
    assert bot["heard_ms"] == truncate.audio_end_ms
    assert bot["full_text"].startswith(bot["text"])
    assert 0 < len(bot["text"]) < len(bot["full_text"])
    assert any(line["type"] == "caller" and line["text"] for line in lines)

    # The recording: the bot channel holds exactly what the phone played, and stops there.
    [recording] = recordings.glob("*.wav")
    assert recording.stem == transcript.stem
    with wave.open(str(recording)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 8000)
        frames = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    caller, bot_channel = frames[:, 0], frames[:, 1]
    played = _voiced(ulaw_decode(bytes(call.playout.played)))
    recorded = _voiced(bot_channel)
    recorded_ms, heard_ms = len(recorded) / 8, len(played) / 8
    print(f"\nrecorded bot audio {recorded_ms:.1f} ms, phone played {heard_ms:.1f} ms, truncate "
          f"{truncate.audio_end_ms} ms, heard at clear {result.heard_at_clear_ms:.1f} ms")  # fmt: skip
    assert abs(recorded_ms - heard_ms) <= RECORD_TOLERANCE_MS
    n = min(len(recorded), len(played))
    assert np.array_equal(recorded[:n], played[:n])  # the same samples, in the same order
    assert np.sqrt(np.mean(caller.astype(np.float64) ** 2)) > 100  # the caller's speech is on the left

    # The call-events webhook: signed, the summary, the whole transcript and the recording's path.
    [(body, signature)] = seen
    assert verify_signature(SECRET, body, signature, time.time()) is None
    payload: dict[str, Any] = json.loads(body)
    assert payload["event"] == "call.ended"
    assert payload["call_id"] == call.call_sid
    assert payload["from"] == "+15550001"
    assert payload["summary"]["barge_ins"] == 1
    assert payload["transcript"] == sorted(lines, key=lambda line: line["t_ms"])
    assert payload["recording"]["path"] == str(recording)
