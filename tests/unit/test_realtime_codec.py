"""The realtime codec and session settings: both protocols' transcripts decode; every command validates."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from pydantic import BaseModel

from gateway.realtime.codec import GA_AUDIO_EVENTS, PREVIEW_AUDIO_EVENTS, Protocol, RealtimeCodec
from gateway.realtime.events import (
    AppendAudio,
    AudioDelta,
    AudioDone,
    CancelResponse,
    CreateItem,
    CreateResponse,
    ErrorReported,
    IgnoredEvent,
    InputCommitted,
    ItemTruncated,
    MalformedEvent,
    RealtimeCommand,
    ResponseCreated,
    ResponseDone,
    SessionCreated,
    SessionUpdated,
    SpeechStarted,
    SpeechStopped,
    TranscriptDone,
    TruncateItem,
    UpdateSession,
    UserTranscript,
)
from gateway.realtime.session import (
    AudioFormat,
    NoiseReduction,
    SessionSettings,
    TurnDetection,
    TurnDetectionType,
    session_update_ga,
    session_update_preview,
)
from tests.sdk_models import BETA_CLIENT, BETA_SERVER, GA_CLIENT, GA_SERVER, validate_event

AUDIO_1 = bytes(range(256)) * 3
AUDIO_2 = b"\x7f\xff" * 100


# --- Recorded server transcripts (shapes from PROTOCOLS.md 4.4), one text frame per entry. ---------------

_USAGE = {
    "total_tokens": 82,
    "input_tokens": 5,
    "output_tokens": 77,
    "input_token_details": {"cached_tokens": 0, "text_tokens": 5, "audio_tokens": 0},
    "output_token_details": {"text_tokens": 21, "audio_tokens": 56},
}


def _transcript(protocol: Protocol) -> list[dict[str, Any]]:
    ga = protocol is Protocol.GA
    delta, done, transcript_done = GA_AUDIO_EVENTS if ga else PREVIEW_AUDIO_EVENTS
    session: dict[str, Any] = {"id": "sess_1", "object": "realtime.session", "expires_at": 1734626723}
    if ga:
        session |= {"type": "realtime", "model": "gpt-realtime", "output_modalities": ["audio"]}
    else:
        session |= {"model": "gpt-4o-realtime-preview", "modalities": ["audio", "text"], "voice": "alloy"}
    part = "output_audio" if ga else "audio"
    item = {
        "type": "message",
        "role": "assistant",
        "status": "incomplete",
        "id": "item_abc",
        "object": "realtime.item",
    }
    audio_ids = {"response_id": "resp_1", "item_id": "item_abc", "output_index": 0, "content_index": 0}
    return [
        {"type": "session.created", "event_id": "event_1", "session": session},
        {"type": "session.updated", "event_id": "event_2", "session": session},
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "event_3",
            "audio_start_ms": 1200,
            "item_id": "item_u1",
        },
        {
            "type": "input_audio_buffer.speech_stopped",
            "event_id": "event_4",
            "audio_end_ms": 2900,
            "item_id": "item_u1",
        },
        {
            "type": "input_audio_buffer.committed",
            "event_id": "event_5",
            "previous_item_id": None,
            "item_id": "item_u1",
        },
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "event_6",
            "item_id": "item_u1",
            "content_index": 0,
            "transcript": "What's my balance?",
            "usage": {"type": "duration", "seconds": 1.7},
        },
        {
            "type": "response.created",
            "event_id": "event_7",
            "response": {
                "object": "realtime.response",
                "id": "resp_1",
                "status": "in_progress",
                "output": [],
            },
        },
        {
            "type": "rate_limits.updated",
            "event_id": "event_8",
            "rate_limits": [{"name": "requests", "limit": 1000, "remaining": 999, "reset_seconds": 60.0}],
        },
        {"type": delta, "event_id": "event_9", **audio_ids, "delta": base64.b64encode(AUDIO_1).decode()},
        {"type": delta, "event_id": "event_10", **audio_ids, "delta": base64.b64encode(AUDIO_2).decode()},
        {"type": done, "event_id": "event_11", **audio_ids},
        {"type": transcript_done, "event_id": "event_12", **audio_ids, "transcript": "Sure, your balance is"},
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "event_13",
            "audio_start_ms": 5100,
            "item_id": "item_u2",
        },
        {
            "type": "response.done",
            "event_id": "event_14",
            "response": {
                "object": "realtime.response",
                "id": "resp_1",
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "output": [item | {"content": [{"type": part, "transcript": "Sure, your balance is"}]}],
                "usage": _USAGE,
            },
        },
        {
            "type": "error",
            "event_id": "event_15",
            "error": {
                "type": "invalid_request_error",
                "code": "response_cancel_not_active",
                "message": "Cancellation failed: no active response found",
                "param": None,
                "event_id": "evt_5",
            },
        },
        {
            "type": "conversation.item.truncated",
            "event_id": "event_16",
            "item_id": "item_abc",
            "content_index": 0,
            "audio_end_ms": 640,
        },
        {
            "type": "error",
            "event_id": "event_17",
            "error": {
                "type": "invalid_request_error",
                "code": None,
                "message": "Audio content of 9800ms is already shorter than 11579ms",
                "param": None,
                "event_id": None,
            },
        },
        {
            "type": "response.done",
            "event_id": "event_18",
            "response": {
                "object": "realtime.response",
                "id": "resp_2",
                "status": "failed",
                "status_details": {"type": "failed", "error": {"type": "server_error", "code": "internal"}},
                "output": [],
            },
        },
    ]


def _expected(session: dict[str, Any]) -> list[Any]:
    return [
        SessionCreated(session_id="sess_1", expires_at=1734626723),
        SessionUpdated(session=session),
        SpeechStarted(audio_start_ms=1200, item_id="item_u1"),
        SpeechStopped(audio_end_ms=2900, item_id="item_u1"),
        InputCommitted(item_id="item_u1"),
        UserTranscript(item_id="item_u1", transcript="What's my balance?"),
        ResponseCreated(response_id="resp_1"),
        IgnoredEvent(type="rate_limits.updated"),
        AudioDelta(response_id="resp_1", item_id="item_abc", content_index=0, audio=AUDIO_1),
        AudioDelta(response_id="resp_1", item_id="item_abc", content_index=0, audio=AUDIO_2),
        AudioDone(response_id="resp_1", item_id="item_abc"),
        TranscriptDone(response_id="resp_1", item_id="item_abc", transcript="Sure, your balance is"),
        SpeechStarted(audio_start_ms=5100, item_id="item_u2"),
        ResponseDone(response_id="resp_1", status="cancelled", reason="turn_detected"),
        ErrorReported(
            code="response_cancel_not_active",
            message="Cancellation failed: no active response found",
            error_type="invalid_request_error",
            event_id="evt_5",
        ),
        ItemTruncated(item_id="item_abc", content_index=0, audio_end_ms=640),
        ErrorReported(
            code=None,
            message="Audio content of 9800ms is already shorter than 11579ms",
            error_type="invalid_request_error",
            event_id=None,
        ),
        ResponseDone(response_id="resp_2", status="failed", reason="internal"),
    ]


@pytest.mark.parametrize("protocol", list(Protocol))
def test_recorded_transcript_decodes(protocol: Protocol) -> None:
    """A recorded server transcript (incl. a barge-in and errors) decodes to the expected typed events."""
    codec = RealtimeCodec(protocol, SessionSettings())
    transcript = _transcript(protocol)
    events = [codec.decode(json.dumps(message)) for message in transcript]
    assert events == _expected(transcript[1]["session"])


@pytest.mark.parametrize(("protocol", "models"), [(Protocol.GA, GA_SERVER), (Protocol.PREVIEW, BETA_SERVER)])
def test_recorded_transcripts_are_what_the_sdk_describes(protocol: Protocol, models: dict[str, Any]) -> None:
    """Each recorded server event validates against the SDK's server model of that protocol."""
    for message in _transcript(protocol):
        model = models[message["type"]].model_validate(message)
        assert model.type == message["type"]


