"""Hostile input and upstream faults over real sockets: each has a defined outcome, nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.client import FRAME_BYTES, TwilioCall
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from tests.conftest import RunningGateway, scaled, start_gateway
from tests.integration.test_gateway_call import wait_for


@asynccontextmanager
async def bridged(
    env: dict[str, str] | None = None, config: EmulatorConfig | None = None
) -> AsyncIterator[tuple[RunningGateway, EmulatorServer]]:
    """A gateway on an emulator; on exit, checks that no call, task or upstream session is left."""
    tasks_before = asyncio.all_tasks()
    async with EmulatorServer(config or EmulatorConfig(realtime_factor=10.0, reply_ms=800)) as emulator:
        gateway = await start_gateway({"REALTIME_URL": emulator.ga_url(), **(env or {})})
        try:
            yield gateway, emulator
            await wait_for(lambda: not gateway.state.calls)
            await wait_for(lambda: all(session.closed for session in emulator.sessions))
        finally:
            await gateway.runner.cleanup()
    leftover = {t for t in asyncio.all_tasks() - tasks_before if not t.done()}
    assert leftover == set()


def outcome_count(gateway: RunningGateway, outcome: str) -> float:
    """How many calls ended with `outcome`."""
    return float(gateway.state.metrics.calls.labels(outcome=outcome)._value.get())


# -- hostile input on /media --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "outcome"),
    [
        ("[1, 2, 3]", "protocol_error"),
        (b"\x00\x01binary", "protocol_error"),
        ("x" * (70 * 1024), "protocol_error"),
    ],
    ids=["not-an-object", "binary-frame", "oversized"],
)
async def test_fatal_input_closes_call(message: str | bytes, outcome: str) -> None:
    """A JSON non-object, a binary frame or a message over 64 KiB ends the call with a policy close."""
    async with bridged() as (gateway, _emulator):
        async with TwilioCall(gateway.media_url) as call:
            assert call._ws is not None
            await call._ws.send(message)
            code = await call.wait_closed(timeout_s=scaled(5))
        assert code in (1008, 1009)
        await wait_for(lambda: outcome_count(gateway, outcome) == 1)


async def test_oversized_message_before_start_is_a_protocol_error() -> None:
    """A message over 64 KiB before `start` is refused the same way as after it (1009, protocol_error)."""
    async with bridged() as (gateway, emulator):
        call = TwilioCall(gateway.media_url)
        await call.open(send_start=False)
        assert call._ws is not None
        await call._ws.send("x" * (70 * 1024))
        assert await call.wait_closed(timeout_s=scaled(5)) == 1009
        await call.hang_up(send_stop=False)
        await wait_for(lambda: outcome_count(gateway, "protocol_error") == 1)
        assert emulator.sessions == []


async def test_media_before_start_is_refused() -> None:
    """Media before `start` has no stream to belong to: the call is closed (1008) before any upstream cost."""
    async with bridged() as (gateway, emulator):
        call = TwilioCall(gateway.media_url)
        await call.open(send_start=False)
        await call.send_frame(b"\xff" * FRAME_BYTES)
        assert await call.wait_closed(timeout_s=scaled(5)) == 1008
        await call.hang_up(send_stop=False)
        assert emulator.sessions == []


async def test_ignorable_input_is_counted_and_the_call_goes_on() -> None:
    """Unknown events and media for another stream are dropped and counted; the call carries on."""
    async with bridged() as (gateway, emulator), TwilioCall(gateway.media_url) as call:
        await call.send_json({"event": "telepathy", "streamSid": call.stream_sid})
        await call.send_json({"event": "media", "streamSid": "MZother", "media": {"payload": "/w=="}})
        await call.send_audio(silence_ulaw(100), realtime=False)
        await wait_for(lambda: emulator.sessions and emulator.sessions[0].received_audio)
        metrics = gateway.state.metrics
        assert metrics.protocol_violations.labels(peer="provider")._value.get() == 2
        assert not call._closed.is_set()


async def test_flood_is_dropped_then_closed() -> None:
    """Audio far faster than real time: the excess is dropped and counted, and a sustained flood is closed."""
    async with bridged() as (gateway, _emulator):
        async with TwilioCall(gateway.media_url) as call:
            await call.send_audio(silence_ulaw(4000), realtime=False)  # 200 frames at once: 50 over the burst
            await wait_for(lambda: gateway.state.metrics.frames_in._value.get() == 200)
            dropped = gateway.state.metrics.dropped_frames.labels(reason="flood")._value.get()
            assert 40 <= dropped <= 60
            assert not call._closed.is_set()
            await call.send_audio(silence_ulaw(15000), realtime=False)
            assert await call.wait_closed(timeout_s=scaled(5)) == 1008
        await wait_for(lambda: outcome_count(gateway, "flood") == 1)


async def test_client_that_never_starts_times_out() -> None:
    """A socket that never sends `start` is closed after START_TIMEOUT_S, without an upstream session."""
    async with bridged({"START_TIMEOUT_S": "0.3"}) as (gateway, emulator):
        call = TwilioCall(gateway.media_url)
        await call.open(send_start=False)
        assert await call.wait_closed(timeout_s=scaled(5)) == 1008
        await call.hang_up(send_stop=False)
        assert outcome_count(gateway, "start_timeout") == 1
        assert emulator.sessions == []


async def test_silent_client_times_out() -> None:
    """A provider that stops sending (a dead network) is dropped after CALLER_IDLE_TIMEOUT_S."""
    async with bridged({"CALLER_IDLE_TIMEOUT_S": "0.4"}) as (gateway, _emulator):
        async with TwilioCall(gateway.media_url) as call:
            assert await call.wait_closed(timeout_s=scaled(5)) == 1001
        await wait_for(lambda: outcome_count(gateway, "caller_timeout") == 1)


async def test_slow_reader_is_dropped_not_buffered() -> None:
    """A provider that stops reading bot audio is dropped after SEND_TIMEOUT_S, not buffered forever."""
    config = EmulatorConfig(realtime_factor=float("inf"), reply_ms=240_000, delta_ms=(1000, 1000))
    async with bridged({"SEND_TIMEOUT_S": "0.5", "BOT_GREETING": "Talk a lot."}, config) as (gateway, _e):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gateway.port))
        ws = await connect(gateway.media_url, sock=sock, max_queue=1)
        start = {
            "event": "start",
            "start": {
                "streamSid": "MZ1",
                "callSid": "CA1",
                "accountSid": "AC1",
                "tracks": ["inbound"],
                "customParameters": {},
            },
        }
        await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await ws.send(json.dumps({**start, "streamSid": "MZ1"}))
        await wait_for(lambda: outcome_count(gateway, "slow_consumer") == 1, timeout_s=20)
        ws.transport.abort()


async def test_capacity_limit_refuses_with_close_reason() -> None:
    """Beyond GATEWAY_MAX_CALLS a new stream is closed with 1013 and counted; the first call is unaffected."""
    async with bridged({"GATEWAY_MAX_CALLS": "1"}) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as first:
            await wait_for(lambda: emulator.sessions)
            async with connect(gateway.media_url) as second:
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(second.recv(), scaled(5))
                assert second.close_code == 1013
                assert second.close_reason == "gateway at capacity"
            assert not first._closed.is_set()
        metrics = gateway.state.metrics
        assert metrics.rejected_requests.labels(route="media", reason="capacity")._value.get() == 1
        assert len(emulator.sessions) == 1


async def test_max_call_duration() -> None:
    """A call longer than MAX_CALL_S is ended cleanly (1000) with its own outcome."""
    async with bridged({"MAX_CALL_S": "1"}) as (gateway, _emulator):
        async with TwilioCall(gateway.media_url) as call:
            sender = asyncio.create_task(call.send_audio(silence_ulaw(3000), realtime=True))
            assert await call.wait_closed(timeout_s=scaled(5)) == 1000
            sender.cancel()
        await wait_for(lambda: outcome_count(gateway, "max_duration") == 1)


# -- upstream faults ----------------------------------------------------------------------------------


async def test_connect_timeout_and_refused_end_call_after_retries() -> None:
    """A handshake that hangs, or a port that refuses, is retried within the budget, then the call ends."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    cases = [(silent.getsockname()[1], "timeout"), (refused_port, "connect")]
    try:
        for port, code in cases:
            env = {
                "REALTIME_URL": f"ws://127.0.0.1:{port}/v1/realtime?model=x",
                "UPSTREAM_CONNECT_TIMEOUT_S": "0.3",
            }
            gateway = await start_gateway(env)
            try:
                async with TwilioCall(gateway.media_url) as call:
                    assert await call.wait_closed(timeout_s=scaled(10)) == 1011
                await wait_for(lambda state=gateway.state: not state.calls)
                assert gateway.state.metrics.upstream_errors.labels(code=code)._value.get() == 3
                assert outcome_count(gateway, "upstream_failed") == 1
            finally:
                await gateway.runner.cleanup()
    finally:
        silent.close()


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_refusal_is_not_retried(status: int) -> None:
    """401 and 403 are configuration problems: one attempt, then the call ends, counted by status."""
    config = EmulatorConfig(refuse_status=status)
    async with bridged(config=config) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as call:
            assert await call.wait_closed(timeout_s=scaled(5)) == 1011
        assert emulator.handshakes == 1
        assert gateway.state.metrics.upstream_errors.labels(code=str(status))._value.get() == 1


