"""Endpoint resolution: which URL, protocol, auth style and static headers each configuration gives."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.realtime.endpoint import (
    AuthStyle,
    EndpointKind,
    Protocol,
    RealtimeEndpoint,
    parse_protocol,
    protocol_for_request,
    protocol_for_url,
    resolve_endpoint,
)

AZURE = "https://myres.openai.azure.com/"


def test_nothing_configured_means_no_backend() -> None:
    """With no URL, Azure or OpenAI settings the result is None (the emulator takes over)."""
    assert resolve_endpoint() is None
    assert resolve_endpoint(realtime_url="  ", azure_endpoint="", openai_model=None) is None


def test_azure_ga_by_default() -> None:
    """Azure endpoint + deployment gives the GA v1 URL with the deployment as model and an api-key header."""
    endpoint = resolve_endpoint(azure_endpoint=AZURE, azure_deployment="my-rt")
    assert endpoint == RealtimeEndpoint(
        url="wss://myres.openai.azure.com/openai/v1/realtime?model=my-rt",
        protocol=Protocol.GA,
        auth_style=AuthStyle.API_KEY_HEADER,
        kind=EndpointKind.AZURE,
        headers={},
    )


def test_azure_preview_with_api_version() -> None:
    """An api version selects the preview URL with api-version and deployment in the query."""
    endpoint = resolve_endpoint(
        azure_endpoint="https://myres.openai.azure.com",
        azure_deployment="my-rt",
        azure_api_version="2025-04-01-preview",
    )
    assert endpoint is not None
    assert (
        endpoint.url
        == "wss://myres.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=my-rt"
    )
    assert endpoint.protocol is Protocol.PREVIEW
    assert endpoint.auth_style is AuthStyle.API_KEY_HEADER
    assert endpoint.headers == {}


def test_azure_protocol_override() -> None:
    """REALTIME_PROTOCOL=ga drops an api version (it gives 401 on v1); =preview uses a default version."""
    ga = resolve_endpoint(
        azure_endpoint=AZURE,
        azure_deployment="d",
        azure_api_version="2025-04-01-preview",
        protocol_override="GA",
    )
    assert ga is not None
    assert ga.url == "wss://myres.openai.azure.com/openai/v1/realtime?model=d"
    preview = resolve_endpoint(azure_endpoint=AZURE, azure_deployment="d", protocol_override=Protocol.PREVIEW)
    assert preview is not None
    assert (
        preview.url
        == "wss://myres.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=d"
    )


def test_azure_deployment_is_query_encoded() -> None:
    """Deployment names with URL-special characters are percent-encoded in the query."""
    endpoint = resolve_endpoint(azure_endpoint=AZURE, azure_deployment="rt&x=1")
    assert endpoint is not None
    assert endpoint.url.endswith("?model=rt%26x%3D1")


@pytest.mark.parametrize(
    ("endpoint", "url_start"),
    [
        ("http://myres.openai.azure.com", "wss://myres.openai.azure.com/"),
        ("wss://myres.openai.azure.com/", "wss://myres.openai.azure.com/"),
        ("https://myres.cognitiveservices.azure.com:8443", "wss://myres.cognitiveservices.azure.com:8443/"),
        ("http://127.0.0.1:8765", "ws://127.0.0.1:8765/"),
        ("http://localhost:8765/", "ws://localhost:8765/"),
    ],
)
def test_azure_endpoint_schemes(endpoint: str, url_start: str) -> None:
    """https and http endpoints become wss (plain ws only for loopback, which has no TLS to upgrade to)."""
    resolved = resolve_endpoint(azure_endpoint=endpoint, azure_deployment="d")
    assert resolved is not None
    assert resolved.url.startswith(url_start)


def test_azure_kind_follows_the_host() -> None:
    """Azure-style settings pointed at a non-Azure host are CUSTOM but keep the api-key header."""
    resolved = resolve_endpoint(azure_endpoint="http://127.0.0.1:9", azure_deployment="d")
    assert resolved is not None
    assert (resolved.kind, resolved.auth_style) == (EndpointKind.CUSTOM, AuthStyle.API_KEY_HEADER)


def test_openai_default() -> None:
    """An OpenAI key alone gives the GA URL with the default model, Bearer auth and no beta header."""
    assert resolve_endpoint(openai_api_key="sk-test") == RealtimeEndpoint(
        url="wss://api.openai.com/v1/realtime?model=gpt-realtime",
        protocol=Protocol.GA,
        auth_style=AuthStyle.BEARER,
        kind=EndpointKind.OPENAI,
        headers={},
    )


def test_openai_preview_adds_the_beta_header() -> None:
    """The preview protocol on OpenAI's host needs OpenAI-Beta: realtime=v1."""
    endpoint = resolve_endpoint(
        openai_api_key="sk", openai_model="gpt-4o-realtime-preview", protocol_override="preview"
    )
    assert endpoint is not None
    assert endpoint.url == "wss://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview"
    assert endpoint.protocol is Protocol.PREVIEW
    assert endpoint.headers == {"OpenAI-Beta": "realtime=v1"}


def test_azure_wins_over_openai_and_url_wins_over_both() -> None:
    """REALTIME_URL beats Azure settings, which beat OpenAI settings."""
    both: dict[str, Any] = {"azure_endpoint": AZURE, "azure_deployment": "d", "openai_api_key": "sk"}
    azure = resolve_endpoint(**both)
    assert azure is not None
    assert azure.kind is EndpointKind.AZURE
    url = resolve_endpoint(realtime_url="ws://127.0.0.1:9000/v1/realtime", **both)
    assert url is not None
    assert url.url == "ws://127.0.0.1:9000/v1/realtime"


