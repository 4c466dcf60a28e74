"""The emulator's sans-I/O core: handshake, session.update, VAD, responses, cancel, truncate, faults."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from gateway.emulator.session import (
    Accepted,
    EmulatorConfig,
    EmulatorSession,
    Rejected,
    negotiate,
)
from gateway.emulator.vad import EnergyVad, VadSettings, VadSpeechStarted, VadSpeechStopped, threshold_dbfs
from gateway.emulator.voice import decimate_24k_to_8k, reply_audio, synthesize_voice
from gateway.realtime.session import AudioFormat, Protocol
from telcodec import alaw_encode, ulaw_encode
from tests.sdk_models import BETA_SERVER, GA_SERVER

GA_PATH = "/openai/v1/realtime?model=gpt-realtime"
PREVIEW_PATH = "/openai/realtime?api-version=2025-04-01-preview&deployment=dep1"
FRAME_MS = 20
PCM_16K = {"type": "audio/pcm", "rate": 16000}

Event = dict[str, Any]


# --- helpers ---------------------------------------------------------------------------------------


def make_session(protocol: Protocol = Protocol.GA, **config: Any) -> EmulatorSession:
    handshake = Accepted(protocol, "gpt-realtime", GA_PATH)
    session = EmulatorSession(handshake, EmulatorConfig(**config), now_ms=0.0, epoch_s=1_700_000_000.0)
    assert [e["type"] for e in session.poll(0.0).events] == ["session.created"]
    return session


def send(session: EmulatorSession, event: Event, now_ms: float = 0.0) -> list[Event]:
    return list(session.receive_text(json.dumps(event), now_ms).events)


def types(events: list[Event]) -> list[str]:
    return [e["type"] for e in events]


def ga_update(**audio_input: Any) -> Event:
    fmt = {"type": "audio/pcmu"}
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {"input": {"format": fmt, **audio_input}, "output": {"format": fmt}},
        },
    }


def tone(ms: int, rate: int, amplitude: float = 8000.0, freq: float = 440.0) -> npt.NDArray[np.int16]:
    t = np.arange(ms * rate // 1000) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def silence(ms: int, rate: int) -> npt.NDArray[np.int16]:
    return np.zeros(ms * rate // 1000, dtype=np.int16)


def wire(pcm: npt.NDArray[np.int16], fmt: AudioFormat) -> bytes:
    if fmt is AudioFormat.PCM16:
        return pcm.astype("<i2").tobytes()
    return ulaw_encode(pcm) if fmt is AudioFormat.G711_ULAW else alaw_encode(pcm)


def append_all(session: EmulatorSession, data: bytes, fmt: AudioFormat, now_ms: float = 0.0) -> list[Event]:
    """Append `data` in 20 ms pieces, as a telephony bridge would; return every event produced."""
    step = FRAME_MS * fmt.bytes_per_ms
    events: list[Event] = []
    for start in range(0, len(data), step):
        chunk = base64.b64encode(data[start : start + step]).decode()
        events += send(session, {"type": "input_audio_buffer.append", "audio": chunk}, now_ms)
    return events


def drain(session: EmulatorSession) -> list[Event]:
    """Poll at each due time until no response is active; return all events."""
    events: list[Event] = []
    while session.active_response is not None:
        due = session.next_due_ms
        assert due is not None
        events += session.poll(due).events
    return events


def collapse(names: list[str]) -> list[str]:
    """Fold runs of delta events into one name each, to compare lifecycles."""
    out: list[str] = []
    for name in names:
        if not (out and name == out[-1] and name.endswith(".delta")):
            out.append(name)
    return out


# --- handshake -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "headers", "protocol", "model"),
    [
        (GA_PATH, {}, Protocol.GA, "gpt-realtime"),
        ("/v1/realtime?model=gpt-realtime", {}, Protocol.GA, "gpt-realtime"),
        (
            "/v1/realtime?model=gpt-4o-realtime-preview",
            {"OpenAI-Beta": "realtime=v1"},
            Protocol.PREVIEW,
            "gpt-4o-realtime-preview",
        ),
        (PREVIEW_PATH, {}, Protocol.PREVIEW, "dep1"),
        (PREVIEW_PATH, {"openai-beta": "realtime=v1"}, Protocol.PREVIEW, "dep1"),
    ],
)
def test_negotiate_picks_protocol_from_path_and_beta_header(
    path: str, headers: dict[str, str], protocol: Protocol, model: str
) -> None:
    """The v1 paths speak GA unless the OpenAI-Beta header is sent; the Azure preview path speaks beta."""
    verdict = negotiate(path, headers, EmulatorConfig())
    assert isinstance(verdict, Accepted)
    assert (verdict.protocol, verdict.model) == (protocol, model)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/openai/v1/realtime?model=x&api-version=2025-04-01-preview", 401),
        ("/realtime?model=x", 404),
        ("/openai/v1/realtime", 400),
        ("/openai/realtime?deployment=x", 400),
    ],
)
def test_negotiate_rejects_bad_urls(path: str, status: int) -> None:
    """api-version on a v1 path is 401 (as Azure does), an unknown path 404, missing model 400."""
    verdict = negotiate(path, {}, EmulatorConfig())
    assert isinstance(verdict, Rejected)
    assert verdict.status == status


@pytest.mark.parametrize(
    ("headers", "path", "auth"),
    [
        ({"api-key": "k1"}, PREVIEW_PATH, "api-key"),
        ({"Authorization": "Bearer k1"}, GA_PATH, "bearer"),
        ({"Authorization": "Bearer entra-abc"}, GA_PATH, "entra-token"),
        ({}, PREVIEW_PATH + "&api-key=k1", "api-key-query"),
        ({}, GA_PATH, None),
        ({"api-key": "wrong"}, GA_PATH, None),
        ({"Authorization": "Basic k1"}, GA_PATH, None),
    ],
)
def test_negotiate_checks_credentials(headers: dict[str, str], path: str, auth: str | None) -> None:
    """With a key set, api-key header, Bearer key, accepted token or api-key query pass; others get 401."""
    config = EmulatorConfig(api_key="k1", accepted_tokens=frozenset({"entra-abc"}))
    verdict = negotiate(path, headers, config)
    if auth is None:
        assert verdict == Rejected(401, "invalid or missing credentials")
    else:
        assert isinstance(verdict, Accepted)
        assert verdict.auth == auth
        assert "k1" not in verdict.path
        assert "k1" not in json.dumps(dict(verdict.headers))


def test_negotiate_refuses_by_fault_injection() -> None:
    """refuse_status turns every valid handshake into that HTTP status."""
    assert negotiate(GA_PATH, {}, EmulatorConfig(refuse_status=429)) == Rejected(
        429, "refused by fault injection"
    )


# --- session.created / session.update ----------------------------------------------------------------


def test_session_created_ga_shape() -> None:
    """GA session.created carries type realtime, the nested audio object, id and expires_at (epoch s)."""
    handshake = Accepted(Protocol.GA, "gpt-realtime", GA_PATH)
    session = EmulatorSession(handshake, EmulatorConfig(session_expires_s=600), now_ms=0.0, epoch_s=1000.5)
    (event,) = session.poll(0.0).events
    body = event["session"]
    assert body["type"] == "realtime"
    assert body["id"] == session.id
    assert body["expires_at"] == 1600
    assert body["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert body["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert "input_audio_format" not in body
    assert "modalities" not in body


def test_session_created_beta_shape() -> None:
    """Beta session.created carries the flat beta fields and no GA audio object."""
    session = EmulatorSession(Accepted(Protocol.PREVIEW, "dep1", PREVIEW_PATH), now_ms=0.0, epoch_s=10.0)
    (event,) = session.poll(0.0).events
    body = event["session"]
    assert (body["input_audio_format"], body["output_audio_format"]) == ("pcm16", "pcm16")
    assert body["turn_detection"]["silence_duration_ms"] == 500
    assert body["model"] == "dep1"
    assert "audio" not in body
    assert "type" not in body


def test_ga_session_update_applies_and_answers_full_session() -> None:
    """A valid GA update changes only the fields sent and session.updated reports the whole session."""
    session = make_session()
    (event,) = send(session, ga_update())
    assert event["type"] == "session.updated"
    assert event["session"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert event["session"]["audio"]["output"]["voice"] == "alloy"
    assert event["session"]["audio"]["input"]["turn_detection"]["prefix_padding_ms"] == 300
    assert (session.input_format, session.output_format) == (AudioFormat.G711_ULAW, AudioFormat.G711_ULAW)


def test_ga_session_update_without_type_is_an_error_and_session_goes_on() -> None:
    """GA requires session.type: the update is refused with the event_id echoed, and later events work."""
    session = make_session()
    update = ga_update()
    del update["session"]["type"]
    (error,) = send(session, update | {"event_id": "evt_1"})
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "missing_required_parameter"
    assert error["error"]["event_id"] == "evt_1"
    assert session.output_format is AudioFormat.PCM16  # nothing applied
    assert types(send(session, ga_update())) == ["session.updated"]


@pytest.mark.parametrize(
    ("protocol", "body", "param"),
    [
        (Protocol.GA, {"type": "realtime", "input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
        (
            Protocol.GA,
            {"type": "realtime", "audio": {"input": {"format": PCM_16K}}},
            "session.audio.input.format",
        ),
        (
            Protocol.GA,
            {"type": "realtime", "output_modalities": ["text", "audio"]},
            "session.output_modalities",
        ),
        (Protocol.PREVIEW, {"input_audio_format": "mulaw"}, "session.input_audio_format"),
        (Protocol.PREVIEW, {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.audio"),
        (Protocol.PREVIEW, {"turn_detection": {"threshold": 2}}, "session.turn_detection.threshold"),
    ],
)
def test_session_update_rejects_invalid_or_foreign_fields(
    protocol: Protocol, body: Event, param: str
) -> None:
    """Bad formats, out-of-range VAD values and the other protocol's fields are invalid_request_errors."""
    session = make_session(protocol)
    (error,) = send(session, {"type": "session.update", "session": body})
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["param"] == param


