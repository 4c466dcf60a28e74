"""The realtime-API emulator over real WebSockets on loopback: handshakes, a full turn, auth, faults."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from gateway.emulator import EmulatorConfig, EmulatorServer, reply_audio
from gateway.realtime.session import AudioFormat, Protocol

TIME_SCALE = float(os.environ.get("TEST_TIME_SCALE", "1"))
BOUND_S = 20 * TIME_SCALE  # a hang guard, never a performance assertion
FRAME_MS = 20
ULAW_SILENCE = b"\xff" * 8 * FRAME_MS

Event = dict[str, Any]


@pytest.fixture
async def emulator() -> AsyncIterator[EmulatorServer]:
    """A fast emulator: 1 s replies sent 20x faster than real time."""
    async with EmulatorServer(EmulatorConfig(reply_ms=1000, realtime_factor=20.0)) as server:
        yield server


async def recv_event(ws: ClientConnection) -> Event:
    async with asyncio.timeout(BOUND_S):
        event: Event = json.loads(await ws.recv())
    return event


async def recv_until(ws: ClientConnection, kind: str) -> list[Event]:
    """Receive events up to and including the first of type `kind`."""
    events: list[Event] = []
    while not events or events[-1]["type"] != kind:
        events.append(await recv_event(ws))
    return events


async def send_event(ws: ClientConnection, event: Event) -> None:
    await ws.send(json.dumps(event))


async def append_frames(ws: ClientConnection, data: bytes, frame_bytes: int) -> None:
    for start in range(0, len(data), frame_bytes):
        chunk = base64.b64encode(data[start : start + frame_bytes]).decode()
        await send_event(ws, {"type": "input_audio_buffer.append", "audio": chunk})


async def read_until_closed(ws: ClientConnection) -> None:
    async with asyncio.timeout(BOUND_S):
        while True:
            await ws.recv()


def pcmu_update() -> Event:
    fmt = {"type": "audio/pcmu"}
    return {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"input": {"format": fmt}, "output": {"format": fmt}}},
    }


async def test_ga_handshake_sends_ga_session_created(emulator: EmulatorServer) -> None:
    """Connecting to the Azure GA path yields a GA session.created and a GA session on the server."""
    async with connect(
        emulator.ga_url("my-deployment"), additional_headers={"Authorization": "Bearer t"}
    ) as ws:
        created = await recv_event(ws)
    assert created["type"] == "session.created"
    assert created["session"]["type"] == "realtime"
    assert created["session"]["model"] == "my-deployment"
    await emulator.wait_for(lambda: emulator.sessions and emulator.sessions[0].closed)
    session = emulator.sessions[0]
    assert session.protocol is Protocol.GA
    assert session.auth == "bearer"


async def test_preview_handshake_sends_beta_session_created(emulator: EmulatorServer) -> None:
    """The Azure preview path yields the beta session shape, with the deployment as model."""
    async with connect(emulator.preview_url("dep-7"), additional_headers={"api-key": "k"}) as ws:
        created = await recv_event(ws)
        assert created["session"]["input_audio_format"] == "pcm16"
        assert created["session"]["model"] == "dep-7"
        assert "audio" not in created["session"]
    assert emulator.sessions[0].protocol is Protocol.PREVIEW


async def test_full_ga_turn_over_the_socket(emulator: EmulatorServer) -> None:
    """Speech then silence gives speech events, a commit, and a response whose deltas total the reply."""
    async with connect(emulator.ga_url()) as ws:
        await recv_event(ws)
        await send_event(ws, pcmu_update())
        assert (await recv_event(ws))["type"] == "session.updated"
        caller = ULAW_SILENCE * 10 + reply_audio(1200, AudioFormat.G711_ULAW) + ULAW_SILENCE * 40
        await append_frames(ws, caller, 8 * FRAME_MS)
        events = await recv_until(ws, "response.done")
    names = [e["type"] for e in events]
    assert names[:3] == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
    ]
    assert 0 <= events[0]["audio_start_ms"] <= 200  # onset near 200 ms, minus 300 ms padding, clamped
    assert events[-1]["response"]["status"] == "completed"
    deltas = [e for e in events if e["type"] == "response.output_audio.delta"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in deltas)
    assert len(audio) / AudioFormat.G711_ULAW.bytes_per_ms == 1000  # the configured reply, in ms
    assert len({len(e["delta"]) for e in deltas}) > 1
    await emulator.wait_for(lambda: emulator.sessions[0].closed)
    session = emulator.sessions[0]
    assert session.input_audio == caller
    assert session.assistant_items[0].audio == audio == reply_audio(1000, AudioFormat.G711_ULAW)


async def test_barge_in_cancel_and_truncate_over_the_socket() -> None:
    """Cancel mid-reply ends it cancelled; truncate past what was received errors, at it succeeds."""
    config = EmulatorConfig(reply_ms=5000, realtime_factor=1.0)
    async with EmulatorServer(config) as server, connect(server.preview_url()) as ws:
        await recv_event(ws)
        await send_event(ws, {"type": "response.create"})
        first = await recv_until(ws, "response.audio.delta")
        item_id = first[-1]["item_id"]
        await send_event(ws, {"type": "response.cancel", "event_id": "c1"})
        rest = await recv_until(ws, "response.done")
        assert rest[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        deltas = [e for e in first + rest if e["type"] == "response.audio.delta"]
        heard_ms = sum(len(base64.b64decode(e["delta"])) for e in deltas) // 48
        truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
        await send_event(ws, truncate | {"audio_end_ms": heard_ms + 1})
        error = await recv_event(ws)
        assert (
            error["error"]["message"]
            == f"Audio content of {heard_ms}ms is already shorter than {heard_ms + 1}ms"
        )
        await send_event(ws, truncate | {"audio_end_ms": heard_ms})
        assert (await recv_event(ws))["type"] == "conversation.item.truncated"
        await send_event(ws, {"type": "response.cancel", "event_id": "c2"})
        assert (await recv_event(ws))["error"]["code"] == "response_cancel_not_active"
        session = server.sessions[0]
        assert [t.audio_end_ms for t in session.truncations] == [heard_ms]
        assert session.cancels[0].audio_sent_ms == heard_ms


async def test_auth_rejected_with_401_and_key_never_logged() -> None:
    """With a key set, a missing or wrong key fails the handshake with HTTP 401; the key is never logged."""
    async with EmulatorServer(EmulatorConfig(api_key="sekrit-key")) as server:
        with structlog.testing.capture_logs() as logs:
            for headers in ({}, {"api-key": "nope"}):
                with pytest.raises(InvalidStatus) as refused:
                    await connect(server.ga_url(), additional_headers=headers)
                assert refused.value.response.status_code == 401
            async with connect(server.preview_url(), additional_headers={"api-key": "sekrit-key"}) as ws:
                assert (await recv_event(ws))["type"] == "session.created"
            async with connect(
                server.ga_url(), additional_headers={"Authorization": "Bearer sekrit-key"}
            ) as ws:
                assert (await recv_event(ws))["type"] == "session.created"
    assert [r.status for r in server.rejections] == [401, 401]
    assert [s.auth for s in server.sessions] == ["api-key", "bearer"]
    assert "sekrit-key" not in repr(logs)
    assert any(entry["event"] == "emulator.connected" for entry in logs)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/openai/nothing-here", 404), ("/openai/v1/realtime?model=m&api-version=2025-04-01-preview", 401)],
)
async def test_bad_paths_fail_the_handshake(emulator: EmulatorServer, path: str, status: int) -> None:
    """An unknown path is HTTP 404 and api-version on a v1 path is HTTP 401, before any WebSocket."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(emulator.url + path)
    assert refused.value.response.status_code == status
    assert emulator.sessions == []