async def test_rate_limited_handshake_is_retried_with_backoff() -> None:
    """Two 429s and then success: the call goes through on the third attempt."""
    config = EmulatorConfig(refuse_status=429, refuse_count=2, realtime_factor=10.0, reply_ms=400)
    # The start-up probes are refused too: a short handshake timeout bounds the wait for their verdict.
    async with bridged({"UPSTREAM_CONNECT_TIMEOUT_S": "2"}, config) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as call:
            await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=False)
            await wait_for(lambda: len(call.received_media) == 400 * 8)
        assert emulator.handshakes == 3
        assert gateway.state.metrics.upstream_errors.labels(code="429")._value.get() == 2


async def test_error_event_is_counted_and_the_call_goes_on() -> None:
    """An `error` event from the service is counted by code; the call carries on."""
    config = EmulatorConfig(error_after_responses=1, realtime_factor=10.0, reply_ms=300)
    async with bridged(config=config) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as call:
            await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=False)
            await wait_for(lambda: emulator.sessions and emulator.sessions[0].errors)
            await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=True, speed=4)
            await wait_for(lambda: len(emulator.sessions[0].responses) == 2)
            assert not call._closed.is_set()
        errors = gateway.state.metrics.upstream_errors.collect()[0].samples
        assert sum(s.value for s in errors if s.name.endswith("_total")) >= 1


