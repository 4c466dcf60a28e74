"""What the app needs of a telephony provider, sans-I/O: one `Provider` per module under telephony/.

For a provider `P` the app serves `POST /P/answer` (the provider's call-control webhook, answered with
its own document: TwiML, cXML, TeXML, Plivo XML, NCCO JSON) and `GET /P/media` (the media WebSocket),
and does everything else generically: draining, capacity, metrics, the stream token. The provider
module says how:

- `answer(request, media_url, issue_token)`: the answer document that starts a bidirectional stream
  to `media_url`, or a `Refusal`. When the provider's secret is set, `issue_token(call_id)` gives the
  short-lived per-call stream token, which the answer carries where the provider's custom parameters
  allow and the dialect hands back in `CallStarted.custom_parameters` (`STREAM_TOKEN_PARAMETER`);
- `check_answer(request, secret)` / `check_media(request, secret)`: the provider's own signature (or
  other) check, run when its secret is set; they return the problem, or None;
- `dialect()`: a fresh sans-I/O dialect for one stream (`Dialect`).

Requests reach the provider as `HttpRequest` values (method, the public URL the provider used, headers,
body, the peer address), so every check is a pure function that a test feeds directly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from gateway.telephony.events import CallStarted, PlayoutRule, TelephonyCommand, TelephonyEvent

__all__ = ["Answer", "Dialect", "HttpRequest", "Provider", "Refusal", "TokenIssuer"]

TokenIssuer = Callable[[str], str]  # call id -> the stream token for that call


class Dialect(Protocol):
    """One media stream's wire protocol: frames in, typed events out; typed commands in, frames out."""

    @property
    def can_send(self) -> bool:
        """True while `send` may be called (after the stream started, before it stopped)."""
        ...

    @property
    def call(self) -> CallStarted | None:
        """The stream's start (ids, parameters, audio format) once it has arrived."""
        ...

    @property
    def playout(self) -> PlayoutRule:
        """How the provider wants bot audio cut into messages."""
        ...

    def receive_text(self, text: str) -> TelephonyEvent:
        """Parse one text frame; peer garbage is a `ProtocolViolation`, never an exception."""
        ...

    def receive_bytes(self, data: bytes) -> TelephonyEvent:
        """Parse one binary frame (a violation for providers that send none)."""
        ...

    def send(self, command: TelephonyCommand) -> tuple[str | bytes, ...]:
        """The frames that carry `command`, in order (text as str, binary as bytes)."""
        ...


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request as a provider's checks see it. `url` is the public URL the provider called (what
    it signs); header names are lower-case; `form` holds a urlencoded body's fields; `received_s` is the
    wall-clock time it arrived (what timestamped signatures are checked against)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    form: Mapping[str, str] = field(default_factory=dict)
    peer: str | None = None
    received_s: float = 0.0

    def header(self, name: str) -> str | None:
        """A header's value by name, any case."""
        return self.headers.get(name.lower())


@dataclass(frozen=True, slots=True)
class Answer:
    """The call-control answer: send `body` as `content_type`. `call_id` names the call in the logs and
    binds the stream token."""

    content_type: str
    body: str
    call_id: str


@dataclass(frozen=True, slots=True)
class Refusal:
    """The webhook cannot be answered: reply with `status` and `reason` (logged, counted)."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Provider:
    """A telephony provider's routes and checks (see the module docstring)."""

    name: str
    dialect: Callable[[], Dialect]
    secret_setting: str | None
    answer: Callable[[HttpRequest, str, TokenIssuer | None], Answer | Refusal] | None = None
    check_answer: Callable[[HttpRequest, str], str | None] | None = None
    check_media: Callable[[HttpRequest, str], str | None] | None = None
    answer_methods: tuple[str, ...] = ("POST",)
    # A dialect that needs the upgrade request (ACS names the call in its headers); else `dialect()`.
    dialect_for: Callable[[HttpRequest], Dialect] | None = None
    # With the secret set, must every stream carry the answer's per-call token? False where a stream can
    # also come from a static URL that cannot carry one (Exotel's dashboard), authenticated otherwise.
    stream_token_required: bool = True
    # The setting holds a public key (Telnyx's ed25519 key), not a shared secret: it verifies webhooks
    # but must never key the stream tokens (anyone who read it could mint them); STREAM_TOKEN_SECRET does.
    secret_is_public: bool = False