def test_beta_session_update_sets_g711_formats() -> None:
    """Beta g711_alaw / g711_ulaw names set the formats and session.updated echoes them."""
    session = make_session(Protocol.PREVIEW)
    update = {
        "type": "session.update",
        "session": {"input_audio_format": "g711_alaw", "output_audio_format": "g711_ulaw"},
    }
    (event,) = send(session, update)
    assert event["session"]["input_audio_format"] == "g711_alaw"
    assert (session.input_format, session.output_format) == (AudioFormat.G711_ALAW, AudioFormat.G711_ULAW)


# --- VAD -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [AudioFormat.PCM16, AudioFormat.G711_ULAW])
def test_vad_tone_burst_gives_speech_events_at_the_right_ms(fmt: AudioFormat) -> None:
    """Silence, 1 s tone at 1 s, silence: started at 1000-300 ms, stopped at 2000+500 ms, commit, response."""
    session = make_session(Protocol.PREVIEW)
    send(session, {"type": "session.update", "session": {"input_audio_format": fmt.value}})
    rate = fmt.sample_rate
    audio = np.concatenate([silence(1000, rate), tone(1000, rate), silence(1500, rate)])
    events = append_all(session, wire(audio, fmt), fmt)
    started, stopped = events[0], events[1]
    assert started["type"] == "input_audio_buffer.speech_started"
    assert abs(started["audio_start_ms"] - 700) <= FRAME_MS
    assert stopped["type"] == "input_audio_buffer.speech_stopped"
    assert abs(stopped["audio_end_ms"] - 2500) <= FRAME_MS
    assert types(events[2:5]) == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "response.created",
    ]
    assert started["item_id"] == stopped["item_id"] == events[2]["item_id"] == events[3]["item"]["id"]
    assert events[3]["item"]["role"] == "user"