@pytest.mark.parametrize(
    ("protocol", "foreign"), [(Protocol.GA, PREVIEW_AUDIO_EVENTS), (Protocol.PREVIEW, GA_AUDIO_EVENTS)]
)
def test_other_protocols_audio_names_are_ignored(protocol: Protocol, foreign: tuple[str, ...]) -> None:
    """A codec decodes only its own protocol's audio names; the other protocol's come back as IgnoredEvent."""
    codec = RealtimeCodec(protocol, SessionSettings())
    for name in foreign:
        message = {"type": name, "response_id": "r", "item_id": "i", "content_index": 0, "delta": "AAAA"}
        assert codec.decode(json.dumps(message)) == IgnoredEvent(type=name)


def test_decode_accepts_bytes() -> None:
    """A frame delivered as UTF-8 bytes decodes like text."""
    codec = RealtimeCodec(Protocol.GA, SessionSettings())
    frame = json.dumps({"type": "input_audio_buffer.committed", "item_id": "item_1"}).encode()
    assert codec.decode(frame) == InputCommitted(item_id="item_1")


_DELTA = {"type": "response.output_audio.delta", "response_id": "r", "item_id": "i", "content_index": 0}

MALFORMED: list[tuple[str, str, str]] = [
    ("not json", "{nope", "not JSON"),
    ("array", "[]", "not a JSON object"),
    ("nested too deep", "[" * 100_000, "not JSON"),
    ("no type", '{"event_id": "e"}', "'type'"),
    ("type not a string", '{"type": 7}', "'type'"),
    ("delta not base64", json.dumps(_DELTA | {"delta": "@@@"}), "base64"),
    ("delta not a string", json.dumps(_DELTA | {"delta": 5}), "'delta'"),
    ("delta missing", json.dumps(_DELTA), "'delta'"),
    (
        "content_index a string",
        json.dumps(_DELTA | {"delta": "AAAA", "content_index": "0"}),
        "'content_index'",
    ),
    (
        "content_index a bool",
        json.dumps(_DELTA | {"delta": "AAAA", "content_index": True}),
        "'content_index'",
    ),
    (
        "speech start ms float",
        '{"type":"input_audio_buffer.speech_started","audio_start_ms":1.5,"item_id":"i"}',
        "audio_start_ms",
    ),
    ("response not an object", '{"type":"response.created","response":"resp_1"}', "'response'"),
    ("response.done without status", '{"type":"response.done","response":{"id":"r"}}', "'status'"),
    (
        "status_details not an object",
        '{"type":"response.done","response":{"id":"r","status":"x","status_details":3}}',
        "status_details",
    ),
    ("error without body", '{"type":"error"}', "'error'"),
    ("error code a number", '{"type":"error","error":{"code":400,"message":"m"}}', "'code'"),
    (
        "session.created expires_at string",
        '{"type":"session.created","session":{"id":"s","expires_at":"soon"}}',
        "expires_at",
    ),
    (
        "truncated ms string",
        '{"type":"conversation.item.truncated","item_id":"i","content_index":0,"audio_end_ms":"12"}',
        "audio_end_ms",
    ),
]


