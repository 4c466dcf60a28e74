"""One emulated realtime session, sans-I/O: client JSON text in, server events (dicts) out.

Time is an argument. `EmulatorSession.poll(now_ms)` and `receive_text(text, now_ms)` return an
`Output`: the events to send now, in order, the time at which `poll` must be called again
(`next_due_ms`, None when nothing is scheduled), and whether to close the socket. Only the server
sleeps. The session also records everything a test wants to inspect: client events, received audio,
items with the exact audio sent, truncations, cancels and errors.

Both realtime protocols are spoken (PROTOCOLS.md §3-4): GA (`/v1/realtime?model=`, no beta header)
and beta / Azure preview (`/openai/realtime?api-version=&deployment=`, or any path with
`OpenAI-Beta: realtime=v1`). `negotiate` decides which from the handshake request.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from gateway.emulator.vad import EnergyVad, VadSettings, VadSpeechStarted, VadSpeechStopped
from gateway.emulator.voice import decode_audio, reply_audio
from gateway.realtime.session import AudioFormat, Protocol

__all__ = [
    "DEFAULT_TRANSCRIPT",
    "Accepted",
    "CancelRecord",
    "CloseSocket",
    "EmulatorConfig",
    "EmulatorSession",
    "ItemRecord",
    "Output",
    "ReceivedAudio",
    "Rejected",
    "ResponseRecord",
    "ToolOutputRecord",
    "ToolRule",
    "TruncationRecord",
    "negotiate",
]

GA_PATHS = frozenset({"/openai/v1/realtime", "/v1/realtime"})
PREVIEW_PATHS = frozenset({"/openai/realtime"})
HEADERS_OF_INTEREST = ("openai-beta", "user-agent", "x-ms-client-request-id", "x-request-id", "origin")
DEFAULT_TRANSCRIPT = "Thanks for calling! I can certainly help you with that, just one moment please."
DEFAULT_USER_TRANSCRIPT = "Hello, I have a question about my account."
MIN_COMMIT_MS = 100  # the real service refuses to commit less than this
SESSION_EXPIRED_CLOSE = 1000

DEFAULT_SERVER_VAD: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
}
DEFAULT_SEMANTIC_VAD: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_SILENCE_MS = {"low": 800, "medium": 500, "auto": 500, "high": 300}

# Field names that belong to the other protocol: a gateway that mixes them up gets the real service's
# "Unknown parameter" error.
BETA_ONLY_SESSION = frozenset(
    {
        "modalities",
        "voice",
        "input_audio_format",
        "output_audio_format",
        "turn_detection",
        "input_audio_transcription",
        "input_audio_noise_reduction",
        "temperature",
        "max_response_output_tokens",
    }
)
GA_ONLY_SESSION = frozenset({"audio", "output_modalities", "max_output_tokens", "truncation", "prompt"})
BETA_ONLY_RESPONSE = frozenset({"modalities", "voice", "output_audio_format", "max_response_output_tokens"})
GA_ONLY_RESPONSE = frozenset({"audio", "output_modalities", "max_output_tokens"})
READ_ONLY_SESSION = frozenset({"id", "object", "expires_at", "model"})


@dataclass(frozen=True, slots=True)
class ToolRule:
    """A scripted function call: the first response after a user turn that matches `when` calls `tool`
    with `arguments` (JSON text) after its spoken reply (none with `speak` off). `when` is a substring
    of the user's text item (a DTMF entry such as "pressed 9"), or "*" for any user turn, speech too.
    Each rule fires once per session, and only when the session offers the tool."""

    when: str
    tool: str
    arguments: str = "{}"
    speak: bool = True

    @classmethod
    def parse(cls, spec: str) -> ToolRule:
        """`WHEN=TOOL[:ARGUMENTS-JSON][!]` (a trailing `!`: call without speaking), e.g.
        `pressed 0=transfer_call:{"destination": "+15550100"}`. ValueError when malformed."""
        when, sep, rest = spec.partition("=")
        if not sep or not when or not rest:
            raise ValueError(f"tool rule {spec!r}: expected WHEN=TOOL[:ARGUMENTS][!]")
        speak = not rest.endswith("!")
        rest = rest.removesuffix("!")
        tool, _, arguments = rest.partition(":")
        arguments = arguments or "{}"
        try:
            parsed = json.loads(arguments)
        except ValueError as exc:
            raise ValueError(f"tool rule {spec!r}: the arguments are not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"tool rule {spec!r}: arguments must be a JSON object")
        return cls(when, tool, arguments, speak)


@dataclass(frozen=True, slots=True)
class ToolOutputRecord:
    """A function_call_output item the client created."""

    call_id: str
    output: str
    at_ms: float


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Emulator behaviour, load-test knobs and fault injection. Defaults: realistic, no faults.

    `realtime_factor` is how much faster than real time audio deltas are sent (math.inf: all at
    once). `drop_close_code` None drops the socket without a close frame (TCP abort); a code closes
    cleanly with it. Each fault counts per session.
    """

    api_key: str | None = None
    accepted_tokens: frozenset[str] = frozenset()
    reply_ms: int = 2500
    delta_ms: tuple[int, int] = (40, 240)
    realtime_factor: float = 4.0
    response_delay_ms: int = 0
    response_jitter_ms: int = 0
    seed: int = 0
    session_expires_s: int = 1800
    transcript: str = DEFAULT_TRANSCRIPT
    user_transcript: str = DEFAULT_USER_TRANSCRIPT
    send_rate_limits: bool = True
    record_client_events: bool = True
    record_audio: bool = True  # keep received and sent audio bytes (off for long load tests)
    created_delay_ms: int = 0
    handshake_delay_ms: int = 0  # hold every call's upgrade answer this long (a slow service)
    drop_after_ms: int | None = None
    drop_after_responses: int | None = None
    drop_close_code: int | None = None
    error_after_responses: int | None = None
    refuse_status: int | None = None
    refuse_count: int | None = None  # refuse only the first N handshakes (None: all of them)
    tool_rules: tuple[ToolRule, ...] = ()

    def __post_init__(self) -> None:
        low, high = self.delta_ms
        if not 0 < low <= high:
            raise ValueError(f"delta_ms must be 0 < low <= high, got {self.delta_ms}")
        if self.reply_ms <= 0 or not self.realtime_factor > 0:
            raise ValueError("reply_ms and realtime_factor must be positive")