async def test_dropped_session_is_replaced_with_context() -> None:
    """A session that drops mid-call is replaced: settings restored, the turns so far replayed as items,
    and the next turn answered by the new session; a second drop beyond the budget ends the call."""
    config = EmulatorConfig(drop_after_responses=1, realtime_factor=10.0, reply_ms=300)
    env = {"TRANSCRIPTION_MODEL": "whisper-1", "UPSTREAM_MAX_RECONNECTS": "1"}
    async with bridged(env, config) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as call:
            await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=False)
            await wait_for(lambda: len(emulator.sessions) == 2)
            second = emulator.sessions[1]
            await wait_for(lambda: any(e["type"] == "conversation.item.create" for e in second.client_events))
            created = [e["item"] for e in second.client_events if e["type"] == "conversation.item.create"]
            assert second.client_events[0]["type"] == "session.update"
            assert [item["role"] for item in created] == ["user", "assistant"]
            assert created[1]["content"][0]["text"] == emulator.config.transcript
            await call.wait_until_quiet(quiet_ms=scaled(200), timeout_s=scaled(10))
            await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=False)
            assert await call.wait_closed(timeout_s=scaled(10)) == 1011  # the second drop spends the budget
            assert second.responses
        metrics = gateway.state.metrics
        assert metrics.upstream_reconnects.labels(reason="drop")._value.get() == 1
        assert outcome_count(gateway, "upstream_closed") == 1