@pytest.mark.parametrize(("name", "text", "needle"), MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_input_is_an_event_not_an_exception(name: str, text: str, needle: str) -> None:
    """Invalid JSON, wrong field types and bad base64 give MalformedEvent with a reason naming the problem."""
    event = RealtimeCodec(Protocol.GA, SessionSettings()).decode(text)
    assert isinstance(event, MalformedEvent)
    assert needle in event.reason


def test_unknown_types_are_ignored() -> None:
    """A well-formed event of a type the gateway does not use becomes IgnoredEvent(type)."""
    codec = RealtimeCodec(Protocol.PREVIEW, SessionSettings())
    assert codec.decode('{"type":"conversation.item.created","item":{}}') == IgnoredEvent(
        "conversation.item.created"
    )
    assert codec.decode('{"type":"something.new"}') == IgnoredEvent("something.new")


# --- Encoding: every command, both protocols, validated by the SDK's own models. -------------------------

FULL_SETTINGS = SessionSettings(
    instructions='Be brief. Say "hello" & wait.',
    voice="marin",
    input_format=AudioFormat.G711_ULAW,
    output_format=AudioFormat.G711_ULAW,
    turn_detection=TurnDetection(idle_timeout_ms=8000),
    transcription_model="whisper-1",
    transcription_language="en",
    noise_reduction=NoiseReduction.NEAR_FIELD,
    model="gpt-realtime",
    temperature=0.8,
    speed=1.1,
    greeting="Greet the caller.",
)

SETTINGS_CASES = [
    SessionSettings(),
    FULL_SETTINGS,
    SessionSettings(
        input_format=AudioFormat.G711_ALAW,
        output_format=AudioFormat.PCM16,
        turn_detection=TurnDetection(type=TurnDetectionType.SEMANTIC_VAD, eagerness="high"),
        noise_reduction=NoiseReduction.FAR_FIELD,
    ),
    SessionSettings(instructions="", turn_detection=TurnDetection(type=TurnDetectionType.NONE)),
]

COMMANDS: list[RealtimeCommand] = [
    UpdateSession(),
    AppendAudio(AUDIO_1),
    AppendAudio(b""),
    CreateResponse(),
    CreateResponse(instructions='Greet the caller: "Hi" & smile.'),
    CancelResponse(),
    CancelResponse(response_id="resp_1"),
    TruncateItem(item_id="item_abc", content_index=0, audio_end_ms=1840),
    CreateItem(role="user", text="I want to change my booking."),
    CreateItem(role="assistant", text='Sure, "which" booking?'),
    CreateItem(role="system", text="The call was reconnected."),
]


@pytest.mark.parametrize("settings", SETTINGS_CASES)
@pytest.mark.parametrize(("protocol", "models"), [(Protocol.GA, GA_CLIENT), (Protocol.PREVIEW, BETA_CLIENT)])
def test_every_command_validates_against_the_sdk(
    protocol: Protocol, models: dict[str, type[BaseModel]], settings: SessionSettings
) -> None:
    """Every encoded client event strictly validates against its protocol's SDK model, with no extra keys."""
    codec = RealtimeCodec(protocol, settings)
    for command in COMMANDS:
        event = json.loads(codec.encode(command))
        validate_event(models, event)


def test_ga_session_update_is_not_mistaken_for_preview() -> None:
    """The GA update carries session.type and nested audio; the preview update has neither (PROTOCOLS 4.2)."""
    ga = session_update_ga(FULL_SETTINGS)["session"]
    preview = session_update_preview(FULL_SETTINGS)["session"]
    assert ga["type"] == "realtime"
    assert "audio" in ga
    assert "modalities" not in ga
    assert "temperature" not in ga
    assert "type" not in preview
    assert "audio" not in preview
    assert "speed" not in preview
    assert "model" not in preview


def test_ga_session_update_shape() -> None:
    """The GA session.update for full settings is exactly the PROTOCOLS.md 4.2 GA shape."""
    assert session_update_ga(FULL_SETTINGS) == {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "instructions": 'Be brief. Say "hello" & wait.',
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "noise_reduction": {"type": "near_field"},
                    "transcription": {"model": "whisper-1", "language": "en"},
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": 300,
                        "silence_duration_ms": 500,
                        "idle_timeout_ms": 8000,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.1},
            },
        },
    }


