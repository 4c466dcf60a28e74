"""Which realtime service to dial, in which protocol, and how to authenticate: pure, from settings.

Rules (first match wins):

1. `REALTIME_URL` (ws:// or wss://). Protocol from its path: `.../openai/realtime` is the Azure preview
   shape (PREVIEW); anything else (`/v1/realtime`, `/openai/v1/realtime`, an emulator) is GA.
   `REALTIME_PROTOCOL` overrides. Azure-shaped hosts or `/openai/...` paths authenticate with an
   `api-key` header, others with `Authorization: Bearer`.
2. `AZURE_OPENAI_ENDPOINT` + `AZURE_OPENAI_DEPLOYMENT`: GA `wss://HOST/openai/v1/realtime?model=DEPLOYMENT`;
   with `AZURE_OPENAI_API_VERSION` (or `REALTIME_PROTOCOL=preview`) the preview
   `wss://HOST/openai/realtime?api-version=V&deployment=DEPLOYMENT`.
3. `OPENAI_API_KEY`: `wss://api.openai.com/v1/realtime?model=MODEL` (default gpt-realtime), Bearer; the
   preview protocol there adds the header `OpenAI-Beta: realtime=v1`.
4. Nothing configured: None (the caller starts the embedded emulator).

Bad input raises `ConfigError` (a ValueError) naming the setting to fix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Final
from urllib.parse import urlencode, urlsplit

from gateway.errors import ConfigError
from gateway.realtime.session import Protocol

__all__ = [
    "DEFAULT_OPENAI_MODEL",
    "DEFAULT_PREVIEW_API_VERSION",
    "OPENAI_BETA_HEADER",
    "AuthStyle",
    "EndpointKind",
    "Protocol",
    "RealtimeEndpoint",
    "is_loopback_host",
    "parse_protocol",
    "protocol_for_request",
    "protocol_for_url",
    "resolve_endpoint",
]

DEFAULT_OPENAI_MODEL: Final = "gpt-realtime"
DEFAULT_PREVIEW_API_VERSION: Final = "2025-04-01-preview"
OPENAI_HOST: Final = "api.openai.com"
OPENAI_BETA_HEADER: Final = ("OpenAI-Beta", "realtime=v1")
AZURE_HOST_SUFFIXES: Final = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")


class AuthStyle(Enum):
    """How the credential goes into the handshake."""

    API_KEY_HEADER = "api-key"
    BEARER = "bearer"


class EndpointKind(Enum):
    """Whose service the URL points at."""

    AZURE = "azure"
    OPENAI = "openai"
    CUSTOM = "custom"


@dataclass(frozen=True, slots=True)
class RealtimeEndpoint:
    """A resolved realtime endpoint: dial `url` with `headers` plus the credential's headers."""

    url: str
    protocol: Protocol
    auth_style: AuthStyle
    kind: EndpointKind
    headers: Mapping[str, str] = field(default_factory=dict)


def parse_protocol(value: str | Protocol | None) -> Protocol | None:
    """`REALTIME_PROTOCOL` ("ga" or "preview", any case; empty = infer) as a Protocol."""
    if value is None or isinstance(value, Protocol):
        return value
    text = value.strip().lower()
    if not text:
        return None
    for protocol in Protocol:
        if protocol.value == text:
            return protocol
    raise ConfigError(f"REALTIME_PROTOCOL must be 'ga' or 'preview', got {value!r}")


def _is_azure_host(host: str) -> bool:
    return host.endswith(AZURE_HOST_SUFFIXES)


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def protocol_for_request(path: str, headers: Mapping[str, str] | None = None) -> Protocol:
    """The protocol a client asks for: PREVIEW for the Azure preview path (`.../openai/realtime`) or an
    `OpenAI-Beta: realtime=v1` header, GA otherwise. `path` may carry a query string; header names are
    matched in any case (an emulator uses this on the requests it accepts)."""
    route = urlsplit(path).path.rstrip("/")
    if route.endswith("/openai/realtime"):
        return Protocol.PREVIEW
    beta_name, beta_value = OPENAI_BETA_HEADER
    for name, value in (headers or {}).items():
        if name.lower() == beta_name.lower() and value.strip().lower() == beta_value:
            return Protocol.PREVIEW
    return Protocol.GA


def protocol_for_url(url: str) -> Protocol:
    """Infer the protocol from a realtime URL's path: the Azure preview path is PREVIEW, all else GA."""
    return protocol_for_request(urlsplit(url).path)


def _kind(host: str) -> EndpointKind:
    if _is_azure_host(host):
        return EndpointKind.AZURE
    return EndpointKind.OPENAI if host == OPENAI_HOST else EndpointKind.CUSTOM


def _headers(kind: EndpointKind, protocol: Protocol) -> dict[str, str]:
    if kind is EndpointKind.OPENAI and protocol is Protocol.PREVIEW:
        return dict([OPENAI_BETA_HEADER])
    return {}


