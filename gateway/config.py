"""Settings, read once at start-up from environment variables.

Every setting is declared once in `SETTINGS` (name, default, help, parser), which serves three purposes:
parsing, `python -m gateway serve --help`, and the README's table. A bad value fails start-up with a
`ConfigError` that names the variable; nothing is silently defaulted over a typo'd value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.realtime.endpoint import RealtimeEndpoint, is_loopback_host, resolve_endpoint
from gateway.telephony.control import DEFAULT_API_BASES

__all__ = [
    "BACKENDS",
    "PRODUCTION_SECRETS",
    "SECRET_SETTINGS",
    "SETTINGS",
    "Backend",
    "Setting",
    "Settings",
    "describe_settings",
    "load_settings",
]


class Backend(Enum):
    """Where calls are bridged: a configured realtime service, or the embedded emulator."""

    EMULATOR = "emulator"
    URL = "url"
    AZURE = "azure"
    OPENAI = "openai"


BACKENDS = ("auto", *(b.value for b in Backend))
# Each backend's settings; setting any of them counts as configuring that backend.
BACKEND_SETTINGS: dict[Backend, tuple[str, ...]] = {
    Backend.URL: ("REALTIME_URL", "REALTIME_API_KEY"),
    Backend.AZURE: (
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_OPENAI_API_KEY",
        "AZURE_OPENAI_API_VERSION",
    ),
    Backend.OPENAI: ("OPENAI_API_KEY",),
}
# Secrets that only a gateway facing real callers has; with one set, the emulator is never a fallback.
PRODUCTION_SECRETS = (
    "TWILIO_AUTH_TOKEN",
    "SIGNALWIRE_SIGNING_KEY",
    "TELNYX_PUBLIC_KEY",
    "PLIVO_AUTH_TOKEN",
    "VONAGE_SIGNATURE_SECRET",
    "EXOTEL_BASIC_AUTH",
    "ACS_CONNECTION_STRING",
)


class SecretHolder(Protocol):
    """Anything that names the setting holding its secret (a telephony provider)."""

    @property
    def secret_setting(self) -> str | None: ...


def _str(raw: str) -> str:
    return raw


def _opt_str(raw: str) -> str | None:
    return raw or None


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true/false")


def _int_in(lo: int, hi: int, multiple_of: int = 1) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("must be an integer") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        if value % multiple_of:
            raise ValueError(f"must be a multiple of {multiple_of}")
        return value

    return parse


def _float_in(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("must be a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("must be a finite number")
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


class _Choice:
    """Parser of an enumerated setting; `options` are listed by `serve --help`."""

    def __init__(self, *options: str, optional: bool = False) -> None:
        self.options = options
        self.optional = optional

    def __call__(self, raw: str) -> str | None:
        value = raw.strip().lower()
        if not value and self.optional:
            return None
        if value not in self.options:
            raise ValueError(f"must be one of {', '.join(self.options)}")
        return value


def _opt_float_in(lo: float, hi: float) -> Callable[[str], float | None]:
    within = _float_in(lo, hi)

    def parse(raw: str) -> float | None:
        return within(raw) if raw else None

    return parse


def _dtmf_key(raw: str) -> str:
    """One DTMF key (0-9, *, #, A-D), or `none`."""
    value = raw.strip().upper()
    if value == "NONE":
        return ""
    if len(value) != 1 or value not in "0123456789*#ABCD":
        raise ValueError("expected one DTMF key (0-9, *, #, A-D) or none")
    return value


def _tokens(raw: str) -> int | None:
    """`inf` (no limit: None) or a token count, 1..4096."""
    if raw.strip().lower() == "inf":
        return None
    return _int_in(1, 4096)(raw)


def _choice(*options: str) -> _Choice:
    return _Choice(*options)


def _opt_choice(*options: str) -> _Choice:
    return _Choice(*options, optional=True)


def _provider_list(raw: str) -> tuple[str, ...]:
    from gateway.telephony.providers import PROVIDERS  # the registry, not a layer below: no cycle

    names = [name.strip().lower() for name in raw.split(",") if name.strip()]
    if names == ["all"] or not names:
        return tuple(PROVIDERS)
    unknown = [name for name in names if name not in PROVIDERS]
    if unknown:
        raise ValueError(f"unknown provider(s) {', '.join(unknown)}; known: {', '.join(PROVIDERS)}, or all")
    return tuple(dict.fromkeys(names))


def _sip_listen(raw: str) -> tuple[tuple[str, str, int], ...]:
    """`udp:0.0.0.0:5060,tcp:0.0.0.0:5060,tls:0.0.0.0:5061` as (transport, host, port) triples; empty:
    no SIP."""
    out: list[tuple[str, str, int]] = []
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        transport, _, rest = item.partition(":")
        host, _, port = rest.rpartition(":")
        valid_port = port.isdigit() and 0 <= int(port) <= 65535
        if transport not in ("udp", "tcp", "tls") or not host or not valid_port:
            raise ValueError(f"{item!r}: expected udp:HOST:PORT, tcp:HOST:PORT or tls:HOST:PORT")
        out.append((transport, host.strip("[]"), int(port)))
    return tuple(out)


def _sip_codecs(raw: str) -> tuple[str, ...]:
    """`G722,PCMU,PCMA`: the codecs a SIP call may use, most preferred first."""
    from gateway.sip.sdp import SUPPORTED_CODECS  # sans-I/O, no cycle

    names = [name.strip().upper() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUPPORTED_CODECS]
    if unknown or not names:
        raise ValueError(f"expected some of {', '.join(sorted(SUPPORTED_CODECS))}, comma-separated")
    return tuple(dict.fromkeys(names))


def _port_range(raw: str) -> tuple[int, int]:
    """`10000-20000` (inclusive; at least two ports, RTP on even ports)."""
    low, sep, high = raw.partition("-")
    if not sep or not low.strip().isdigit() or not high.strip().isdigit():
        raise ValueError("expected LOW-HIGH, e.g. 10000-20000")
    lo, hi = int(low), int(high)
    if not 1024 <= lo < hi <= 65535:
        raise ValueError("ports must satisfy 1024 <= LOW < HIGH <= 65535")
    return lo, hi


def _sip_registrar(raw: str) -> str | None:
    """`sip:HOST[:PORT]` or `HOST[:PORT]` (`;transport=udp` allowed) as a sip: URI; empty: none."""
    if not raw:
        return None
    from gateway.sip.message import SipParseError, SipUri  # pure parsing, no I/O

    try:
        uri = SipUri.parse(raw if raw.lower().startswith(("sip:", "sips:")) else f"sip:{raw}")
    except SipParseError as exc:
        raise ValueError(f"expected sip:HOST[:PORT] or HOST[:PORT] ({exc.reason})") from None
    if uri.scheme != "sip":
        raise ValueError("only sip: URIs (registration over UDP); sips:/TLS is not supported")
    if uri.user is not None or uri.headers:
        raise ValueError("no user part: name the registrar's domain; the extension is SIP_USERNAME")
    if uri.transport not in (None, "udp"):
        raise ValueError(f"transport={uri.transport}: registration goes over UDP only")
    return str(uri)


def _names(raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))