def test_preview_session_update_shape() -> None:
    """The preview session.update is exactly the PROTOCOLS.md 4.2 beta shape (no idle timeout)."""
    assert session_update_preview(FULL_SETTINGS) == {
        "type": "session.update",
        "session": {
            "modalities": ["text", "audio"],
            "instructions": 'Be brief. Say "hello" & wait.',
            "voice": "marin",
            "input_audio_format": "g711_ulaw",
            "output_audio_format": "g711_ulaw",
            "input_audio_transcription": {"model": "whisper-1", "language": "en"},
            "input_audio_noise_reduction": {"type": "near_field"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
                "interrupt_response": True,
            },
            "temperature": 0.8,
        },
    }


def test_semantic_vad_and_vad_off() -> None:
    """Semantic VAD sends eagerness (no server_vad knobs); turn detection off is an explicit null."""
    semantic = SessionSettings(
        turn_detection=TurnDetection(type=TurnDetectionType.SEMANTIC_VAD, eagerness="low")
    )
    assert session_update_preview(semantic)["session"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": True,
        "interrupt_response": True,
    }
    off = SessionSettings(turn_detection=TurnDetection(type=TurnDetectionType.NONE))
    assert session_update_ga(off)["session"]["audio"]["input"]["turn_detection"] is None
    assert session_update_preview(off)["session"]["turn_detection"] is None