def _from_realtime_url(url: str, override: Protocol | None) -> RealtimeEndpoint:
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("ws", "wss"):
        raise ConfigError(f"REALTIME_URL must start with ws:// or wss://, got {parts.scheme or 'no'} scheme")
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigError("REALTIME_URL has no host")
    protocol = override or protocol_for_url(url)
    kind = _kind(host)
    azure_shaped = kind is EndpointKind.AZURE or parts.path.startswith("/openai/")
    style = AuthStyle.API_KEY_HEADER if azure_shaped else AuthStyle.BEARER
    return RealtimeEndpoint(parts.geturl(), protocol, style, kind, _headers(kind, protocol))


def _azure_origin(endpoint: str) -> str:
    """`wss://host[:port]` from AZURE_OPENAI_ENDPOINT (https, or http upgraded to TLS except on loopback)."""
    parts = urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http", "wss", "ws"):
        raise ConfigError(
            f"AZURE_OPENAI_ENDPOINT must be an https:// URL like https://NAME.openai.azure.com/, "
            f"got {scheme or 'no'} scheme"
        )
    if not parts.hostname:
        raise ConfigError("AZURE_OPENAI_ENDPOINT has no host")
    if parts.path.strip("/") or parts.query:
        raise ConfigError(
            "AZURE_OPENAI_ENDPOINT must be the resource URL only, like https://NAME.openai.azure.com/"
        )
    plain = scheme in ("http", "ws") and is_loopback_host(parts.hostname)
    return f"{'ws' if plain else 'wss'}://{parts.netloc}"


def _from_azure(
    endpoint: str, deployment: str | None, api_version: str | None, override: Protocol | None
) -> RealtimeEndpoint:
    origin = _azure_origin(endpoint)
    deployment = (deployment or "").strip()
    if not deployment:
        raise ConfigError(
            "AZURE_OPENAI_DEPLOYMENT must name the realtime deployment when AZURE_OPENAI_ENDPOINT is set"
        )
    if "/" in deployment or any(c.isspace() for c in deployment):
        raise ConfigError(f"AZURE_OPENAI_DEPLOYMENT is not a deployment name: {deployment!r}")
    api_version = (api_version or "").strip() or None
    protocol = override or (Protocol.PREVIEW if api_version else Protocol.GA)
    if protocol is Protocol.GA:
        # A v1 URL with api-version in it is refused with 401 (PROTOCOLS.md 3), so it is dropped.
        url = f"{origin}/openai/v1/realtime?{urlencode({'model': deployment})}"
    else:
        query = urlencode(
            {"api-version": api_version or DEFAULT_PREVIEW_API_VERSION, "deployment": deployment}
        )
        url = f"{origin}/openai/realtime?{query}"
    host = (urlsplit(origin).hostname or "").lower()
    kind = EndpointKind.AZURE if _is_azure_host(host) else EndpointKind.CUSTOM
    return RealtimeEndpoint(url, protocol, AuthStyle.API_KEY_HEADER, kind)


def _from_openai(model: str | None, override: Protocol | None) -> RealtimeEndpoint:
    model = (model or "").strip() or DEFAULT_OPENAI_MODEL
    if any(c.isspace() for c in model):
        raise ConfigError(f"OPENAI_MODEL is not a model name: {model!r}")
    protocol = override or Protocol.GA
    url = f"wss://{OPENAI_HOST}/v1/realtime?{urlencode({'model': model})}"
    return RealtimeEndpoint(
        url, protocol, AuthStyle.BEARER, EndpointKind.OPENAI, _headers(EndpointKind.OPENAI, protocol)
    )


def resolve_endpoint(
    *,
    realtime_url: str | None = None,
    protocol_override: str | Protocol | None = None,
    azure_endpoint: str | None = None,
    azure_deployment: str | None = None,
    azure_api_version: str | None = None,
    openai_model: str | None = None,
    openai_api_key: str | None = None,
) -> RealtimeEndpoint | None:
    """Resolve the endpoint from settings (see the module docstring); None means: no backend configured.

    `openai_api_key` is only tested for presence (it selects OpenAI); the credential itself goes to
    `gateway.realtime.auth`.
    """
    override = parse_protocol(protocol_override)
    if realtime_url and realtime_url.strip():
        return _from_realtime_url(realtime_url, override)
    if azure_endpoint and azure_endpoint.strip():
        return _from_azure(azure_endpoint, azure_deployment, azure_api_version, override)
    if azure_deployment and azure_deployment.strip():
        raise ConfigError("AZURE_OPENAI_DEPLOYMENT is set but AZURE_OPENAI_ENDPOINT is not")
    if openai_api_key:
        return _from_openai(openai_model, override)
    if openai_model and openai_model.strip():
        raise ConfigError("OPENAI_MODEL is set but OPENAI_API_KEY is not")
    return None