def _cidrs(raw: str) -> tuple[str, ...]:
    """A comma-separated list of addresses or CIDR blocks (checked, normalised)."""
    import ipaddress

    out = []
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an address or a CIDR block") from None
    return tuple(out)


def _http_url(raw: str) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError("must be an absolute http(s):// URL, e.g. https://gw.example.com")
    if parts.query or parts.fragment:
        raise ValueError("must not carry a query string or fragment")
    return raw.rstrip("/")


def _ws_url(raw: str) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"ws", "wss"} or not parts.netloc:
        raise ValueError("must be a ws:// or wss:// URL")
    return raw


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: its attribute name on `Settings`, default, parser and help text."""

    env: str
    attr: str
    default: str
    parse: Callable[[str], Any]
    help: str
    secret: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("GATEWAY_HOST", "host", "0.0.0.0", _str, "address to listen on"),
    Setting("GATEWAY_PORT", "port", "8080", _int_in(0, 65535), "port to listen on (0 = any free port)"),
    Setting(
        "GATEWAY_PUBLIC_URL",
        "public_url",
        "",
        _http_url,
        "public https:// base URL Twilio reaches (TwiML stream URL and signature checks); "
        "default: taken from each request's Host",
    ),
    Setting(
        "TWILIO_AUTH_TOKEN",
        "twilio_auth_token",
        "",
        _opt_str,
        "when set, /twiml and /media require a valid X-Twilio-Signature",
        secret=True,
    ),
    Setting(
        "GATEWAY_PROVIDERS",
        "providers",
        "all",
        _provider_list,
        "comma-separated providers whose /P/answer and /P/media routes are served (twilio, signalwire, "
        "telnyx, plivo, vonage, exotel, acs), or all",
    ),
    Setting(
        "STREAM_TOKEN_SECRET",
        "stream_token_secret",
        "",
        _opt_str,
        "keys the per-call stream tokens (the same on every replica); default: each provider's own "
        "secret; needed for Telnyx, whose setting is a public key",
        secret=True,
    ),
    Setting(
        "SIGNALWIRE_SIGNING_KEY",
        "signalwire_signing_key",
        "",
        _opt_str,
        "when set, /signalwire/answer and /signalwire/media require a valid X-SignalWire-Signature",
        secret=True,
    ),
    Setting(
        "TELNYX_PUBLIC_KEY",
        "telnyx_public_key",
        "",
        _opt_str,
        "the base64 ed25519 public key from the Telnyx portal; when set, webhooks must be signed",
    ),
    Setting(
        "PLIVO_AUTH_TOKEN",
        "plivo_auth_token",
        "",
        _opt_str,
        "when set, Plivo webhooks and streams require a valid X-Plivo-Signature-V3",
        secret=True,
    ),
    Setting(
        "VONAGE_SIGNATURE_SECRET",
        "vonage_signature_secret",
        "",
        _opt_str,
        "when set, Vonage answer webhooks must carry a valid signed JWT",
        secret=True,
    ),
    Setting(
        "EXOTEL_BASIC_AUTH",
        "exotel_basic_auth",
        "",
        _opt_str,
        "user:password that /exotel/media requires as HTTP basic auth (Exotel sends the URL's userinfo)",
        secret=True,
    ),
    Setting(
        "EXOTEL_ALLOW_FROM",
        "exotel_allow_from",
        "",
        _opt_str,
        "comma-separated CIDRs allowed to open /exotel/media (Exotel's published addresses)",
    ),
    Setting(
        "ACS_CONNECTION_STRING",
        "acs_connection_string",
        "",
        _opt_str,
        "endpoint=https://RESOURCE.communication.azure.com/;accesskey=KEY: /acs/events answers calls with it",
        secret=True,
    ),
    Setting(
        "ACS_ENDPOINT",
        "acs_endpoint",
        "",
        _http_url,
        "Call Automation endpoint; alone: Microsoft Entra ID (DefaultAzureCredential); with "
        "ACS_CONNECTION_STRING: replaces the connection string's endpoint",
    ),
    Setting(
        "ACS_AUDIENCE",
        "acs_audience",
        "",
        _opt_str,
        "the ACS resource id: when set, /acs/callbacks and /acs/media require ACS's JWT for it",
    ),
    Setting(
        "ACS_OPENID_URL",
        "acs_openid_url",
        "https://acscallautomation.communication.azure.com/calling/.well-known/acsopenidconfiguration",
        _http_url,
        "OpenID configuration whose issuer and keys sign ACS's callback and media JWTs",
    ),
    Setting(
        "REALTIME_BACKEND",
        "realtime_backend",
        "auto",
        _choice(*BACKENDS),
        "auto: the one backend configured (REALTIME_URL, AZURE_OPENAI_*, OPENAI_API_KEY); the embedded "
        "emulator only when none is and no production setting (provider secret, public URL) is; "
        "emulator: always the emulator (a synthetic voice, for trials and tests); url|azure|openai: that "
        "backend, when several are configured",
    ),
    Setting("REALTIME_URL", "realtime_url", "", _ws_url, "full ws(s):// realtime URL"),
    Setting(
        "REALTIME_PROTOCOL",
        "realtime_protocol",
        "",
        _opt_choice("ga", "preview"),
        "ga|preview; default inferred from the URL",
    ),
    Setting("REALTIME_API_KEY", "realtime_api_key", "", _opt_str, "key for REALTIME_URL", secret=True),
    Setting(
        "REALTIME_AUTH",
        "realtime_auth",
        "auto",
        _choice("auto", "key", "entra", "none"),
        "auto: the key if set, else Entra ID for Azure hosts; entra: Entra ID even on a custom URL",
    ),
    Setting("AZURE_OPENAI_ENDPOINT", "azure_endpoint", "", _opt_str, "https://RESOURCE.openai.azure.com"),
    Setting("AZURE_OPENAI_DEPLOYMENT", "azure_deployment", "", _opt_str, "realtime deployment name"),
    Setting(
        "AZURE_OPENAI_API_KEY",
        "azure_api_key",
        "",
        _opt_str,
        "Azure key; without it Microsoft Entra ID (DefaultAzureCredential) is used",
        secret=True,
    ),
    Setting(
        "AZURE_OPENAI_API_VERSION",
        "azure_api_version",
        "",
        _opt_str,
        "set only for the preview protocol, e.g. 2025-04-01-preview",
    ),
    Setting("OPENAI_API_KEY", "openai_api_key", "", _opt_str, "OpenAI key (api.openai.com)", secret=True),
    Setting("OPENAI_MODEL", "openai_model", "gpt-realtime", _str, "OpenAI realtime model"),
    Setting(
        "BOT_INSTRUCTIONS",
        "bot_instructions",
        "You are a friendly, concise phone assistant. Keep answers short.",
        _str,
        "system instructions for the bot",
    ),
    Setting("BOT_VOICE", "bot_voice", "alloy", _str, "realtime voice"),
    Setting(
        "BOT_GREETING", "bot_greeting", "", _opt_str, "if set, the bot speaks first with these instructions"
    ),
    Setting(
        "TRANSCRIPTION_MODEL",
        "transcription_model",
        "",
        _opt_str,
        "caller transcription model, e.g. whisper-1",
    ),
    Setting(
        "VAD_TYPE",
        "vad_type",
        "server_vad",
        _choice("server_vad", "semantic_vad"),
        "who ends the caller's turn: server_vad (a silence) or semantic_vad (the model judges the words)",
    ),
    Setting(
        "VAD_EAGERNESS",
        "vad_eagerness",
        "auto",
        _choice("low", "medium", "high", "auto"),
        "semantic_vad: how soon the bot takes its turn (low waits longest)",
    ),
    Setting(
        "NOISE_REDUCTION",
        "noise_reduction",
        "off",
        _choice("near_field", "far_field", "off"),
        "the service's input noise reduction: near_field (handsets), far_field (speakerphones), off",
    ),
    Setting(
        "MAX_OUTPUT_TOKENS",
        "max_output_tokens",
        "inf",
        _tokens,
        "the longest reply the model may give, in tokens (1..4096), or inf",
    ),
    Setting(
        "TEMPERATURE",
        "temperature",
        "",
        _opt_float_in(0.6, 1.2),
        "sampling temperature, 0.6..1.2 (the preview protocol only: GA has none)",
    ),
    Setting(
        "DTMF_MODE",
        "dtmf_mode",
        "forward",
        _choice("forward", "off"),
        "forward: the caller's keys reach the model as a user message (and interrupt the bot); off: counted",
    ),
    Setting(
        "DTMF_TERMINATOR",
        "dtmf_terminator",
        "#",
        _dtmf_key,
        "the key that ends an entry of keys (none: only a count or a pause ends it)",
    ),
    Setting("DTMF_MAX_DIGITS", "dtmf_max_digits", "0", _int_in(0, 64), "keys that end an entry (0: none)"),
    Setting("DTMF_PAUSE_MS", "dtmf_pause_ms", "2000", _int_in(100, 60000), "a pause that ends an entry"),
    Setting(
        "BOT_TOOLS",
        "bot_tools",
        "",
        _names,
        "tools the bot may call (comma list): end_call, transfer_call, and the TOOLS_FILE's by name",
    ),
    Setting(
        "TRANSFER_TO",
        "transfer_to",
        "",
        _names,
        "destinations transfer_call may use (comma list of numbers or SIP URIs; the model picks one)",
    ),
    Setting("TOOLS_FILE", "tools_file", "", _opt_str, "JSON list of the operator's tool definitions"),
    Setting(
        "TOOLS_WEBHOOK_URL",
        "tools_webhook_url",
        "",
        _http_url,
        "where the gateway POSTs each call of a TOOLS_FILE function; its JSON answer is the output",
    ),
    Setting("TOOL_TIMEOUT_S", "tool_timeout_s", "8", _float_in(0.1, 120), "longest wait for the webhook"),
    Setting(
        "TOOL_FILLER_MS",
        "tool_filler_ms",
        "0",
        _int_in(0, 60000),
        "a webhook tool slower than this has the bot say it is looking (0: off)",
    ),
    Setting("VAD_THRESHOLD", "vad_threshold", "0.5", _float_in(0.0, 1.0), "server VAD threshold"),
    Setting("VAD_PREFIX_PADDING_MS", "vad_prefix_padding_ms", "300", _int_in(0, 5000), "server VAD padding"),
    Setting(
        "VAD_SILENCE_DURATION_MS", "vad_silence_duration_ms", "500", _int_in(0, 10000), "server VAD silence"
    ),
    Setting(
        "VAD_INTERRUPT_RESPONSE",
        "vad_interrupt_response",
        "true",
        _bool,
        "let the service cancel its own response when the caller talks",
    ),
    Setting(
        "AUDIO_MODE",
        "audio_mode",
        "pcm16",
        _choice("pcm16", "g711"),
        "pcm16: transcode to 24 kHz PCM16; g711: mu-law both ways, no transcoding",
    ),
    Setting(
        "APPEND_MS",
        "append_ms",
        "20",
        _int_in(20, 100, multiple_of=20),
        "caller audio per upstream append (20..100 ms, multiple of 20)",
    ),
    Setting(
        "PLAYOUT_CHUNK_MS",
        "playout_chunk_ms",
        "40",
        _int_in(20, 200, multiple_of=20),
        "bot audio per Twilio media message (each followed by a mark)",
    ),
    Setting("BARGE_IN", "barge_in", "server", _choice("server", "local", "both"), "who detects barge-in"),
    Setting(
        "CANCEL_POLICY",
        "cancel_policy",
        "always",
        _choice("always", "auto", "never"),
        "send response.cancel on barge-in: always | auto (only if VAD does not interrupt) | never",
    ),
    Setting(
        "UPSTREAM_CONNECT_TIMEOUT_S",
        "upstream_connect_timeout_s",
        "10",
        _float_in(0.1, 120),
        "realtime handshake timeout",
    ),
    Setting(
        "START_TIMEOUT_S", "start_timeout_s", "10", _float_in(0.1, 120), "time allowed for Twilio's start"
    ),
    Setting(
        "CALLER_IDLE_TIMEOUT_S",
        "caller_idle_timeout_s",
        "10",
        _float_in(0.1, 600),
        "end a call when the provider sends nothing for this long (Twilio streams 50 frames a second)",
    ),
    Setting("MAX_CALL_S", "max_call_s", "7200", _float_in(1, 86400), "end any call after this long"),
    Setting(
        "SEND_TIMEOUT_S",
        "send_timeout_s",
        "5",
        _float_in(0.1, 120),
        "a peer that does not take a message for this long is dropped (bounded buffers)",
    ),
    Setting(
        "UPSTREAM_MAX_RECONNECTS",
        "upstream_max_reconnects",
        "3",
        _int_in(0, 100),
        "realtime sessions that may drop per call and be replaced; the next drop ends the call "
        "(planned renewals before expires_at do not count)",
    ),
    Setting(
        "UPSTREAM_RENEW_MARGIN_S",
        "upstream_renew_margin_s",
        "60",
        _float_in(0, 3600),
        "replace a session this long before its expires_at, at a quiet moment",
    ),
    Setting(
        "UPSTREAM_PROBE_INTERVAL_S",
        "upstream_probe_interval_s",
        "10",
        _float_in(0.5, 3600),
        "how often the realtime endpoint is probed (handshake, first event, close) when no call dialed it",
    ),
    Setting(
        "UPSTREAM_UNHEALTHY_AFTER_S",
        "upstream_unhealthy_after_s",
        "30",
        _float_in(0, 3600),
        "/readyz turns 503 once every realtime handshake has failed for this long",
    ),
    Setting(
        "SIP_LISTEN",
        "sip_listen",
        "",
        _sip_listen,
        "native SIP: where to listen, e.g. udp:0.0.0.0:5060,tcp:0.0.0.0:5060,tls:0.0.0.0:5061 (empty: none)",
    ),
    Setting(
        "SIP_PUBLIC_IP",
        "sip_public_ip",
        "",
        _opt_str,
        "the address peers reach us at, for Contact and SDP c= (behind NAT); default: the SIP_LISTEN "
        "address, or this host's outbound address when that is 0.0.0.0",
    ),
    Setting(
        "SIP_TLS_CERT",
        "sip_tls_cert",
        "",
        _opt_str,
        "PEM certificate chain for a tls: listener in SIP_LISTEN (with SIP_TLS_KEY)",
    ),
    Setting("SIP_TLS_KEY", "sip_tls_key", "", _opt_str, "PEM private key of SIP_TLS_CERT"),
    Setting(
        "RTP_PORTS",
        "rtp_ports",
        "10000-20000",
        _port_range,
        "UDP ports for RTP and RTCP, LOW-HIGH (a pair a call: RTP even, RTCP the next)",
    ),
    Setting(
        "SIP_CODECS",
        "sip_codecs",
        "G722,PCMU,PCMA",
        _sip_codecs,
        "codecs a SIP call may use, most preferred first: the first the caller offers is taken",
    ),
    Setting(
        "SIP_ALLOW_FROM",
        "sip_allow_from",
        "",
        _cidrs,
        "addresses or CIDR blocks whose INVITEs are accepted (others get 403); empty: any",
    ),
    Setting(
        "SIP_RATE_LIMIT",
        "sip_rate_limit",
        "100",
        _int_in(0, 1_000_000),
        "SIP messages a second per source address; more are dropped silently (SIP_ALLOW_FROM sources get "
        "10 times as much); 0: no limit",
    ),
    Setting(
        "SIP_RATE_BURST",
        "sip_rate_burst",
        "200",
        _int_in(1, 10_000_000),
        "SIP messages a source address may send at once before SIP_RATE_LIMIT applies (at least "
        "SIP_RATE_LIMIT)",
    ),
    Setting("SIP_REALM", "sip_realm", "voice-gateway", _str, "digest realm for SIP_USERNAME/SIP_PASSWORD"),
    Setting(
        "SIP_USERNAME",
        "sip_username",
        "",
        _opt_str,
        "digest user inbound INVITEs must authenticate as; with SIP_REGISTRAR, also the extension registered",
    ),
    Setting(
        "SIP_PASSWORD",
        "sip_password",
        "",
        _opt_str,
        "digest password: with SIP_USERNAME, inbound INVITEs are challenged (401)",
        secret=True,
    ),
    Setting(
        "SIP_REGISTRAR",
        "sip_registrar",
        "",
        _sip_registrar,
        "register with this registrar as SIP_USERNAME/SIP_PASSWORD (an extension on a PBX), e.g. "
        "sip:pbx.example.com:5060 or pbx.example.com; empty: no registration",
    ),
    Setting(
        "SIP_REGISTER_EXPIRES",
        "sip_register_expires",
        "300",
        _int_in(10, 86400),
        "seconds of registration asked for; refreshed before it lapses",
    ),
    Setting(
        "SIP_JITTER_MS",
        "sip_jitter_ms",
        "40",
        _int_in(0, 200),
        "the far end's jitter buffer as the gateway estimates it: audio sent counts as heard this much later",
    ),
    Setting(
        "RTP_TIMEOUT_S",
        "rtp_timeout_s",
        "30",
        _float_in(1, 3600),
        "a SIP call whose caller sends no RTP for this long is ended (BYE); calls on hold are exempt",
    ),
    Setting(
        "CALL_CONTROL_TIMEOUT_S",
        "call_control_timeout_s",
        "5",
        _float_in(0.1, 60),
        "how long one hang-up or transfer request to a provider's REST API may take",
    ),
    Setting(
        "TWILIO_ACCOUNT_SID",
        "twilio_account_sid",
        "",
        _opt_str,
        "Twilio REST calls (hang-up, transfer): the account; default: the stream's accountSid",
    ),
    Setting(
        "TWILIO_API_KEY",
        "twilio_api_key",
        "",
        _opt_str,
        "Twilio REST calls: an API key SID (SK...) to use with TWILIO_API_SECRET instead of the auth token",
    ),
    Setting(
        "TWILIO_API_SECRET",
        "twilio_api_secret",
        "",
        _opt_str,
        "the secret of TWILIO_API_KEY",
        secret=True,
    ),
    Setting(
        "TWILIO_API_BASE",
        "twilio_api_base",
        DEFAULT_API_BASES["twilio"],
        _http_url,
        "Twilio's REST API base URL",
    ),
    Setting(
        "SIGNALWIRE_SPACE_URL",
        "signalwire_space_url",
        "",
        _opt_str,
        "SignalWire REST calls (hang-up, transfer): your space, e.g. example.signalwire.com",
    ),
    Setting(
        "SIGNALWIRE_PROJECT_ID",
        "signalwire_project_id",
        "",
        _opt_str,
        "SignalWire REST calls: the project ID",
    ),
    Setting(
        "SIGNALWIRE_API_TOKEN",
        "signalwire_api_token",
        "",
        _opt_str,
        "SignalWire REST calls: an API token of the project",
        secret=True,
    ),
    Setting(
        "TELNYX_API_KEY",
        "telnyx_api_key",
        "",
        _opt_str,
        "Telnyx REST calls (hang-up, transfer): the API key (v2)",
        secret=True,
    ),
    Setting(
        "TELNYX_ACCOUNT_SID",
        "telnyx_account_sid",
        "",
        _opt_str,
        "Telnyx TeXML REST calls: the AccountSid; default: the stream's start.user_id",
    ),
    Setting(
        "TELNYX_API_BASE",
        "telnyx_api_base",
        DEFAULT_API_BASES["telnyx"],
        _http_url,
        "Telnyx's REST API base URL",
    ),
    Setting(
        "PLIVO_AUTH_ID",
        "plivo_auth_id",
        "",
        _opt_str,
        "Plivo REST calls (hang-up, transfer, with PLIVO_AUTH_TOKEN): the Auth ID",
    ),
    Setting(
        "PLIVO_API_BASE",
        "plivo_api_base",
        DEFAULT_API_BASES["plivo"],
        _http_url,
        "Plivo's REST API base URL",
    ),
    Setting(
        "VONAGE_APPLICATION_ID",
        "vonage_application_id",
        "",
        _opt_str,
        "Vonage REST calls (hang-up, transfer): the application id",
    ),
    Setting(
        "VONAGE_PRIVATE_KEY",
        "vonage_private_key",
        "",
        _opt_str,
        "the application's private key: a PEM file's path, or the PEM itself",
        secret=True,
    ),
    Setting(
        "VONAGE_API_BASE",
        "vonage_api_base",
        DEFAULT_API_BASES["vonage"],
        _http_url,
        "Vonage's Voice API base URL",
    ),
    Setting(
        "GATEWAY_MAX_CALLS",
        "max_calls",
        "500",
        _int_in(1, 100000),
        "concurrent calls per process; more are refused (close code 1013)",
    ),
    Setting(
        "GATEWAY_DRAIN_TIMEOUT_S",
        "drain_timeout_s",
        "3600",
        _float_in(0, 86400),
        "on SIGTERM: how long active calls may go on before they are closed",
    ),
    Setting(
        "TRANSCRIPT_DIR",
        "transcript_dir",
        "",
        _opt_str,
        "existing directory for per-call transcripts (a JSON-lines file per call); empty: none",
    ),
    Setting(
        "RECORDING_DIR",
        "recording_dir",
        "",
        _opt_str,
        "existing directory for per-call stereo WAV recordings (caller left, bot right); empty: none",
    ),
    Setting(
        "CALL_EVENTS_WEBHOOK_URL",
        "call_events_webhook_url",
        "",
        _http_url,
        "where the gateway POSTs each ended call: its summary, transcript and recording's path",
    ),
    Setting(
        "WEBHOOK_SECRET",
        "webhook_secret",
        "",
        _opt_str,
        "signs every webhook POST (tools and call events) with X-Gateway-Signature (HMAC-SHA256)",
        secret=True,
    ),
    Setting(
        "WEBHOOK_TIMEOUT_S",
        "webhook_timeout_s",
        "5",
        _float_in(0.1, 120),
        "longest wait for the call-events webhook's answer",
    ),
    Setting("GATEWAY_WORKERS", "workers", "1", _int_in(1, 256), "worker processes sharing the port"),
    Setting(
        "BOTS_FILE",
        "bots_file",
        "",
        _opt_str,
        "TOML file of bot profiles: a bot per dialed number or custom parameter, over the BOT_*/VAD_* "
        "settings; reloaded on SIGHUP (a bad file keeps the old profiles); empty: one bot for every call",
    ),
    Setting("LOG_LEVEL", "log_level", "info", _choice("debug", "info", "warning", "error"), "log level"),
    Setting("LOG_FORMAT", "log_format", "json", _choice("json", "console"), "log line format"),
)

SECRET_SETTINGS = frozenset(s.env for s in SETTINGS if s.secret)
_ATTR_OF = {s.env: s.attr for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Settings:
    """The gateway's parsed settings. Build only with `load_settings` (defaults live in `SETTINGS`)."""

    host: str
    port: int
    public_url: str | None
    providers: tuple[str, ...]
    stream_token_secret: str | None = field(repr=False)
    twilio_auth_token: str | None = field(repr=False)
    signalwire_signing_key: str | None = field(repr=False)
    telnyx_public_key: str | None
    plivo_auth_token: str | None = field(repr=False)
    vonage_signature_secret: str | None = field(repr=False)
    exotel_basic_auth: str | None = field(repr=False)
    exotel_allow_from: str | None
    acs_connection_string: str | None = field(repr=False)
    acs_endpoint: str | None
    acs_audience: str | None
    acs_openid_url: str | None
    realtime_backend: str
    realtime_url: str | None
    realtime_protocol: str | None
    realtime_api_key: str | None = field(repr=False)
    realtime_auth: str
    azure_endpoint: str | None
    azure_deployment: str | None
    azure_api_key: str | None = field(repr=False)
    azure_api_version: str | None
    openai_api_key: str | None = field(repr=False)
    openai_model: str
    bot_instructions: str
    bot_voice: str
    bot_greeting: str | None
    transcription_model: str | None
    dtmf_mode: str
    dtmf_terminator: str
    dtmf_max_digits: int
    dtmf_pause_ms: int
    bot_tools: tuple[str, ...]
    transfer_to: tuple[str, ...]
    tools_file: str | None
    tools_webhook_url: str | None
    tool_timeout_s: float
    tool_filler_ms: int
    vad_type: str
    vad_eagerness: str
    noise_reduction: str
    max_output_tokens: int | None
    temperature: float | None
    vad_threshold: float
    vad_prefix_padding_ms: int
    vad_silence_duration_ms: int
    vad_interrupt_response: bool
    audio_mode: str
    append_ms: int
    playout_chunk_ms: int
    barge_in: str
    cancel_policy: str
    upstream_connect_timeout_s: float
    start_timeout_s: float
    caller_idle_timeout_s: float
    max_call_s: float
    send_timeout_s: float
    upstream_max_reconnects: int
    upstream_renew_margin_s: float
    upstream_probe_interval_s: float
    upstream_unhealthy_after_s: float
    sip_listen: tuple[tuple[str, str, int], ...]
    sip_public_ip: str | None
    sip_tls_cert: str | None
    sip_tls_key: str | None
    rtp_ports: tuple[int, int]
    sip_codecs: tuple[str, ...]
    sip_allow_from: tuple[str, ...]
    sip_rate_limit: int
    sip_rate_burst: int
    sip_realm: str
    sip_username: str | None
    sip_password: str | None = field(repr=False)
    sip_registrar: str | None
    sip_register_expires: int
    sip_jitter_ms: int
    rtp_timeout_s: float
    call_control_timeout_s: float
    twilio_account_sid: str | None
    twilio_api_key: str | None
    twilio_api_secret: str | None = field(repr=False)
    twilio_api_base: str | None
    signalwire_space_url: str | None
    signalwire_project_id: str | None
    signalwire_api_token: str | None = field(repr=False)
    telnyx_api_key: str | None = field(repr=False)
    telnyx_account_sid: str | None
    telnyx_api_base: str | None
    plivo_auth_id: str | None
    plivo_api_base: str | None
    vonage_application_id: str | None
    vonage_private_key: str | None = field(repr=False)
    vonage_api_base: str | None
    max_calls: int
    drain_timeout_s: float
    transcript_dir: str | None
    recording_dir: str | None
    call_events_webhook_url: str | None
    webhook_secret: str | None = field(repr=False)
    webhook_timeout_s: float
    workers: int
    bots_file: str | None
    log_level: str
    log_format: str

    def _set(self, env: str) -> bool:
        return bool(getattr(self, _ATTR_OF[env]))

    def provider_secret(self, provider: SecretHolder) -> str | None:
        """The value of the provider's secret setting (None: its checks are off)."""
        if provider.secret_setting is None:
            return None
        value = getattr(self, _ATTR_OF[provider.secret_setting])
        return str(value) if value else None

    def stream_token_key(self, provider: SecretHolder) -> str | None:
        """What keys a provider's stream tokens: STREAM_TOKEN_SECRET, else its own secret if that is one
        (None: no tokens, the media route takes streams no webhook announced)."""
        if self.stream_token_secret:
            return self.stream_token_secret
        if getattr(provider, "secret_is_public", False):
            return None
        return self.provider_secret(provider)

    def configured_backends(self) -> list[Backend]:
        """The backends with any of their settings present, in BACKEND_SETTINGS order."""
        return [b for b, names in BACKEND_SETTINGS.items() if any(self._set(n) for n in names)]

    def production_settings(self) -> list[str]:
        """The settings present that say real callers can reach this gateway (a provider secret, a public
        URL that is not loopback)."""
        present = [name for name in PRODUCTION_SECRETS if self._set(name)]
        if self.public_url and not _is_loopback_url(self.public_url):
            present.append("GATEWAY_PUBLIC_URL")
        return present

    def backend(self) -> Backend:
        """The backend calls go to; ConfigError when it is ambiguous, incomplete or an unasked-for emulator
        would face real callers."""
        configured = self.configured_backends()
        if self.realtime_backend != "auto":
            chosen = Backend(self.realtime_backend)
            if chosen is not Backend.EMULATOR and chosen not in configured:
                needs = " or ".join(BACKEND_SETTINGS[chosen][:2])
                raise ConfigError(f"REALTIME_BACKEND={chosen.value} needs {needs} to be set")
            return chosen
        if len(configured) > 1:
            found = " and ".join(_present(self, b) for b in configured)
            raise ConfigError(
                f"REALTIME_BACKEND=auto found conflicting realtime backends: {found}; "
                "set REALTIME_BACKEND=url|azure|openai to choose one, or unset the others"
            )
        if configured:
            return configured[0]
        production = self.production_settings()
        if production:
            raise ConfigError(
                f"no realtime backend is configured, but {' and '.join(production)} says real callers can "
                "reach this gateway: set AZURE_OPENAI_ENDPOINT and AZURE_OPENAI_DEPLOYMENT, or "
                "OPENAI_API_KEY, or REALTIME_URL (REALTIME_BACKEND=emulator answers callers with the "
                "emulator's synthetic voice: for trials only)"
            )
        return Backend.EMULATOR

    def ignored_settings(self) -> list[str]:
        """Settings of backends that REALTIME_BACKEND did not choose (logged at start-up as ignored)."""
        chosen = self.backend()
        return [
            name
            for b in self.configured_backends()
            if b is not chosen
            for name in BACKEND_SETTINGS[b]
            if self._set(name)
        ]

    def backend_key(self) -> str | None:
        """The API key of the chosen backend, if one is set."""
        return {
            Backend.URL: self.realtime_api_key,
            Backend.AZURE: self.azure_api_key,
            Backend.OPENAI: self.openai_api_key,
        }.get(self.backend())

    def endpoint(self) -> RealtimeEndpoint | None:
        """The chosen realtime endpoint, or None for the embedded emulator; ConfigError if bad."""
        backend = self.backend()
        override = self.realtime_protocol
        if backend is Backend.URL:
            if not self.realtime_url:
                raise ConfigError("REALTIME_URL must be set when REALTIME_API_KEY is")
            return resolve_endpoint(realtime_url=self.realtime_url, protocol_override=override)
        if backend is Backend.AZURE:
            if not self.azure_endpoint:
                raise ConfigError(
                    "AZURE_OPENAI_ENDPOINT must be set (https://RESOURCE.openai.azure.com) when other "
                    "AZURE_OPENAI_* settings are"
                )
            return resolve_endpoint(
                azure_endpoint=self.azure_endpoint,
                azure_deployment=self.azure_deployment,
                azure_api_version=self.azure_api_version,
                protocol_override=override,
            )
        if backend is Backend.OPENAI:
            return resolve_endpoint(
                openai_model=self.openai_model, openai_api_key=self.openai_api_key, protocol_override=override
            )
        return None

    @property
    def speaks_ga(self) -> bool:
        """The realtime backend speaks the GA protocol (the embedded emulator does, by default)."""
        endpoint = self.endpoint()
        return endpoint is None or endpoint.protocol.value == "ga"

    @property
    def uses_emulator(self) -> bool:
        """True when calls go to the embedded emulator (asked for, or nothing configured on a private
        gateway)."""
        return self.backend() is Backend.EMULATOR