def test_pcm16_formats_in_both_protocols() -> None:
    """PCM16 is {"type":"audio/pcm","rate":24000} in GA and "pcm16" in preview."""
    settings = SessionSettings(input_format=AudioFormat.PCM16, output_format=AudioFormat.G711_ALAW)
    audio = session_update_ga(settings)["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["output"]["format"] == {"type": "audio/pcma"}
    session = session_update_preview(settings)["session"]
    assert (session["input_audio_format"], session["output_audio_format"]) == ("pcm16", "g711_alaw")


@pytest.mark.parametrize(
    ("fmt", "rate", "per_ms", "frame_20ms"),
    [
        (AudioFormat.PCM16, 24000, 48, 960),
        (AudioFormat.G711_ULAW, 8000, 8, 160),
        (AudioFormat.G711_ALAW, 8000, 8, 160),
    ],
)
def test_format_sizes(fmt: AudioFormat, rate: int, per_ms: int, frame_20ms: int) -> None:
    """Sample rate, bytes per ms and durations match the table in PROTOCOLS.md 0."""
    assert fmt.sample_rate == rate
    assert fmt.bytes_per_ms == per_ms
    assert fmt.byte_count(20) == frame_20ms
    assert fmt.duration_ms(frame_20ms) == 20.0
    assert fmt.duration_ms(4800 if fmt is AudioFormat.PCM16 else 800) == 100.0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TurnDetection(threshold=1.5), "threshold"),
        (lambda: TurnDetection(silence_duration_ms=-1), "silence_duration_ms"),
        (lambda: TurnDetection(eagerness="eager"), "eagerness"),  # type: ignore[arg-type]
        (lambda: TurnDetection(type=TurnDetectionType.SEMANTIC_VAD, idle_timeout_ms=5000), "detection only"),
        (lambda: TurnDetection(idle_timeout_ms=0), "positive"),
        (lambda: SessionSettings(temperature=2.0), "temperature"),
        (lambda: SessionSettings(speed=3.0), "speed"),
        (lambda: SessionSettings(voice=""), "voice"),
        (lambda: SessionSettings(transcription_language="en"), "transcription_model"),
    ],
)
def test_invalid_settings_are_refused(make: Any, match: str) -> None:
    """Out-of-range or contradictory settings raise ValueError when built, not at the service."""
    with pytest.raises(ValueError, match=match):
        make()


def test_event_ids_count_up_and_map_back_to_commands() -> None:
    """Each client event gets evt_N; sent_command maps an error's event_id back to the non-append command."""
    codec = RealtimeCodec(Protocol.GA, SessionSettings())
    truncate = TruncateItem(item_id="item_abc", content_index=0, audio_end_ms=1840)
    ids = [
        json.loads(codec.encode(c))["event_id"]
        for c in (UpdateSession(), AppendAudio(b"\x00"), CancelResponse(), truncate)
    ]
    assert ids == ["evt_1", "evt_2", "evt_3", "evt_4"]
    assert codec.sent_command("evt_1") == UpdateSession()
    assert codec.sent_command("evt_2") is None  # appends are not remembered
    assert codec.sent_command("evt_3") == CancelResponse()
    assert codec.sent_command("evt_4") == truncate
    assert codec.sent_command(None) is None
    assert codec.sent_command("evt_99") is None