def test_vad_prefix_padding_clamps_at_zero_and_follows_settings() -> None:
    """Speech at 100 ms with 300 ms padding starts at 0; custom silence_duration_ms moves the stop."""
    session = make_session(Protocol.PREVIEW)
    td = {
        "type": "server_vad",
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "create_response": False,
    }
    send(session, {"type": "session.update", "session": {"turn_detection": td}})
    audio = np.concatenate([silence(100, 24000), tone(400, 24000), silence(400, 24000)])
    events = append_all(session, wire(audio, AudioFormat.PCM16), AudioFormat.PCM16)
    assert events[0]["audio_start_ms"] == 0
    assert abs(events[1]["audio_end_ms"] - 700) <= FRAME_MS
    assert "response.created" not in types(events)  # create_response false


def test_vad_threshold_maps_to_level() -> None:
    """threshold 0.5 means -40 dBFS: a -46 dBFS tone is silence, a -34 dBFS tone is speech."""
    assert threshold_dbfs(0.5) == -40.0
    quiet = EnergyVad(VadSettings()).feed(tone(500, 8000, amplitude=32768 * 10 ** (-43 / 20)), 8000)
    loud = EnergyVad(VadSettings()).feed(tone(500, 8000, amplitude=32768 * 10 ** (-31 / 20)), 8000)
    assert quiet == []
    assert loud == [VadSpeechStarted(audio_start_ms=0, onset_ms=0)]