async def test_expiring_session_is_renewed_while_quiet() -> None:
    """A session about to reach expires_at is replaced at a quiet moment, before the service cuts it."""
    # The emulator announces expires_at in whole seconds (int(now) + 4) and cuts the session 4 s after it
    # opened. With a 2 s margin (capped at half the announced lifetime) the renewal falls due 1.5 to 2 s
    # into the session, at least 2 s before the cut. The gateway checks on each caller frame, so silence
    # streams until the second session is up: how long set-up took does not matter.
    config = EmulatorConfig(session_expires_s=4, realtime_factor=10.0, reply_ms=300)
    async with bridged({"UPSTREAM_RENEW_MARGIN_S": "2"}, config) as (gateway, emulator):
        async with TwilioCall(gateway.media_url) as call:
            sender = asyncio.create_task(call.send_audio(silence_ulaw(60_000), realtime=True))
            try:
                await wait_for(lambda: len(emulator.sessions) == 2, timeout_s=15)
                await wait_for(lambda: emulator.sessions[1].received_audio)  # the call goes on there
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            assert not call._closed.is_set()
        assert gateway.state.metrics.upstream_reconnects.labels(reason="expiry")._value.get() == 1
        assert gateway.state.metrics.upstream_reconnects.labels(reason="drop")._value.get() == 0
        assert emulator.sessions[0].errors == []  # replaced before the service's own expiry error


async def test_entra_token_failure_is_reported_clearly() -> None:
    """A token provider that fails ends the call as upstream_failed with the reason, not a crash."""

    async def broken(scope: str) -> tuple[str, int]:
        raise RuntimeError("no managed identity endpoint")

    async with EmulatorServer() as emulator:
        # The start-up probes fail too: a short handshake timeout bounds the wait for their verdict.
        env = {"REALTIME_URL": emulator.ga_url(), "REALTIME_AUTH": "entra", "UPSTREAM_CONNECT_TIMEOUT_S": "2"}
        gateway = await start_gateway(env, token_provider=broken)
        try:
            async with TwilioCall(gateway.media_url) as call:
                assert await call.wait_closed(timeout_s=scaled(5)) == 1011
            await wait_for(lambda: outcome_count(gateway, "upstream_failed") == 1)
            assert gateway.state.metrics.upstream_errors.labels(code="auth")._value.get() == 1
            assert emulator.handshakes == 0
        finally:
            await gateway.runner.cleanup()


async def test_drop_mid_answer_asks_the_new_session_to_answer() -> None:
    """A session that drops while the bot is answering: the new session is asked for the answer
    (response.create after the replay), so the caller is not left waiting in silence."""
    config = EmulatorConfig(drop_after_ms=1500, realtime_factor=1.0, reply_ms=5000)
    env = {"TRANSCRIPTION_MODEL": "whisper-1", "UPSTREAM_MAX_RECONNECTS": "1"}
    async with bridged(env, config) as (_gateway, emulator), TwilioCall(_gateway.media_url) as call:
        await call.send_audio(speech_ulaw(500) + silence_ulaw(700), realtime=False)
        await wait_for(lambda: len(emulator.sessions) == 2)
        second = emulator.sessions[1]
        await wait_for(lambda: second.responses)
        kinds = [event["type"] for event in second.client_events]
        assert kinds.index("response.create") > kinds.index("conversation.item.create")
        await call.wait_closed(timeout_s=scaled(10))  # the second drop spends the budget