# --- handshake -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The handshake is accepted. `path` has any api-key query value redacted; `headers` holds only
    non-secret headers of interest; `auth` names how the client authenticated (never the secret)."""

    protocol: Protocol
    model: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    auth: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refuse the handshake with this HTTP status and plain-text body."""

    status: int
    reason: str


def negotiate(
    path: str, headers: Mapping[str, str], config: EmulatorConfig, *, attempt: int = 1
) -> Accepted | Rejected:
    """Decide protocol, model and auth from the upgrade request, as the real endpoints do."""
    url = urlsplit(path)
    query = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    lower = {k.lower(): v for k, v in headers.items()}
    beta_header = "realtime=v1" in lower.get("openai-beta", "").replace(" ", "")
    if url.path in GA_PATHS:
        if "api-version" in query:
            return Rejected(401, "api-version is not allowed on the v1 realtime endpoint")
        model, protocol = query.get("model", ""), Protocol.PREVIEW if beta_header else Protocol.GA
        if not model:
            return Rejected(400, "missing required query parameter: model")
    elif url.path in PREVIEW_PATHS:
        model, protocol = query.get("deployment", ""), Protocol.PREVIEW
        if not model or not query.get("api-version"):
            return Rejected(400, "missing required query parameters: api-version and deployment")
    else:
        return Rejected(404, f"no realtime endpoint at {url.path}")
    refusing = config.refuse_count is None or attempt <= config.refuse_count
    if config.refuse_status is not None and refusing:
        return Rejected(config.refuse_status, "refused by fault injection")
    auth = _authenticate(lower, query, config)
    if auth is None:
        return Rejected(401, "invalid or missing credentials")
    redacted = {k: ("***" if k == "api-key" else v) for k, v in query.items()}
    kept = {k: lower[k] for k in HEADERS_OF_INTEREST if k in lower}
    return Accepted(protocol, model, f"{url.path}?{urlencode(redacted)}", kept, auth or None)


def _authenticate(headers: Mapping[str, str], query: Mapping[str, str], config: EmulatorConfig) -> str | None:
    """Return the auth scheme used ("" when none was offered and none is needed), or None if refused."""
    bearer = headers.get("authorization", "")
    offered = [
        ("api-key", headers.get("api-key")),
        ("bearer", bearer[7:] if bearer.lower().startswith("bearer ") else None),
        ("api-key-query", query.get("api-key")),
    ]
    presented = [(scheme, value) for scheme, value in offered if value]
    if config.api_key is None and not config.accepted_tokens:
        return presented[0][0] if presented else ""
    for scheme, value in presented:
        assert value is not None
        if config.api_key is not None and hmac.compare_digest(value.encode(), config.api_key.encode()):
            return scheme
        if scheme == "bearer" and value in config.accepted_tokens:
            return "entra-token"
    return None


# --- outputs and records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloseSocket:
    """Close the connection: with `code` (a close frame), or abruptly (TCP abort) when code is None."""

    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Output:
    """Send `events` in order; then close if `close` is set; call `poll` again at `next_due_ms`."""

    events: tuple[dict[str, Any], ...]
    next_due_ms: float | None
    close: CloseSocket | None = None


@dataclass(frozen=True, slots=True)
class ReceivedAudio:
    """One input_audio_buffer.append, raw, with the input format in force when it arrived."""

    format: AudioFormat
    data: bytes  # empty when the config does not record audio (load tests); `size` is always right
    size: int = 0
    at_ms: float = 0.0  # on the server's clock (`EmulatorServer.clock_origin_s` + at_ms / 1000)


@dataclass(slots=True)
class ItemRecord:
    """A conversation item. For assistant items `audio` is exactly the bytes sent in deltas."""

    id: str
    role: str
    kind: str  # "audio" or "text"
    response_id: str | None = None
    audio_format: AudioFormat | None = None
    audio: bytearray = field(default_factory=bytearray)
    audio_ms: int = 0
    transcript: str = ""
    status: str = "in_progress"
    truncated_ms: int | None = None
    deltas: list[tuple[float, int, int]] = field(default_factory=list)  # (at_ms, start_ms, size_ms) sent


@dataclass(slots=True)
class ResponseRecord:
    """A response and its delta schedule (chunk durations in ms, starting at `audio_start_ms`)."""

    id: str
    item_id: str
    created_ms: float
    audio_start_ms: float
    audio_format: AudioFormat
    chunks: list[int]
    next_chunk: int = 0
    sent_ms: int = 0
    words_sent: int = 0
    status: str = "in_progress"
    reason: str | None = None
    tool: ToolRule | None = None  # the function this response calls after its audio
    call_id: str | None = None
    call_ms: float | None = None  # when the function call went out