def test_vad_is_chunking_independent() -> None:
    """Feeding the same audio in 7 ms pieces gives the same events as feeding it whole."""
    audio = np.concatenate([silence(640, 8000), tone(500, 8000), silence(900, 8000)])
    whole = EnergyVad(VadSettings()).feed(audio, 8000)
    vad = EnergyVad(VadSettings())
    pieces = [e for start in range(0, len(audio), 56) for e in vad.feed(audio[start : start + 56], 8000)]
    assert whole == pieces == [VadSpeechStarted(340, 640), VadSpeechStopped(1640)]


def test_turn_detection_null_disables_vad_and_manual_commit_works() -> None:
    """With turn_detection null no speech events come; commit makes a user item; empty commit is an error."""
    session = make_session(Protocol.GA)
    send(session, ga_update(turn_detection=None))
    (empty,) = send(session, {"type": "input_audio_buffer.commit", "event_id": "c0"})
    assert empty["error"]["code"] == "input_audio_buffer_commit_empty"
    events = append_all(session, wire(tone(600, 8000), AudioFormat.G711_ULAW), AudioFormat.G711_ULAW)
    assert events == []
    committed = send(session, {"type": "input_audio_buffer.commit"})
    assert types(committed) == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert session.items[committed[0]["item_id"]].audio_ms == 600
    assert (
        send(session, {"type": "input_audio_buffer.commit"})[0]["error"]["code"]
        == "input_audio_buffer_commit_empty"
    )