def test_remembered_commands_are_bounded() -> None:
    """Only the most recent commands are remembered, so a long call does not grow the map."""
    codec = RealtimeCodec(Protocol.PREVIEW, SessionSettings())
    for _ in range(1000):
        codec.encode(CancelResponse())
    assert codec.sent_command("evt_1") is None
    assert codec.sent_command("evt_1000") == CancelResponse()
    assert len(codec._sent) <= 256


def test_append_fast_path_equals_the_plain_json() -> None:
    """The f-string append is the same JSON a dict would give, with the audio base64-encoded."""
    codec = RealtimeCodec(Protocol.GA, SessionSettings())
    text = codec.encode(AppendAudio(AUDIO_1))
    assert json.loads(text) == {
        "type": "input_audio_buffer.append",
        "event_id": "evt_1",
        "audio": base64.b64encode(AUDIO_1).decode(),
    }


def test_command_bodies() -> None:
    """Create, cancel and truncate carry exactly the optional fields that were given."""
    codec = RealtimeCodec(Protocol.GA, SessionSettings())
    assert json.loads(codec.encode(CreateResponse())) == {"type": "response.create", "event_id": "evt_1"}
    assert json.loads(codec.encode(CreateResponse("Hi"))) == {
        "type": "response.create",
        "event_id": "evt_2",
        "response": {"instructions": "Hi"},
    }
    assert json.loads(codec.encode(CancelResponse("resp_9"))) == {
        "type": "response.cancel",
        "event_id": "evt_3",
        "response_id": "resp_9",
    }
    assert json.loads(codec.encode(TruncateItem("item_1", 0, 1840))) == {
        "type": "conversation.item.truncate",
        "event_id": "evt_4",
        "item_id": "item_1",
        "content_index": 0,
        "audio_end_ms": 1840,
    }


def test_update_session_uses_the_codecs_protocol() -> None:
    """UpdateSession encodes the GA body on a GA codec and the preview body on a preview codec."""
    for protocol, build in ((Protocol.GA, session_update_ga), (Protocol.PREVIEW, session_update_preview)):
        event = json.loads(RealtimeCodec(protocol, FULL_SETTINGS).encode(UpdateSession()))
        assert event == {
            "type": "session.update",
            "event_id": "evt_1",
            "session": build(FULL_SETTINGS)["session"],
        }


def test_the_sdk_check_can_fail() -> None:
    """The validation used above refuses a preview update on GA models and spots keys GA does not know."""
    preview_update = session_update_preview(FULL_SETTINGS) | {"event_id": "evt_1"}
    with pytest.raises(ValueError, match="session"):
        validate_event(GA_CLIENT, preview_update)
    ga_update = session_update_ga(FULL_SETTINGS)
    ga_update["session"]["temperature"] = 0.8
    with pytest.raises(AssertionError, match="keys the SDK does not know"):
        validate_event(GA_CLIENT, ga_update)
    with pytest.raises(ValueError, match="audio_end_ms"):
        validate_event(
            GA_CLIENT,
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, "audio_end_ms": "12"},
        )


@pytest.mark.parametrize(("protocol", "kind"), [(Protocol.GA, "output_text"), (Protocol.PREVIEW, "text")])
def test_assistant_text_items_use_each_protocols_content_type(protocol: Protocol, kind: str) -> None:
    """Replayed assistant text is output_text in GA and text in preview; user text is input_text in both."""
    codec = RealtimeCodec(protocol, SessionSettings())
    bot = json.loads(codec.encode(CreateItem(role="assistant", text="hi")))
    user = json.loads(codec.encode(CreateItem(role="user", text="yo")))
    assert bot["item"]["content"] == [{"type": kind, "text": "hi"}]
    assert user["item"]["content"] == [{"type": "input_text", "text": "yo"}]
