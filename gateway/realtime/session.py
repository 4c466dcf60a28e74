"""Realtime session settings and the `session.update` bodies of both protocols (GA and preview/beta).

`SessionSettings` says what the gateway wants; `session_update_ga` and `session_update_preview` say it
in each protocol's words (PROTOCOLS.md 4.2). Optional settings left at None are omitted from the update,
so the service keeps its defaults (off, for transcription and noise reduction); turn detection "none"
is sent as an explicit null, because the services turn server VAD on by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_INSTRUCTIONS",
    "DEFAULT_VOICE",
    "AudioFormat",
    "Eagerness",
    "NoiseReduction",
    "Protocol",
    "SessionSettings",
    "TurnDetection",
    "TurnDetectionType",
    "session_update",
    "session_update_ga",
    "session_update_preview",
]

DEFAULT_INSTRUCTIONS: Final = "You are a helpful voice assistant on a phone call. Keep answers short."
DEFAULT_VOICE: Final = "alloy"  # a voice both protocols know; GA adds marin and cedar
PCM16_SAMPLE_RATE: Final = 24000
G711_SAMPLE_RATE: Final = 8000
TEMPERATURE_RANGE: Final = (0.6, 1.2)
MAX_OUTPUT_TOKENS: Final = 4096  # the services' ceiling for one reply
SPEED_RANGE: Final = (0.25, 1.5)

Eagerness = Literal["low", "medium", "high", "auto"]
_EAGERNESS: Final = ("low", "medium", "high", "auto")


class Protocol(Enum):
    """Which realtime event dialect a connection speaks."""

    GA = "ga"
    PREVIEW = "preview"


class AudioFormat(Enum):
    """Realtime audio formats (mono). The value is the preview protocol's name for the format."""

    PCM16 = "pcm16"
    G711_ULAW = "g711_ulaw"
    G711_ALAW = "g711_alaw"

    @property
    def sample_rate(self) -> int:
        """Samples per second: 24 kHz for PCM16 (the only rate the service accepts), 8 kHz for G.711."""
        return PCM16_SAMPLE_RATE if self is AudioFormat.PCM16 else G711_SAMPLE_RATE

    @property
    def bytes_per_sample(self) -> int:
        """2 for PCM16, 1 for G.711."""
        return 2 if self is AudioFormat.PCM16 else 1

    @property
    def bytes_per_ms(self) -> int:
        """48 for PCM16 at 24 kHz, 8 for G.711."""
        return self.sample_rate * self.bytes_per_sample // 1000

    def duration_ms(self, byte_count: int) -> float:
        """How long `byte_count` bytes of this format play, in milliseconds."""
        return byte_count / self.bytes_per_ms

    def byte_count(self, ms: int) -> int:
        """How many bytes `ms` milliseconds of this format take."""
        return ms * self.bytes_per_ms

    @classmethod
    def from_preview(cls, value: object) -> AudioFormat | None:
        """Parse a preview (beta) format name such as "g711_ulaw"; None if it is not one."""
        return next((f for f in cls if f.value == value), None)

    @classmethod
    def from_ga(cls, value: object) -> AudioFormat | None:
        """Parse a GA format object; None if it is not one (PCM must be 24000 Hz if a rate is given)."""
        if not isinstance(value, dict):
            return None
        kind, extra = value.get("type"), set(value) - {"type"}
        if kind == "audio/pcm" and extra <= {"rate"}:
            return cls.PCM16 if value.get("rate", PCM16_SAMPLE_RATE) == PCM16_SAMPLE_RATE else None
        if extra or not isinstance(kind, str):
            return None
        return {"audio/pcmu": cls.G711_ULAW, "audio/pcma": cls.G711_ALAW}.get(kind)

    def ga_format(self) -> dict[str, Any]:
        """The GA protocol's format object (`audio.input.format` / `audio.output.format`)."""
        if self is AudioFormat.PCM16:
            return {"type": "audio/pcm", "rate": PCM16_SAMPLE_RATE}
        return {"type": "audio/pcmu" if self is AudioFormat.G711_ULAW else "audio/pcma"}


class TurnDetectionType(StrEnum):
    """Who decides when the caller's turn ends."""

    SERVER_VAD = "server_vad"
    SEMANTIC_VAD = "semantic_vad"
    NONE = "none"