def test_clear_empties_the_buffer() -> None:
    """input_audio_buffer.clear answers cleared, and a commit right after is refused as empty."""
    session = make_session(Protocol.PREVIEW)
    send(session, {"type": "session.update", "session": {"turn_detection": None}})
    append_all(session, wire(tone(300, 24000), AudioFormat.PCM16), AudioFormat.PCM16)
    assert types(send(session, {"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    assert (
        send(session, {"type": "input_audio_buffer.commit"})[0]["error"]["code"]
        == "input_audio_buffer_commit_empty"
    )


def test_received_audio_is_kept_raw() -> None:
    """Every appended byte is recorded, with its format, exactly as sent."""
    session = make_session(Protocol.GA)
    send(session, ga_update())
    data = wire(tone(333, 8000), AudioFormat.G711_ULAW)
    append_all(session, data, AudioFormat.G711_ULAW)
    assert session.input_audio == data
    assert {chunk.format for chunk in session.received_audio} == {AudioFormat.G711_ULAW}
    assert session.input_audio_ms == pytest.approx(333)


# --- responses ---------------------------------------------------------------------------------------------

GA_LIFECYCLE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.created",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
BETA_LIFECYCLE = [
    name.replace("output_audio", "audio")
    for name in GA_LIFECYCLE
    if name not in ("conversation.item.added", "conversation.item.done")
]


@pytest.mark.parametrize(
    ("protocol", "expected"), [(Protocol.GA, GA_LIFECYCLE), (Protocol.PREVIEW, BETA_LIFECYCLE)]
)
def test_response_lifecycle_order_per_protocol(protocol: Protocol, expected: list[str]) -> None:
    """A response emits the protocol's event names in the real service's order, ending completed."""
    session = make_session(
        protocol, realtime_factor=math.inf, delta_ms=(100, 100), reply_ms=200, transcript="a b"
    )
    events = send(session, {"type": "response.create"})
    assert types(events) == expected
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["output_token_details"]["audio_tokens"] == 4
    (part,) = [e for e in events if e["type"] == "response.content_part.added"]
    assert part["part"]["type"] == "audio"  # both protocols, per the SDK's event types
    item_type = done["output"][0]["content"][0]["type"]
    assert item_type == ("output_audio" if protocol is Protocol.GA else "audio")


@pytest.mark.parametrize("fmt", list(AudioFormat))
def test_response_audio_has_the_configured_length_in_varying_deltas(fmt: AudioFormat) -> None:
    """Deltas carry the reply in the output format, varying in size within range, summing to reply_ms."""
    session = make_session(Protocol.PREVIEW, reply_ms=2500)
    send(session, {"type": "session.update", "session": {"output_audio_format": fmt.value}})
    events = send(session, {"type": "response.create"}) + drain(session)
    deltas = [e for e in events if e["type"] == "response.audio.delta"]
    sizes = [len(base64.b64decode(e["delta"])) / fmt.bytes_per_ms for e in deltas]
    assert sum(sizes) == 2500
    assert all(40 <= size <= 240 for size in sizes[:-1])
    assert len(set(sizes)) > 3
    assert b"".join(base64.b64decode(e["delta"]) for e in deltas) == reply_audio(2500, fmt)
    item = session.items[deltas[0]["item_id"]]
    assert item.audio == reply_audio(2500, fmt)
    assert item.audio_ms == 2500
    assert {(e["output_index"], e["content_index"], e["response_id"]) for e in deltas} == {
        (0, 0, session.responses[0].id)
    }
    transcript = next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
    assert transcript == session.config.transcript


def test_deltas_are_scheduled_faster_than_real_time() -> None:
    """With realtime_factor 4, each delta is due a quarter of the previous one's duration later."""
    session = make_session(Protocol.GA, realtime_factor=4.0, response_delay_ms=100)
    created = send(session, {"type": "response.create"}, now_ms=10.0)
    assert "response.output_audio.delta" not in types(created)
    assert session.next_due_ms == 110.0
    first = session.poll(110.0)
    (delta,) = [e for e in first.events if e["type"] == "response.output_audio.delta"]
    duration = len(base64.b64decode(delta["delta"])) / 48
    assert first.next_due_ms == pytest.approx(110.0 + duration / 4)
    assert session.poll(first.next_due_ms - 1).events == ()


def test_response_create_while_active_is_an_error() -> None:
    """A second response.create during a response gets conversation_already_has_active_response."""
    session = make_session(Protocol.GA)
    send(session, {"type": "response.create"})
    (error,) = send(session, {"type": "response.create", "event_id": "e2"})
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert error["error"]["event_id"] == "e2"


def test_response_create_with_foreign_fields_is_refused() -> None:
    """A beta-shaped response.create (modalities) on a GA session is an unknown parameter."""
    session = make_session(Protocol.GA)
    (error,) = send(session, {"type": "response.create", "response": {"modalities": ["audio", "text"]}})
    assert error["error"]["code"] == "unknown_parameter"
    assert session.active_response is None


# --- cancel / interrupt ------------------------------------------------------------------------------------


def test_cancel_active_response_stops_deltas_at_once() -> None:
    """response.cancel ends the response with the done events, status cancelled, reason client_cancelled."""
    session = make_session(Protocol.GA)
    send(session, {"type": "response.create"})
    session.poll(session.next_due_ms or 0)  # one more delta out
    sent = session.assistant_items[0].audio_ms
    events = send(session, {"type": "response.cancel"}, now_ms=session.next_due_ms or 0)
    assert types(events)[-6:] == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = events[-1]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert done["output"][0]["status"] == "incomplete"
    assert session.active_response is None
    assert session.next_due_ms == 1_800_000
    item = session.assistant_items[0]
    assert session.cancels[0].audio_sent_ms == item.audio_ms >= sent
    assert len(item.audio) == item.audio_ms * 48


def test_cancel_without_active_response_is_the_documented_error() -> None:
    """Cancelling with nothing active returns response_cancel_not_active with the client's event_id."""
    session = make_session(Protocol.PREVIEW)
    (error,) = send(session, {"type": "response.cancel", "event_id": "evt_cancel_7"})
    assert error["error"] == {
        "type": "invalid_request_error",
        "code": "response_cancel_not_active",
        "message": "Cancellation failed: no active response found",
        "param": None,
        "event_id": "evt_cancel_7",
    }


def test_speech_during_response_cancels_it_with_turn_detected() -> None:
    """Server VAD with interrupt_response (default) cancels the active response when speech starts."""
    session = make_session(Protocol.GA)
    send(session, ga_update())
    send(session, {"type": "response.create"})
    events = append_all(session, wire(tone(200, 8000), AudioFormat.G711_ULAW), AudioFormat.G711_ULAW)
    names = types(events)
    assert names[0] == "input_audio_buffer.speech_started"
    assert names.index("response.output_audio.done") < names.index("response.done")
    done = next(e for e in events if e["type"] == "response.done")["response"]
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert [c.reason for c in session.cancels] == ["turn_detected"]


def test_speech_without_interrupt_response_lets_response_finish() -> None:
    """interrupt_response false: speech_started leaves the response running."""
    session = make_session(Protocol.GA)
    send(session, ga_update(turn_detection={"type": "server_vad", "interrupt_response": False}))
    send(session, {"type": "response.create"})
    events = append_all(session, wire(tone(200, 8000), AudioFormat.G711_ULAW), AudioFormat.G711_ULAW)
    assert types(events) == ["input_audio_buffer.speech_started"]
    assert session.active_response is not None
    assert session.cancels == []


# --- truncate ----------------------------------------------------------------------------------------------


def started_response(protocol: Protocol = Protocol.GA) -> tuple[EmulatorSession, str]:
    session = make_session(protocol)
    events = send(session, {"type": "response.create"})
    session.poll(session.next_due_ms or 0)
    return session, next(e["item"]["id"] for e in events if e["type"] == "response.output_item.added")


def test_truncate_within_sent_audio_is_confirmed_and_recorded() -> None:
    """Truncating a streaming assistant item at or before what was sent is confirmed and recorded."""
    session, item_id = started_response()
    sent = session.items[item_id].audio_ms
    request = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": sent,
    }
    (event,) = send(session, request)
    assert event["type"] == "conversation.item.truncated"
    assert (event["item_id"], event["content_index"], event["audio_end_ms"]) == (item_id, 0, sent)
    assert [(t.item_id, t.audio_end_ms, t.audio_sent_ms) for t in session.truncations] == [
        (item_id, sent, sent)
    ]


def test_truncate_past_sent_audio_is_already_shorter_error() -> None:
    """audio_end_ms beyond the audio sent so far gets the service's 'already shorter' error."""
    session, item_id = started_response(Protocol.PREVIEW)
    sent = session.items[item_id].audio_ms
    request = {
        "type": "conversation.item.truncate",
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": sent + 1,
    }
    (error,) = send(session, request)
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["message"] == f"Audio content of {sent}ms is already shorter than {sent + 1}ms"
    assert session.truncations == []


def test_truncate_of_user_item_or_unknown_item_is_refused() -> None:
    """Only assistant audio items can be truncated; an unknown id is an error too."""
    session = make_session(Protocol.GA)
    (created, *_) = send(
        session,
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        },
    )
    user_id = created["item"]["id"]
    base = {"type": "conversation.item.truncate", "content_index": 0, "audio_end_ms": 0}
    (wrong,) = send(session, base | {"item_id": user_id})
    assert wrong["error"]["message"] == "Only model output audio messages can be truncated"
    (unknown,) = send(session, base | {"item_id": "item_nope"})
    assert "item_nope" in unknown["error"]["message"]
    assert unknown["error"]["type"] == "invalid_request_error"