async def test_fault_refuse_status() -> None:
    """refuse_status makes every handshake fail with that status (here 429)."""
    async with EmulatorServer(EmulatorConfig(refuse_status=429)) as server:
        with pytest.raises(InvalidStatus) as refused:
            await connect(server.ga_url())
    assert refused.value.response.status_code == 429


async def test_fault_drop_after_ms_aborts_the_socket() -> None:
    """drop_after_ms drops the TCP connection without a close frame; the client sees an abnormal close."""
    async with EmulatorServer(EmulatorConfig(drop_after_ms=50)) as server, connect(server.ga_url()) as ws:
        assert (await recv_event(ws))["type"] == "session.created"
        with pytest.raises(ConnectionClosedError) as closed:
            await recv_event(ws)
        assert closed.value.rcvd is None  # no close frame: a drop, not a close
        await server.wait_for(lambda: server.sessions[0].closed)


async def test_fault_drop_after_responses_closes_with_code() -> None:
    """drop_after_responses with a close code closes the socket right after that response.done."""
    config = EmulatorConfig(reply_ms=200, realtime_factor=50.0, drop_after_responses=1, drop_close_code=1011)
    async with EmulatorServer(config) as server, connect(server.ga_url()) as ws:
        await recv_event(ws)
        await send_event(ws, {"type": "response.create"})
        await recv_until(ws, "response.done")
        with pytest.raises(ConnectionClosed) as closed:
            await recv_event(ws)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011


async def test_created_delay_and_stop_leave_no_tasks() -> None:
    """session.created can be delayed; stopping the server closes clients and leaves no task behind."""
    before = asyncio.all_tasks()
    server = EmulatorServer(EmulatorConfig(created_delay_ms=100))
    async with server:
        ws = await connect(server.ga_url())
        await send_event(ws, {"type": "response.create"})
        first = await recv_event(ws)
        assert first["type"] == "session.created"
        assert (await recv_event(ws))["type"] == "response.created"
    with pytest.raises(ConnectionClosed):
        await read_until_closed(ws)
    await ws.close()
    assert asyncio.all_tasks() == before
    assert server.sessions[0].closed


async def test_rejects_text_garbage_but_keeps_session(emulator: EmulatorServer) -> None:
    """A binary frame of garbage and an unknown event get error events; the session answers afterwards."""
    async with connect(emulator.ga_url()) as ws:
        await recv_event(ws)
        await ws.send(b"\x00\x01")
        assert (await recv_event(ws))["error"]["code"] == "invalid_json"
        await send_event(ws, {"type": "session.nonsense"})
        assert (await recv_event(ws))["error"]["type"] == "invalid_request_error"
        await send_event(ws, pcmu_update())
        assert (await recv_event(ws))["type"] == "session.updated"


async def test_vad_over_socket_on_pcm16_tone(emulator: EmulatorServer) -> None:
    """A PCM16 tone burst over the socket produces speech_started at onset minus padding (±1 frame)."""
    async with connect(emulator.ga_url()) as ws:
        await recv_event(ws)
        t = np.arange(24000) / 24000
        burst = np.round(8000 * np.sin(2 * np.pi * 300 * t)).astype("<i2").tobytes()
        pcm = b"\x00" * 48 * 800 + burst + b"\x00" * 48 * 700
        await append_frames(ws, pcm, 48 * FRAME_MS)
        started, stopped = await recv_event(ws), await recv_event(ws)
    assert abs(started["audio_start_ms"] - 500) <= FRAME_MS
    assert abs(stopped["audio_end_ms"] - 2300) <= FRAME_MS