def _is_loopback_url(url: str) -> bool:
    return is_loopback_host((urlsplit(url).hostname or "").lower())


def _present(settings: Settings, backend: Backend) -> str:
    return "/".join(n for n in BACKEND_SETTINGS[backend] if settings._set(n))


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Parse every declared variable from `environ`; raise ConfigError naming the first bad one."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = environ.get(setting.env, setting.default).strip()
        try:
            values[setting.attr] = setting.parse(raw)
        except ValueError as exc:
            shown = "<redacted>" if setting.secret else repr(raw)
            raise ConfigError(f"{setting.env}={shown} is invalid: {exc}") from None
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _check_combinations(settings: Settings) -> None:
    settings.endpoint()  # every backend problem names its variable at start-up, not in the first call
    if settings.acs_connection_string:
        from gateway.telephony.acs import parse_connection_string

        try:
            parse_connection_string(settings.acs_connection_string)
        except ValueError as exc:
            raise ConfigError(f"ACS_CONNECTION_STRING=<redacted> is invalid: {exc}") from None
    if settings.sip_listen and settings.workers > 1:
        raise ConfigError(
            "SIP_LISTEN needs GATEWAY_WORKERS=1: run one gateway process per SIP port and spread calls over "
            "them with Kamailio (deploy/kamailio)"
        )
    if bool(settings.sip_username) != bool(settings.sip_password):
        raise ConfigError("SIP_USERNAME and SIP_PASSWORD go together: set both, or neither")
    _check_session(settings)
    if settings.sip_rate_limit and settings.sip_rate_burst < settings.sip_rate_limit:
        raise ConfigError(
            f"SIP_RATE_BURST={settings.sip_rate_burst} is below SIP_RATE_LIMIT={settings.sip_rate_limit}: "
            "a source could not send one second's worth at once (set the burst at least as high)"
        )
    _check_sip_tls(settings)
    _check_sip_registrar(settings)
    _check_record_dirs(settings)
    _check_tools(settings)
    if settings.realtime_auth == "key" and not settings.backend_key():
        raise ConfigError("REALTIME_AUTH=key needs REALTIME_API_KEY, AZURE_OPENAI_API_KEY or OPENAI_API_KEY")