@dataclass(frozen=True, slots=True)
class TruncationRecord:
    """An accepted conversation.item.truncate; `audio_sent_ms` is what had been sent for the item."""

    item_id: str
    content_index: int
    audio_end_ms: int
    audio_sent_ms: int
    at_ms: float


@dataclass(frozen=True, slots=True)
class CancelRecord:
    """A response cancelled by the client (client_cancelled) or by server VAD (turn_detected)."""

    response_id: str
    item_id: str
    reason: str
    audio_sent_ms: int
    at_ms: float


class _ClientError(Exception):
    """A client event the real service would answer with an `error` event."""

    def __init__(self, message: str, code: str | None, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _unknown(param: str) -> _ClientError:
    return _ClientError(f"Unknown parameter: '{param}'.", "unknown_parameter", param)


def _invalid(param: str, value: object, allowed: str = "") -> _ClientError:
    detail = f" Supported values are: {allowed}." if allowed else ""
    return _ClientError(f"Invalid value: {value!r}.{detail}", "invalid_value", param)


# --- session shapes and validation ----------------------------------------------------------------


def _default_session(protocol: Protocol, sid: str, model: str, expires_at: int) -> dict[str, Any]:
    head: dict[str, Any] = {"id": sid, "object": "realtime.session", "model": model, "expires_at": expires_at}
    if protocol is Protocol.PREVIEW:
        return head | {
            "modalities": ["audio", "text"],
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_transcription": None,
            "input_audio_noise_reduction": None,
            "turn_detection": dict(DEFAULT_SERVER_VAD),
            "tools": [],
            "tool_choice": "auto",
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
        }
    pcm = AudioFormat.PCM16.ga_format()
    return (
        {"type": "realtime"}
        | head
        | {
            "output_modalities": ["audio"],
            "instructions": "",
            "audio": {
                "input": {
                    "format": pcm,
                    "transcription": None,
                    "noise_reduction": None,
                    "turn_detection": dict(DEFAULT_SERVER_VAD) | {"idle_timeout_ms": None},
                },
                "output": {"format": dict(pcm), "voice": "alloy", "speed": 1.0},
            },
            "include": None,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
        }
    )


def _check(ok: bool, param: str, value: object, allowed: str = "") -> None:
    if not ok:
        raise _invalid(param, value, allowed)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonneg_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _require_dict(value: object, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(param, value)
    return value


def _turn_detection(value: object, param: str, protocol: Protocol) -> dict[str, Any] | None:
    """Validate a turn_detection object and fill in the defaults."""
    if value is None:
        return None
    value = _require_dict(value, param)
    kind = value.get("type", "server_vad")
    _check(kind in ("server_vad", "semantic_vad"), f"{param}.type", kind, "'server_vad', 'semantic_vad'")
    base = dict(DEFAULT_SERVER_VAD if kind == "server_vad" else DEFAULT_SEMANTIC_VAD)
    if kind == "server_vad" and protocol is Protocol.GA:
        base["idle_timeout_ms"] = None
    checks: dict[str, Callable[[object], bool]] = {
        "type": lambda v: True,
        "threshold": lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1,
        "prefix_padding_ms": _nonneg_int,
        "silence_duration_ms": _nonneg_int,
        "idle_timeout_ms": lambda v: v is None or _nonneg_int(v),
        "create_response": lambda v: isinstance(v, bool),
        "interrupt_response": lambda v: isinstance(v, bool),
        "eagerness": lambda v: v in SEMANTIC_SILENCE_MS,
    }
    for key, item in value.items():
        if key not in base:
            raise _unknown(f"{param}.{key}")
        _check(checks[key](item), f"{param}.{key}", item)
    return base | value


def _beta_patch(patch: dict[str, Any]) -> dict[str, Any]:
    """Validate a beta session.update body; return the normalized fields to set."""
    out: dict[str, Any] = {}
    for key, value in patch.items():
        param = f"session.{key}"
        if key in GA_ONLY_SESSION:
            raise _unknown(param)
        if key in ("input_audio_format", "output_audio_format"):
            _check(
                AudioFormat.from_preview(value) is not None, param, value, "'pcm16', 'g711_ulaw', 'g711_alaw'"
            )
        elif key == "turn_detection":
            value = _turn_detection(value, param, Protocol.PREVIEW)
        elif key == "modalities":
            ok = isinstance(value, list) and bool(value) and set(value) <= {"text", "audio"}
            _check(ok, param, value, "'text', 'audio'")
        elif key == "temperature":
            ok = isinstance(value, int | float) and 0.6 <= value <= 1.2
            _check(ok, param, value, "a number between 0.6 and 1.2")
        if key not in READ_ONLY_SESSION and key != "type":
            out[key] = value
    return out


def _ga_audio_patch(audio: object) -> dict[str, dict[str, Any]]:
    audio = _require_dict(audio, "session.audio")
    out: dict[str, dict[str, Any]] = {}
    allowed = {
        "input": {"format", "transcription", "noise_reduction", "turn_detection"},
        "output": {"format", "voice", "speed"},
    }
    for side, body in audio.items():
        if side not in allowed:
            raise _unknown(f"session.audio.{side}")
        body = _require_dict(body, f"session.audio.{side}")
        out[side] = {}
        for key, value in body.items():
            param = f"session.audio.{side}.{key}"
            if key not in allowed[side]:
                raise _unknown(param)
            if key == "format":
                fmt = AudioFormat.from_ga(value)
                _check(fmt is not None, param, value, "audio/pcm (rate 24000), audio/pcmu, audio/pcma")
                assert fmt is not None
                value = fmt.ga_format()
            elif key == "turn_detection":
                value = _turn_detection(value, param, Protocol.GA)
            out[side][key] = value
    return out


def _ga_patch(patch: dict[str, Any]) -> dict[str, Any]:
    """Validate a GA session.update body; return the normalized fields to set (audio as sub-patches)."""
    if "type" not in patch:
        raise _ClientError(
            "Missing required parameter: 'session.type'.", "missing_required_parameter", "session.type"
        )
    _check(patch["type"] == "realtime", "session.type", patch["type"], "'realtime'")
    out: dict[str, Any] = {}
    for key, value in patch.items():
        param = f"session.{key}"
        if key in BETA_ONLY_SESSION:
            raise _unknown(param)
        if key == "audio":
            value = _ga_audio_patch(value)
        elif key == "output_modalities":
            ok = value in (["audio"], ["text"])
            _check(ok, param, value, "['audio'] or ['text'] (not both)")
        if key not in READ_ONLY_SESSION and key != "type":
            out[key] = value
    return out


# --- the session ------------------------------------------------------------------------------------


class EmulatorSession:
    """The protocol semantics of one connection. Feed it `receive_text`, call `poll` when due.

    Public attributes are the inspection record; they are only changed by this object's methods.
    """

    def __init__(
        self,
        handshake: Accepted,
        config: EmulatorConfig | None = None,
        *,
        now_ms: float = 0.0,
        epoch_s: float = 0.0,
        number: int = 0,
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.protocol = handshake.protocol
        self.model = handshake.model
        self.path = handshake.path
        self.headers = dict(handshake.headers)
        self.auth = handshake.auth
        self.number = number
        self.opened_ms = now_ms
        self.id = f"sess_emu{number:04d}"
        expires_at = int(epoch_s) + self.config.session_expires_s
        self.session = _default_session(self.protocol, self.id, self.model, expires_at)
        self.client_events: list[dict[str, Any]] = []
        self.received_audio: list[ReceivedAudio] = []
        self.items: dict[str, ItemRecord] = {}
        self.responses: list[ResponseRecord] = []
        self.truncations: list[TruncationRecord] = []
        self.cancels: list[CancelRecord] = []
        self.errors: list[dict[str, Any]] = []
        self.tool_outputs: list[ToolOutputRecord] = []
        self.sent_types: list[str] = []
        self.closed = False
        self.input_audio_ms = 0.0
        self._rng = random.Random(self.config.seed * 1_000_003 + number)
        self._counter = 0
        self._out: list[dict[str, Any]] = []
        self._close: CloseSocket | None = None
        self._created_due: float | None = now_ms + self.config.created_delay_ms
        self._queued: list[tuple[str, float]] = []
        self._active: ResponseRecord | None = None
        self._last_item_id: str | None = None
        self._buffer_ms = 0.0
        self._pcm_carry = b""
        self._speech_item: str | None = None
        self._speech_start_ms = 0
        self._responses_done = 0
        self._vad: EnergyVad | None = None
        self._vad_source: dict[str, Any] | None = None
        self._user_turn: str | None = None  # the latest user turn's text ("" for speech) not yet answered
        self._rules_fired: set[int] = set()
        self._calls: set[str] = set()  # function call ids made, awaiting outputs
        self._sync_vad()

    # -- public API --

    def poll(self, now_ms: float) -> Output:
        """Emit whatever is due at `now_ms` (session.created, audio deltas, faults)."""
        self._advance(now_ms)
        return self._flush()

    def receive_text(self, text: str, now_ms: float) -> Output:
        """Handle one client WebSocket text message; never raises on bad input (it becomes an error)."""
        if self._close is None and self._created_due is not None:
            self._queued.append((text, now_ms))  # a real client waits for session.created anyway
        else:
            self._advance(now_ms)
            self._handle(text, now_ms)
            self._advance(now_ms)
        return self._flush()

    def mark_closed(self) -> None:
        """The server calls this when the socket is gone."""
        self.closed = True
        self._active = None

    @property
    def next_due_ms(self) -> float | None:
        """When `poll` must be called next, or None if nothing is scheduled."""
        if self._close is not None:
            return None
        due = [self.opened_ms + self.config.session_expires_s * 1000.0]
        if self.config.drop_after_ms is not None:
            due.append(self.opened_ms + self.config.drop_after_ms)
        if self._created_due is not None:
            due.append(self._created_due)
        elif self._active is not None:
            due.append(self._response_due(self._active))
        return min(due)

    @property
    def input_format(self) -> AudioFormat:
        """The session's current input audio format."""
        if self.protocol is Protocol.PREVIEW:
            return AudioFormat(self.session["input_audio_format"])
        fmt = AudioFormat.from_ga(self.session["audio"]["input"]["format"])
        assert fmt is not None
        return fmt

    @property
    def output_format(self) -> AudioFormat:
        """The session's current output audio format."""
        if self.protocol is Protocol.PREVIEW:
            return AudioFormat(self.session["output_audio_format"])
        fmt = AudioFormat.from_ga(self.session["audio"]["output"]["format"])
        assert fmt is not None
        return fmt

    @property
    def turn_detection(self) -> dict[str, Any] | None:
        """The effective turn_detection object (None: VAD off)."""
        if self.protocol is Protocol.PREVIEW:
            result: dict[str, Any] | None = self.session["turn_detection"]
        else:
            result = self.session["audio"]["input"]["turn_detection"]
        return result

    @property
    def input_audio(self) -> bytes:
        """All appended input audio, raw, concatenated (see `received_audio` for per-append formats)."""
        return b"".join(chunk.data for chunk in self.received_audio)

    @property
    def assistant_items(self) -> list[ItemRecord]:
        """Assistant items in creation order."""
        return [item for item in self.items.values() if item.role == "assistant"]

    @property
    def active_response(self) -> ResponseRecord | None:
        """The response still streaming, if any."""
        return self._active

    # -- plumbing --

    def _new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_emu{self.number:04d}n{self._counter:05d}"

    def _emit(self, kind: str, **fields: Any) -> None:
        self._out.append({"type": kind, "event_id": self._new_id("event"), **fields})
        self.sent_types.append(kind)

    def _name(self, beta: str, ga: str) -> str:
        return ga if self.protocol is Protocol.GA else beta

    def _flush(self) -> Output:
        events, self._out = tuple(self._out), []
        return Output(events, self.next_due_ms, self._close)

    def _error(self, message: str, code: str | None, param: str | None, event_id: object, kind: str) -> None:
        error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
        self.errors.append(error)
        self._emit("error", error=error)

    def _advance(self, now_ms: float) -> None:
        if self._close is not None:
            return
        if self._created_due is not None and now_ms >= self._created_due:
            self._created_due = None
            self._emit("session.created", session=copy.deepcopy(self.session))
            queued, self._queued = self._queued, []
            for text, _ in queued:
                self._handle(text, now_ms)
        if self._active is not None:
            self._stream(self._active, now_ms)
        self._check_deadlines(now_ms)

    def _check_deadlines(self, now_ms: float) -> None:
        if self._close is not None:
            return
        drop = self.config.drop_after_ms
        if drop is not None and now_ms >= self.opened_ms + drop:
            self._close = CloseSocket(self.config.drop_close_code, "dropped by fault injection")
        elif now_ms >= self.opened_ms + self.config.session_expires_s * 1000.0:
            minutes = self.config.session_expires_s // 60
            message = f"Your session hit the maximum duration of {minutes} minutes."
            self._error(message, "session_expired", None, None, "invalid_request_error")
            self._close = CloseSocket(SESSION_EXPIRED_CLOSE, "session expired")

    def _handle(self, text: str, now_ms: float) -> None:
        if self._close is not None:
            return
        try:
            event = json.loads(text)
        except ValueError as exc:
            self._error(f"Invalid JSON: {exc}", "invalid_json", None, None, "invalid_request_error")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self._error(
                "Missing required parameter: 'type'.",
                "missing_required_parameter",
                "type",
                None,
                "invalid_request_error",
            )
            return
        if self.config.record_client_events:
            self.client_events.append(event)
        handler = self._handlers().get(event["type"])
        try:
            if handler is None:
                raise _invalid("type", event["type"], ", ".join(f"'{name}'" for name in self._handlers()))
            handler(event, now_ms)
        except _ClientError as exc:
            self._error(exc.message, exc.code, exc.param, event.get("event_id"), "invalid_request_error")

    def _handlers(self) -> dict[str, Callable[[dict[str, Any], float], None]]:
        return {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_truncate,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }

    # -- session.update --

    def _on_session_update(self, event: dict[str, Any], now_ms: float) -> None:
        patch = _require_dict(event.get("session"), "session")
        if self.protocol is Protocol.PREVIEW:
            self.session.update(_beta_patch(patch))
        else:
            fields = _ga_patch(patch)
            for side, body in fields.pop("audio", {}).items():
                self.session["audio"][side].update(body)
            self.session.update(fields)
        self._sync_vad()
        self._emit("session.updated", session=copy.deepcopy(self.session))

    def _sync_vad(self) -> None:
        td = self.turn_detection
        if td == self._vad_source:
            return
        self._vad_source = copy.deepcopy(td)
        self._speech_item = None
        if td is None:
            self._vad = None
            return
        silence = td.get("silence_duration_ms", SEMANTIC_SILENCE_MS[td.get("eagerness", "auto")])
        settings = VadSettings(td.get("threshold", 0.5), td.get("prefix_padding_ms", 300), silence)
        self._vad = EnergyVad(settings, start_ms=self.input_audio_ms)

    # -- input audio --

    def _on_append(self, event: dict[str, Any], now_ms: float) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise _invalid("audio", type(audio).__name__)
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise _ClientError(
                "Invalid 'audio'. Expected base64-encoded audio bytes.", "invalid_value", "audio"
            ) from None
        fmt = self.input_format
        kept = data if self.config.record_audio else b""
        self.received_audio.append(ReceivedAudio(fmt, kept, len(data), now_ms))
        self.input_audio_ms += fmt.duration_ms(len(data))
        self._buffer_ms += fmt.duration_ms(len(data))
        if fmt is AudioFormat.PCM16:
            data, self._pcm_carry = self._pcm_carry + data, b""
            if len(data) % 2:
                data, self._pcm_carry = data[:-1], data[-1:]
        if self._vad is not None:
            for vad_event in self._vad.feed(decode_audio(fmt, data), fmt.sample_rate):
                if isinstance(vad_event, VadSpeechStarted):
                    self._speech_started(vad_event, now_ms)
                else:
                    self._speech_stopped(vad_event, now_ms)

    def _speech_started(self, event: VadSpeechStarted, now_ms: float) -> None:
        self._speech_item = self._new_id("item")
        self._speech_start_ms = event.audio_start_ms
        self._emit(
            "input_audio_buffer.speech_started",
            audio_start_ms=event.audio_start_ms,
            item_id=self._speech_item,
        )
        td = self.turn_detection or {}
        if self._active is not None and td.get("interrupt_response", True):
            self._finish(self._active, "cancelled", "turn_detected", now_ms)

    def _speech_stopped(self, event: VadSpeechStopped, now_ms: float) -> None:
        item_id = self._speech_item or self._new_id("item")
        self._speech_item = None
        self._emit("input_audio_buffer.speech_stopped", audio_end_ms=event.audio_end_ms, item_id=item_id)
        self._commit_user_audio(item_id, event.audio_end_ms - self._speech_start_ms)
        td = self.turn_detection or {}
        if td.get("create_response", True) and self._active is None:
            self._start_response(None, now_ms)

    def _commit_user_audio(self, item_id: str, audio_ms: float) -> None:
        self._buffer_ms = 0.0
        previous = self._last_item_id
        self._emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        item = ItemRecord(item_id, "user", "audio", audio_ms=round(audio_ms), status="completed")
        self._add_item(item, previous)
        self._user_turn = ""
        if self._transcription_on():
            self._emit(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=self.config.user_transcript,
                usage={"type": "duration", "seconds": audio_ms / 1000},
            )
            item.transcript = self.config.user_transcript

    def _transcription_on(self) -> bool:
        if self.protocol is Protocol.PREVIEW:
            return self.session.get("input_audio_transcription") is not None
        return self.session["audio"]["input"].get("transcription") is not None

    def _on_commit(self, event: dict[str, Any], now_ms: float) -> None:
        if self._buffer_ms < MIN_COMMIT_MS:
            message = (
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {self._buffer_ms:.2f}ms of audio."
            )
            raise _ClientError(message, "input_audio_buffer_commit_empty")
        item_id = self._speech_item or self._new_id("item")
        self._speech_item = None
        self._commit_user_audio(item_id, self._buffer_ms)

    def _on_clear(self, event: dict[str, Any], now_ms: float) -> None:
        self._buffer_ms = 0.0
        self._vad_source = None  # restart VAD: a cleared buffer forgets any speech in progress
        self._sync_vad()
        self._emit("input_audio_buffer.cleared")

    # -- conversation items --

    def _item_json(self, item: ItemRecord) -> dict[str, Any]:
        body: dict[str, Any] = {"id": item.id, "type": "message", "role": item.role, "status": item.status}
        if self.protocol is Protocol.GA:
            body = {"id": item.id, "object": "realtime.item"} | body
        content: list[dict[str, Any]]
        if item.role == "assistant":
            content = [{"type": self._name("audio", "output_audio"), "transcript": item.transcript}]
        elif item.kind == "audio":
            content = [{"type": "input_audio", "transcript": item.transcript or None}]
        else:
            content = [{"type": "input_text", "text": item.transcript}]
        return body | {"content": content if item.status != "in_progress" or item.transcript else []}

    def _add_item(self, item: ItemRecord, previous: str | None) -> None:
        self.items[item.id] = item
        self._last_item_id = item.id
        self._emit("conversation.item.created", previous_item_id=previous, item=self._item_json(item))
        if self.protocol is Protocol.GA:
            self._emit("conversation.item.added", previous_item_id=previous, item=self._item_json(item))
            if item.status == "completed":
                self._emit("conversation.item.done", previous_item_id=previous, item=self._item_json(item))

    def _on_item_create(self, event: dict[str, Any], now_ms: float) -> None:
        body = _require_dict(event.get("item"), "item")
        if body.get("type") == "function_call_output":
            self._on_function_output(body, now_ms)
            return
        _check(
            body.get("type", "message") == "message",
            "item.type",
            body.get("type"),
            "'message', 'function_call_output'",
        )
        role = body.get("role")
        _check(role in ("user", "assistant", "system"), "item.role", role, "'user', 'assistant', 'system'")
        content = body.get("content")
        if not isinstance(content, list) or not content:
            raise _invalid("item.content", content)
        text = " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
        item_id = body.get("id") if isinstance(body.get("id"), str) else self._new_id("item")
        item = ItemRecord(str(item_id), str(role), "text", transcript=text, status="completed")
        self._add_item(item, self._last_item_id)
        if role == "user":
            self._user_turn = text

    def _on_function_output(self, body: dict[str, Any], now_ms: float) -> None:
        call_id, output = body.get("call_id"), body.get("output")
        if not isinstance(call_id, str) or call_id not in self._calls:
            raise _ClientError(
                f"No function call with call_id '{call_id}' found.", "invalid_value", "item.call_id"
            )
        if not isinstance(output, str):
            raise _invalid("item.output", type(output).__name__)
        self._calls.discard(call_id)
        self.tool_outputs.append(ToolOutputRecord(call_id, output, now_ms))
        item_id = self._new_id("item")
        item: dict[str, Any] = {
            "id": item_id,
            "type": "function_call_output",
            "call_id": call_id,
            "output": output,
        }
        if self.protocol is Protocol.GA:
            item = {"id": item_id, "object": "realtime.item"} | item
        self._last_item_id, previous = item_id, self._last_item_id
        self._emit("conversation.item.created", previous_item_id=previous, item=item)

    def _offered_tools(self) -> set[str]:
        tools = self.session.get("tools") or []
        return {str(t.get("name")) for t in tools if isinstance(t, dict) and t.get("type") == "function"}

    def _tool_for_turn(self) -> ToolRule | None:
        """The first unfired rule matching the user turn being answered (and offered by the session)."""
        turn, self._user_turn = self._user_turn, None
        if turn is None:
            return None
        offered = self._offered_tools()
        for index, rule in enumerate(self.config.tool_rules):
            if index in self._rules_fired or rule.tool not in offered:
                continue
            if rule.when == "*" or (turn and rule.when in turn):
                self._rules_fired.add(index)
                return rule
        return None

    def _call_function(self, response: ResponseRecord) -> dict[str, Any]:
        """The response's function call, after its audio: its events, and the item for response.done."""
        assert response.tool is not None
        call_id, item_id = self._new_id("call"), self._new_id("item")
        response.call_id = call_id
        self._calls.add(call_id)
        rule = response.tool

        def item(status: str, arguments: str) -> dict[str, Any]:
            body: dict[str, Any] = {
                "id": item_id,
                "type": "function_call",
                "status": status,
                "name": rule.tool,
                "call_id": call_id,
                "arguments": arguments,
            }
            return ({"object": "realtime.item"} | body) if self.protocol is Protocol.GA else body

        place = {"response_id": response.id, "output_index": 1}
        self._emit("response.output_item.added", **place, item=item("in_progress", ""))
        self._emit(
            "conversation.item.created", previous_item_id=self._last_item_id, item=item("in_progress", "")
        )
        self._last_item_id = item_id
        fields = {**place, "item_id": item_id, "call_id": call_id}
        self._emit("response.function_call_arguments.delta", **fields, delta=rule.arguments)
        done = {"name": rule.tool} if self.protocol is Protocol.GA else {}
        self._emit("response.function_call_arguments.done", **fields, **done, arguments=rule.arguments)
        final = item("completed", rule.arguments)
        self._emit("response.output_item.done", **place, item=final)
        if self.protocol is Protocol.GA:
            self._emit("conversation.item.done", item=final)
        return final

    def _on_truncate(self, event: dict[str, Any], now_ms: float) -> None:
        item_id = event.get("item_id")
        item = self.items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise _ClientError(f"Item with item_id '{item_id}' not found.", "invalid_value", "item_id")
        if item.role != "assistant" or item.kind != "audio":
            raise _ClientError(
                "Only model output audio messages can be truncated", "invalid_value", "item_id"
            )
        content_index = event.get("content_index")
        _check(content_index == 0 and _is_int(content_index), "content_index", content_index)
        end = event.get("audio_end_ms")
        if not isinstance(end, int) or not _nonneg_int(end):
            raise _invalid("audio_end_ms", end)
        available = item.audio_ms if item.truncated_ms is None else min(item.audio_ms, item.truncated_ms)
        if end > available:
            raise _ClientError(
                f"Audio content of {available}ms is already shorter than {end}ms",
                "invalid_value",
                "audio_end_ms",
            )
        item.truncated_ms = end
        item.transcript = ""  # the real service drops the transcript of a truncated item
        self.truncations.append(TruncationRecord(item.id, 0, end, item.audio_ms, now_ms))
        self._emit("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end)

    # -- responses --

    def _on_response_create(self, event: dict[str, Any], now_ms: float) -> None:
        if self._active is not None:
            message = (
                f"Conversation already has an active response in progress: {self._active.id}. "
                "Wait until the response is finished before creating a new one."
            )
            raise _ClientError(message, "conversation_already_has_active_response")
        body = _require_dict(event.get("response", {}), "response")
        self._start_response(self._response_format(body), now_ms)

    def _response_format(self, body: dict[str, Any]) -> AudioFormat | None:
        """Validate a response.create body; return its output format override, if any."""
        foreign = GA_ONLY_RESPONSE if self.protocol is Protocol.PREVIEW else BETA_ONLY_RESPONSE
        for key in body:
            if key in foreign:
                raise _unknown(f"response.{key}")
        if self.protocol is Protocol.PREVIEW:
            raw = body.get("output_audio_format")
            fmt = AudioFormat.from_preview(raw) if raw is not None else None
        else:
            raw = body.get("audio", {}).get("output", {}).get("format")
            fmt = AudioFormat.from_ga(raw) if raw is not None else None
        _check(raw is None or fmt is not None, "response.output_audio_format", raw)
        return fmt

    def _chunk_plan(self) -> list[int]:
        low, high = self.config.delta_ms
        chunks: list[int] = []
        left = self.config.reply_ms
        while left > 0:
            size = min(left, self._rng.randint(low, high))
            chunks.append(size)
            left -= size
        return chunks

    def _start_response(self, fmt: AudioFormat | None, now_ms: float) -> None:
        jitter = (
            self._rng.uniform(0, self.config.response_jitter_ms) if self.config.response_jitter_ms else 0.0
        )
        response = ResponseRecord(
            id=self._new_id("resp"),
            item_id=self._new_id("item"),
            created_ms=now_ms,
            audio_start_ms=now_ms + self.config.response_delay_ms + jitter,
            audio_format=fmt or self.output_format,
            chunks=self._chunk_plan(),
            tool=self._tool_for_turn(),
        )
        if response.tool is not None and not response.tool.speak:
            response.chunks = []
        self.responses.append(response)
        self._active = response
        item = ItemRecord(response.item_id, "assistant", "audio", response.id, response.audio_format)
        self._emit("response.created", response=self._response_json(response, []))
        if self.config.send_rate_limits:
            self._emit("rate_limits.updated", rate_limits=self._rate_limits())
        self._emit(
            "response.output_item.added", response_id=response.id, output_index=0, item=self._item_json(item)
        )
        self._add_item(item, self._last_item_id)
        self._emit(
            "response.content_part.added",
            **self._part_fields(response),
            part={"type": "audio", "transcript": ""},  # "audio" in GA too (the SDK's GA Part type)
        )

    def _rate_limits(self) -> list[dict[str, Any]]:
        used = len(self.responses)
        return [
            {"name": "requests", "limit": 1000, "remaining": max(0, 1000 - used), "reset_seconds": 60.0},
            {"name": "tokens", "limit": 50000, "remaining": 49000, "reset_seconds": 1.2},
        ]

    def _part_fields(self, response: ResponseRecord) -> dict[str, Any]:
        return {
            "response_id": response.id,
            "item_id": response.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    def _response_due(self, response: ResponseRecord) -> float:
        """When the next chunk is due (or, once all are out, when the response completes)."""
        return response.audio_start_ms + response.sent_ms / self.config.realtime_factor

    def _stream(self, response: ResponseRecord, now_ms: float) -> None:
        while response.next_chunk < len(response.chunks) and now_ms >= self._response_due(response):
            self._send_chunk(response, now_ms)
        if response.next_chunk == len(response.chunks) and now_ms >= self._response_due(response):
            self._finish(response, "completed", None, now_ms)

    def _send_chunk(self, response: ResponseRecord, now_ms: float) -> None:
        fmt = response.audio_format
        audio = reply_audio(self.config.reply_ms, fmt)
        start = response.sent_ms * fmt.bytes_per_ms
        size = response.chunks[response.next_chunk]
        data = audio[start : start + size * fmt.bytes_per_ms]
        item = self.items[response.item_id]
        item.deltas.append((now_ms, response.sent_ms, size))
        response.next_chunk += 1
        response.sent_ms += size
        if self.config.record_audio:
            item.audio += data
        item.audio_ms = response.sent_ms
        self._emit(
            self._name("response.audio.delta", "response.output_audio.delta"),
            **self._part_fields(response),
            delta=base64.b64encode(data).decode("ascii"),
        )
        words = self.config.transcript.split()
        due_words = math.ceil(len(words) * response.sent_ms / self.config.reply_ms)
        if due_words > response.words_sent:
            new = " ".join(words[response.words_sent : due_words])
            delta = new if response.words_sent == 0 else f" {new}"
            response.words_sent = due_words
            item.transcript += delta
            self._emit(
                self._name("response.audio_transcript.delta", "response.output_audio_transcript.delta"),
                **self._part_fields(response),
                delta=delta,
            )

    def _on_response_cancel(self, event: dict[str, Any], now_ms: float) -> None:
        wanted = event.get("response_id")
        if self._active is None or (wanted is not None and wanted != self._active.id):
            raise _ClientError("Cancellation failed: no active response found", "response_cancel_not_active")
        self._finish(self._active, "cancelled", "client_cancelled", now_ms)

    def _finish(self, response: ResponseRecord, status: str, reason: str | None, now_ms: float) -> None:
        """End a response: the closing events of both protocols, then faults counted on responses."""
        self._active = None
        response.status, response.reason = status, reason
        item = self.items[response.item_id]
        item.status = "completed" if status == "completed" else "incomplete"
        if reason is not None:
            self.cancels.append(CancelRecord(response.id, item.id, reason, response.sent_ms, now_ms))
        fields = self._part_fields(response)
        part = {"type": "audio", "transcript": item.transcript}
        self._emit(self._name("response.audio.done", "response.output_audio.done"), **fields)
        self._emit(
            self._name("response.audio_transcript.done", "response.output_audio_transcript.done"),
            **fields,
            transcript=item.transcript,
        )
        self._emit("response.content_part.done", **fields, part=part)
        self._emit(
            "response.output_item.done", response_id=response.id, output_index=0, item=self._item_json(item)
        )
        if self.protocol is Protocol.GA:
            self._emit("conversation.item.done", item=self._item_json(item))
        output = [self._item_json(item)]
        if response.tool is not None and status == "completed":
            output.append(self._call_function(response))
            response.call_ms = now_ms
        self._emit("response.done", response=self._response_json(response, output))
        self._after_response()

    def _after_response(self) -> None:
        self._responses_done += 1
        done = self._responses_done
        if done == self.config.error_after_responses:
            message = "The server had an error while processing your request (emulated fault)."
            self._error(message, "server_error", None, None, "server_error")
        if done == self.config.drop_after_responses:
            self._close = CloseSocket(self.config.drop_close_code, "dropped by fault injection")

    def _response_json(self, response: ResponseRecord, output: list[dict[str, Any]]) -> dict[str, Any]:
        details = None if response.reason is None else {"type": response.status, "reason": response.reason}
        usage = None
        if response.status != "in_progress":
            audio_tokens, text_tokens = response.sent_ms // 50, response.words_sent
            usage = {
                "total_tokens": 10 + audio_tokens + text_tokens,
                "input_tokens": 10,
                "output_tokens": audio_tokens + text_tokens,
                "input_token_details": {"cached_tokens": 0, "text_tokens": 10, "audio_tokens": 0},
                "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
            }
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": response.id,
            "status": response.status,
            "status_details": details,
            "output": output,
            "usage": usage,
            "metadata": None,
        }
        if self.protocol is Protocol.GA:
            body["output_modalities"] = ["audio"]
            body["audio"] = {"output": {"format": response.audio_format.ga_format()}}
        else:
            body["modalities"] = ["audio", "text"]
            body["output_audio_format"] = response.audio_format.value
        return body