# --- items, bad input, faults ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "expected"),
    [
        (Protocol.GA, ["conversation.item.created", "conversation.item.added", "conversation.item.done"]),
        (Protocol.PREVIEW, ["conversation.item.created"]),
    ],
)
def test_item_create_answers_per_protocol(protocol: Protocol, expected: list[str]) -> None:
    """A user text item is created, with GA's extra added/done events."""
    session = make_session(protocol)
    item = {
        "type": "message",
        "role": "user",
        "content": [{"type": "input_text", "text": "Greet the caller"}],
    }
    events = send(session, {"type": "conversation.item.create", "item": item})
    assert types(events) == expected
    assert events[0]["item"]["content"] == [{"type": "input_text", "text": "Greet the caller"}]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"type": "no.such.event", "event_id": "x"}'])
def test_garbage_gets_an_error_and_session_goes_on(text: str) -> None:
    """Invalid JSON and unknown event types are answered with an error; the session keeps working."""
    session = make_session(Protocol.GA)
    (error,) = session.receive_text(text, 0.0).events
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert types(send(session, {"type": "response.create"}))[0] == "response.created"


def test_created_delay_holds_session_created_and_queues_client_events() -> None:
    """With created_delay_ms, session.created waits; client events sent early are handled after it."""
    handshake = Accepted(Protocol.GA, "m", GA_PATH)
    session = EmulatorSession(handshake, EmulatorConfig(created_delay_ms=300), now_ms=1000.0)
    assert session.poll(1000.0).events == ()
    assert session.next_due_ms == 1300.0
    assert session.receive_text(json.dumps(ga_update()), 1100.0).events == ()
    assert types(list(session.poll(1300.0).events)) == ["session.created", "session.updated"]