def _check_session(settings: Settings) -> None:
    """Session settings that the chosen VAD or protocol would ignore are mistakes: say so at start-up."""
    if settings.vad_eagerness != "auto" and settings.vad_type != "semantic_vad":
        raise ConfigError(
            f"VAD_EAGERNESS={settings.vad_eagerness} applies to VAD_TYPE=semantic_vad only "
            f"(VAD_TYPE={settings.vad_type} ends turns on silence: tune VAD_SILENCE_DURATION_MS)"
        )
    if settings.temperature is not None and settings.speaks_ga:
        raise ConfigError(
            "TEMPERATURE applies to the preview protocol only: the GA protocol has no temperature "
            "(unset it, or use a preview endpoint / REALTIME_PROTOCOL=preview)"
        )


def _check_tools(settings: Settings) -> None:
    """The tools file loads, BOT_TOOLS names tools that exist and can run, mcp only on the GA protocol."""
    from gateway.call.tools import ToolBox, load_tools_file

    try:
        file_tools = load_tools_file(settings.tools_file) if settings.tools_file else ()
    except ValueError as exc:
        raise ConfigError(f"TOOLS_FILE is invalid: {exc}") from None
    try:
        box = ToolBox(
            settings.bot_tools,
            file_tools,
            settings.transfer_to,
            settings.tools_webhook_url,
            mcp=settings.speaks_ga,
        )
    except ValueError as exc:
        raise ConfigError(f"BOT_TOOLS={','.join(settings.bot_tools)} is invalid: {exc}") from None
    if settings.bots_file:  # read again by the app; checked here so that a bad file stops start-up early
        from gateway.profiles import ProfileBook

        ProfileBook.read(settings.bots_file, settings, box.check_profile)