@pytest.mark.parametrize(
    ("url", "protocol", "style", "kind"),
    [
        (
            "wss://myres.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=d",
            Protocol.PREVIEW,
            AuthStyle.API_KEY_HEADER,
            EndpointKind.AZURE,
        ),
        (
            "wss://myres.openai.azure.com/openai/v1/realtime?model=d",
            Protocol.GA,
            AuthStyle.API_KEY_HEADER,
            EndpointKind.AZURE,
        ),
        (
            "wss://api.openai.com/v1/realtime?model=gpt-realtime",
            Protocol.GA,
            AuthStyle.BEARER,
            EndpointKind.OPENAI,
        ),
        ("ws://127.0.0.1:8765/v1/realtime", Protocol.GA, AuthStyle.BEARER, EndpointKind.CUSTOM),
        (
            "ws://127.0.0.1:8765/openai/realtime?api-version=x&deployment=d",
            Protocol.PREVIEW,
            AuthStyle.API_KEY_HEADER,
            EndpointKind.CUSTOM,
        ),
        (
            "ws://127.0.0.1:8765/openai/v1/realtime",
            Protocol.GA,
            AuthStyle.API_KEY_HEADER,
            EndpointKind.CUSTOM,
        ),
        ("wss://proxy.example.com/anything", Protocol.GA, AuthStyle.BEARER, EndpointKind.CUSTOM),
    ],
)
def test_realtime_url_inference(url: str, protocol: Protocol, style: AuthStyle, kind: EndpointKind) -> None:
    """REALTIME_URL is used as given; protocol comes from its path, auth style from its host or path."""
    endpoint = resolve_endpoint(realtime_url=url)
    assert endpoint == RealtimeEndpoint(url=url, protocol=protocol, auth_style=style, kind=kind, headers={})


def test_realtime_url_protocol_override() -> None:
    """REALTIME_PROTOCOL overrides what the path suggests, and adds the beta header on OpenAI's host."""
    endpoint = resolve_endpoint(
        realtime_url="wss://api.openai.com/v1/realtime?model=m", protocol_override="preview"
    )
    assert endpoint is not None
    assert endpoint.protocol is Protocol.PREVIEW
    assert endpoint.headers == {"OpenAI-Beta": "realtime=v1"}
    ga = resolve_endpoint(realtime_url="ws://127.0.0.1:1/openai/realtime", protocol_override="ga")
    assert ga is not None
    assert ga.protocol is Protocol.GA


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"realtime_url": "https://myres.openai.azure.com/openai/v1/realtime"}, "REALTIME_URL"),
        ({"realtime_url": "ftp://x/realtime"}, "REALTIME_URL"),
        ({"realtime_url": "ws:///realtime"}, "REALTIME_URL"),
        ({"realtime_url": "ws://h/v1/realtime", "protocol_override": "beta"}, "REALTIME_PROTOCOL"),
        (
            {"azure_endpoint": "ftp://myres.openai.azure.com", "azure_deployment": "d"},
            "AZURE_OPENAI_ENDPOINT",
        ),
        ({"azure_endpoint": "https://", "azure_deployment": "d"}, "AZURE_OPENAI_ENDPOINT"),
        (
            {"azure_endpoint": "https://myres.openai.azure.com/openai/deployments", "azure_deployment": "d"},
            "AZURE_OPENAI_ENDPOINT",
        ),
        ({"azure_endpoint": AZURE}, "AZURE_OPENAI_DEPLOYMENT"),
        ({"azure_endpoint": AZURE, "azure_deployment": "  "}, "AZURE_OPENAI_DEPLOYMENT"),
        ({"azure_endpoint": AZURE, "azure_deployment": "a/b"}, "AZURE_OPENAI_DEPLOYMENT"),
        ({"azure_deployment": "d"}, "AZURE_OPENAI_ENDPOINT"),
        ({"openai_model": "gpt-realtime"}, "OPENAI_API_KEY"),
        ({"openai_api_key": "sk", "openai_model": "gpt realtime"}, "OPENAI_MODEL"),
    ],
)
def test_bad_settings_name_the_setting(kwargs: dict[str, Any], setting: str) -> None:
    """Bad input raises ConfigError (a ValueError) whose message names the setting to fix."""
    with pytest.raises(ConfigError, match=setting) as caught:
        resolve_endpoint(**kwargs)
    assert isinstance(caught.value, ValueError)


def test_parse_protocol() -> None:
    """REALTIME_PROTOCOL accepts ga/preview in any case; empty or None means infer."""
    assert parse_protocol(" Preview ") is Protocol.PREVIEW
    assert parse_protocol("ga") is Protocol.GA
    assert parse_protocol("") is None
    assert parse_protocol(None) is None
    assert parse_protocol(Protocol.GA) is Protocol.GA


def test_protocol_for_request_path_and_headers() -> None:
    """A server infers preview from the Azure preview path or the OpenAI-Beta header, GA otherwise."""
    assert (
        protocol_for_request("/openai/realtime?api-version=2025-04-01-preview&deployment=d")
        is Protocol.PREVIEW
    )
    assert protocol_for_request("/openai/v1/realtime?model=d") is Protocol.GA
    assert protocol_for_request("/v1/realtime?model=m", {"openai-beta": "realtime=v1"}) is Protocol.PREVIEW
    assert protocol_for_request("/v1/realtime?model=m", {"Authorization": "Bearer x"}) is Protocol.GA
    assert protocol_for_url("wss://h/openai/realtime/") is Protocol.PREVIEW