def test_faults_after_responses_error_then_drop() -> None:
    """error_after_responses sends a server_error after the Nth response; drop_after_responses closes."""
    session = make_session(
        Protocol.GA,
        error_after_responses=1,
        drop_after_responses=2,
        drop_close_code=1011,
        realtime_factor=math.inf,
    )
    first = session.receive_text(json.dumps({"type": "response.create"}), 0.0)
    assert first.events[-1]["type"] == "error"
    assert first.events[-1]["error"]["type"] == "server_error"
    assert first.close is None
    second = session.receive_text(json.dumps({"type": "response.create"}), 1.0)
    assert second.events[-1]["type"] == "response.done"
    assert second.close is not None
    assert second.close.code == 1011


def test_drop_after_ms_and_session_expiry() -> None:
    """drop_after_ms closes without a close frame at its time; expiry sends session_expired and closes."""
    dropping = make_session(Protocol.GA, drop_after_ms=500)
    assert dropping.next_due_ms == 500.0
    assert dropping.poll(499.0).close is None
    close = dropping.poll(500.0).close
    assert close is not None
    assert close.code is None
    expiring = make_session(Protocol.GA, session_expires_s=60)
    out = expiring.poll(60_000.0)
    assert out.events[0]["error"]["code"] == "session_expired"
    assert out.close is not None