class NoiseReduction(StrEnum):
    """Input noise reduction profile: close-talking handset or far-field microphone."""

    NEAR_FIELD = "near_field"
    FAR_FIELD = "far_field"

    @classmethod
    def from_setting(cls, value: str) -> NoiseReduction | None:
        """NOISE_REDUCTION's value: a profile, or None for "off" (the service's own default)."""
        return None if value == "off" else cls(value)


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """Voice activity detection settings; the defaults are the services' own server_vad defaults."""

    type: TurnDetectionType = TurnDetectionType.SERVER_VAD
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None
    eagerness: Eagerness = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"turn detection threshold must be within 0..1, got {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("turn detection prefix_padding_ms and silence_duration_ms must be >= 0")
        if self.eagerness not in _EAGERNESS:
            raise ValueError(f"eagerness must be one of {', '.join(_EAGERNESS)}, got {self.eagerness!r}")
        if self.idle_timeout_ms is not None:
            if self.type is not TurnDetectionType.SERVER_VAD:
                raise ValueError("idle_timeout_ms works with server_vad turn detection only")
            if self.idle_timeout_ms <= 0:
                raise ValueError("idle_timeout_ms must be positive")

    def to_dict(self, *, with_idle_timeout: bool) -> dict[str, Any] | None:
        """The wire object (None means: send null, VAD off). Preview has no idle timeout."""
        if self.type is TurnDetectionType.NONE:
            return None
        body: dict[str, Any] = {"type": self.type.value}
        if self.type is TurnDetectionType.SEMANTIC_VAD:
            body["eagerness"] = self.eagerness
        else:
            body["threshold"] = self.threshold
            body["prefix_padding_ms"] = self.prefix_padding_ms
            body["silence_duration_ms"] = self.silence_duration_ms
            if with_idle_timeout and self.idle_timeout_ms is not None:
                body["idle_timeout_ms"] = self.idle_timeout_ms
        body["create_response"] = self.create_response
        body["interrupt_response"] = self.interrupt_response
        return body


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """What the gateway asks of each realtime session. `greeting` is for the bridge's opening response."""

    instructions: str = DEFAULT_INSTRUCTIONS
    voice: str = DEFAULT_VOICE
    input_format: AudioFormat = AudioFormat.PCM16
    output_format: AudioFormat = AudioFormat.PCM16
    turn_detection: TurnDetection = field(default_factory=TurnDetection)
    transcription_model: str | None = None
    transcription_language: str | None = None
    noise_reduction: NoiseReduction | None = None
    model: str | None = None  # GA session.model; preview takes the deployment from the URL instead
    temperature: float | None = None  # preview only: GA has no temperature
    speed: float | None = None  # GA only
    max_output_tokens: int | None = None  # a reply's longest, 1..4096 (None: "inf", the service's default)
    greeting: str | None = None
    tools: tuple[dict[str, Any], ...] = ()  # function (and, GA only, mcp) tool definitions, as sent

    def __post_init__(self) -> None:
        if not self.voice:
            raise ValueError("voice must not be empty")
        if self.transcription_language is not None and self.transcription_model is None:
            raise ValueError("transcription_language needs a transcription_model")
        low, high = TEMPERATURE_RANGE
        if self.temperature is not None and not low <= self.temperature <= high:
            raise ValueError(f"temperature must be within {low}..{high}, got {self.temperature}")
        if self.max_output_tokens is not None and not 1 <= self.max_output_tokens <= MAX_OUTPUT_TOKENS:
            raise ValueError(
                f"max_output_tokens must be within 1..{MAX_OUTPUT_TOKENS}, got {self.max_output_tokens}"
            )
        low, high = SPEED_RANGE
        if self.speed is not None and not low <= self.speed <= high:
            raise ValueError(f"speed must be within {low}..{high}, got {self.speed}")

    def transcription(self) -> dict[str, Any] | None:
        """The input transcription object shared by both protocols, or None when transcription is off."""
        if self.transcription_model is None:
            return None
        body: dict[str, Any] = {"model": self.transcription_model}
        if self.transcription_language is not None:
            body["language"] = self.transcription_language
        return body


def session_update_ga(settings: SessionSettings) -> dict[str, Any]:
    """The GA `session.update` client event (without `event_id`) for these settings."""
    audio_in: dict[str, Any] = {"format": settings.input_format.ga_format()}
    if settings.noise_reduction is not None:
        audio_in["noise_reduction"] = {"type": settings.noise_reduction.value}
    if (transcription := settings.transcription()) is not None:
        audio_in["transcription"] = transcription
    audio_in["turn_detection"] = settings.turn_detection.to_dict(with_idle_timeout=True)
    audio_out: dict[str, Any] = {"format": settings.output_format.ga_format(), "voice": settings.voice}
    if settings.speed is not None:
        audio_out["speed"] = settings.speed
    session: dict[str, Any] = {"type": "realtime"}
    if settings.model is not None:
        session["model"] = settings.model
    if settings.instructions:
        session["instructions"] = settings.instructions
    session["output_modalities"] = ["audio"]
    session["audio"] = {"input": audio_in, "output": audio_out}
    if settings.max_output_tokens is not None:
        session["max_output_tokens"] = settings.max_output_tokens
    _add_tools(session, settings)
    return {"type": "session.update", "session": session}


def _add_tools(session: dict[str, Any], settings: SessionSettings) -> None:
    """Both protocols take `tools` and `tool_choice` at the session's top level; none: left out."""
    if settings.tools:
        session["tools"] = [dict(tool) for tool in settings.tools]
        session["tool_choice"] = "auto"


def session_update_preview(settings: SessionSettings) -> dict[str, Any]:
    """The preview (beta) `session.update` client event (without `event_id`) for these settings."""
    session: dict[str, Any] = {"modalities": ["text", "audio"]}
    if settings.instructions:
        session["instructions"] = settings.instructions
    session["voice"] = settings.voice
    session["input_audio_format"] = settings.input_format.value
    session["output_audio_format"] = settings.output_format.value
    if (transcription := settings.transcription()) is not None:
        session["input_audio_transcription"] = transcription
    if settings.noise_reduction is not None:
        session["input_audio_noise_reduction"] = {"type": settings.noise_reduction.value}
    session["turn_detection"] = settings.turn_detection.to_dict(with_idle_timeout=False)
    if settings.temperature is not None:
        session["temperature"] = settings.temperature
    if settings.max_output_tokens is not None:
        session["max_response_output_tokens"] = settings.max_output_tokens
    _add_tools(session, settings)
    return {"type": "session.update", "session": session}


def session_update(protocol: Protocol, settings: SessionSettings) -> dict[str, Any]:
    """The `session.update` client event for `protocol` (without `event_id`)."""
    if protocol is Protocol.GA:
        return session_update_ga(settings)
    return session_update_preview(settings)