def _check_sip_tls(settings: Settings) -> None:
    """A tls: listener needs a certificate and key that load; either without a tls: listener is a mistake."""
    import ssl

    tls = any(transport == "tls" for transport, _, _ in settings.sip_listen)
    if not tls:
        if settings.sip_tls_cert or settings.sip_tls_key:
            raise ConfigError("SIP_TLS_CERT/SIP_TLS_KEY are set but SIP_LISTEN has no tls: listener")
        return
    if not settings.sip_tls_cert or not settings.sip_tls_key:
        raise ConfigError("a tls: listener in SIP_LISTEN needs SIP_TLS_CERT and SIP_TLS_KEY (PEM files)")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.sip_tls_cert, settings.sip_tls_key
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"SIP_TLS_CERT/SIP_TLS_KEY cannot be loaded: {exc}") from None


def _check_sip_registrar(settings: Settings) -> None:
    """Registration needs a UDP listener and the extension's credentials, with a plain user part."""
    import re

    if settings.sip_registrar is None:
        return
    if not any(transport == "udp" for transport, _, _ in settings.sip_listen):
        raise ConfigError("SIP_REGISTRAR needs a udp: listener in SIP_LISTEN (registration goes over UDP)")
    if not settings.sip_username:
        raise ConfigError("SIP_REGISTRAR needs SIP_USERNAME and SIP_PASSWORD: the extension's credentials")
    if not re.fullmatch(r"[A-Za-z0-9\-_.!~*'()&=+$,]+", settings.sip_username):
        raise ConfigError(
            f"SIP_USERNAME={settings.sip_username!r} cannot be a SIP user part (registering as it): use "
            "letters, digits and -_.!~*'()&=+$,"
        )


def _check_record_dirs(settings: Settings) -> None:
    """TRANSCRIPT_DIR and RECORDING_DIR are existing directories this process can write in: a typo would
    otherwise lose every call's files, one warning per call."""
    import os

    for env, path in (("TRANSCRIPT_DIR", settings.transcript_dir), ("RECORDING_DIR", settings.recording_dir)):
        if path is None:
            continue
        if not os.path.isdir(path):
            raise ConfigError(f"{env}={path!r} is not an existing directory (create it first)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{env}={path!r} is not writable by this process")


def describe_settings() -> str:
    """A help text listing every variable with its default, for `serve --help`."""
    lines = ["environment variables:"]
    for s in SETTINGS:
        default = "(unset)" if not s.default else s.default
        options = f" (one of: {', '.join(s.parse.options)})" if isinstance(s.parse, _Choice) else ""
        lines.append(f"  {s.env:<28} {s.help}{options} [default: {default}]")
    return "\n".join(lines)