# --- voice ---


def test_voice_is_deterministic_speech_like_and_exact_length() -> None:
    """The reply voice has exact length, loud syllables and real pauses, and is identical every time."""
    pcm = synthesize_voice(2500)
    assert len(pcm) == 60000
    assert np.array_equal(pcm, synthesize_voice.__wrapped__(2500))
    frames = pcm[: len(pcm) // 480 * 480].reshape(-1, 480).astype(np.float64)
    level = 20 * np.log10(np.sqrt(np.mean(frames**2, axis=1)) / 32768 + 1e-12)
    assert (level > -35).mean() > 0.5  # mostly voiced
    assert (level < -60).sum() >= 5  # with pauses between words
    for fmt in AudioFormat:
        assert len(reply_audio(2500, fmt)) == 2500 * fmt.bytes_per_ms


def test_decimation_keeps_band_and_rejects_aliases() -> None:
    """24k->8k conversion passes 1 kHz within 0.5 dB and suppresses a 6 kHz tone by at least 80 dB."""
    passed = decimate_24k_to_8k(tone(500, 24000, amplitude=10000, freq=1000))[200:-200]
    aliased = decimate_24k_to_8k(tone(500, 24000, amplitude=10000, freq=6000))[200:-200]
    rms_pass = np.sqrt(np.mean(passed.astype(np.float64) ** 2))
    rms_alias = np.sqrt(np.mean(aliased.astype(np.float64) ** 2)) + 1e-9
    assert abs(20 * np.log10(rms_pass / (10000 / np.sqrt(2)))) < 0.5
    assert 20 * np.log10(rms_pass / rms_alias) > 80


# --- conformance with the openai SDK's event models -------------------------------------------


def full_session_transcript(protocol: Protocol) -> list[Event]:
    """Every kind of server event: update, VAD turn, transcription, cancel, item, truncate, clear, error."""
    session = make_session(protocol, reply_ms=300)
    if protocol is Protocol.GA:
        events = send(session, ga_update(transcription={"model": "whisper-1"}))
    else:
        body = {"input_audio_format": "g711_ulaw", "input_audio_transcription": {"model": "whisper-1"}}
        events = send(session, {"type": "session.update", "session": body})
    audio = np.concatenate([tone(600, 8000), silence(800, 8000)])
    events += append_all(session, wire(audio, AudioFormat.G711_ULAW), AudioFormat.G711_ULAW)
    events += drain(session)
    events += send(session, {"type": "response.create"})
    events += send(session, {"type": "response.cancel"})
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    events += send(session, {"type": "conversation.item.create", "item": item})
    first = session.assistant_items[0].id
    events += send(
        session,
        {"type": "conversation.item.truncate", "item_id": first, "content_index": 0, "audio_end_ms": 100},
    )
    events += send(session, {"type": "input_audio_buffer.clear"})
    events += send(session, {"type": "response.cancel"})
    return events


@pytest.mark.parametrize("protocol", list(Protocol))
def test_server_events_validate_against_the_openai_sdk_models(protocol: Protocol) -> None:
    """Every event the emulator sends parses as the SDK's model for that protocol and event type."""
    models = GA_SERVER if protocol is Protocol.GA else BETA_SERVER
    events = full_session_transcript(protocol)
    for event in events:
        if protocol is Protocol.PREVIEW and event["type"] in ("session.created", "session.updated"):
            event = event | {
                "session": event["session"] | {"model": "gpt-4o-realtime-preview"}
            }  # a Literal there
        models[event["type"]].model_validate(event)
    assert {"response.done", "conversation.item.truncated", "error", "input_audio_buffer.speech_stopped"} <= {
        e["type"] for e in events
    }
