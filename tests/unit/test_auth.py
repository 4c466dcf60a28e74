"""Handshake credentials: static keys, cached and refreshed Entra tokens, and failures that hide secrets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from gateway.errors import AuthError, GatewayError
from gateway.realtime.auth import (
    DEFAULT_SCOPE,
    AzureCredentialTokenProvider,
    EntraToken,
    StaticKey,
    azure_token_provider,
)
from gateway.realtime.endpoint import AuthStyle

SECRET = "s3cr3t-key-value"


class Clock:
    """A settable clock (epoch seconds)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeProvider:
    """A token provider at the seam: hands out numbered tokens valid for `lifetime` seconds."""

    clock: Clock
    lifetime: int = 3600
    fail_with: Exception | None = None
    scopes: list[str] = field(default_factory=list)
    closed: bool = False

    async def __call__(self, scope: str, /) -> tuple[str, int]:
        self.scopes.append(scope)
        if self.fail_with is not None:
            raise self.fail_with
        await asyncio.sleep(0)
        return f"token-{len(self.scopes)}", int(self.clock.now) + self.lifetime

    async def aclose(self) -> None:
        self.closed = True


async def test_static_key_as_api_key_header() -> None:
    """API_KEY_HEADER style sends `api-key: KEY`."""
    assert await StaticKey(SECRET, AuthStyle.API_KEY_HEADER).handshake_headers() == {"api-key": SECRET}


async def test_static_key_as_bearer() -> None:
    """BEARER style sends `Authorization: Bearer KEY` (surrounding whitespace from env files is dropped)."""
    assert await StaticKey(f" {SECRET}\n", AuthStyle.BEARER).handshake_headers() == {
        "Authorization": f"Bearer {SECRET}"
    }


def test_static_key_repr_hides_the_key() -> None:
    """repr and str of a key never contain the key."""
    key = StaticKey(SECRET, AuthStyle.BEARER)
    assert SECRET not in repr(key)
    assert SECRET not in str(key)
    assert "BEARER" in repr(key)


@pytest.mark.parametrize("key", ["", "   "])
def test_empty_static_key_is_an_auth_error(key: str) -> None:
    """An empty key is refused up front with AuthError (a GatewayError)."""
    with pytest.raises(AuthError, match="empty"):
        StaticKey(key, AuthStyle.API_KEY_HEADER)
    assert issubclass(AuthError, GatewayError)


async def test_entra_token_is_cached() -> None:
    """Within its validity (minus the margin) the token is fetched once and reused."""
    clock = Clock()
    provider = FakeProvider(clock)
    entra = EntraToken(provider, clock=clock)
    assert await entra.handshake_headers() == {"Authorization": "Bearer token-1"}
    clock.now += 3600 - 300 - 1
    assert await entra.handshake_headers() == {"Authorization": "Bearer token-1"}
    assert provider.scopes == [DEFAULT_SCOPE]
    assert entra.expires_on == 1_000_000 + 3600


async def test_entra_token_refreshes_before_expiry() -> None:
    """Once inside the refresh margin a new token is fetched, before the old one expires."""
    clock = Clock()
    provider = FakeProvider(clock)
    entra = EntraToken(provider, clock=clock, refresh_margin_s=300)
    await entra.token()
    clock.now += 3600 - 300
    assert await entra.token() == "token-2"
    assert len(provider.scopes) == 2


async def test_entra_scope_is_configurable() -> None:
    """The scope given to EntraToken is the one the provider is asked for."""
    clock = Clock()
    provider = FakeProvider(clock)
    await EntraToken(provider, scope="https://ai.azure.com/.default", clock=clock).token()
    assert provider.scopes == ["https://ai.azure.com/.default"]


async def test_concurrent_handshakes_share_one_fetch() -> None:
    """Several connections starting at once trigger a single token fetch."""
    clock = Clock()
    provider = FakeProvider(clock)
    entra = EntraToken(provider, clock=clock)
    tokens = await asyncio.gather(*(entra.token() for _ in range(5)))
    assert tokens == ["token-1"] * 5
    assert len(provider.scopes) == 1


async def test_provider_failure_is_an_auth_error() -> None:
    """A failing provider raises AuthError naming the scope and the cause, chained to the original."""
    clock = Clock()
    cause = RuntimeError("DefaultAzureCredential failed to retrieve a token\nlong details")
    entra = EntraToken(FakeProvider(clock, fail_with=cause), clock=clock)
    with pytest.raises(AuthError, match="RuntimeError: DefaultAzureCredential failed") as caught:
        await entra.handshake_headers()
    assert DEFAULT_SCOPE in str(caught.value)
    assert "long details" not in str(caught.value)
    assert caught.value.__cause__ is cause


async def test_expired_token_from_provider_is_refused() -> None:
    """A provider that hands back an already expired token gives AuthError, not a doomed handshake."""
    clock = Clock()
    entra = EntraToken(FakeProvider(clock, lifetime=0), clock=clock)
    with pytest.raises(AuthError, match="already expired"):
        await entra.token()


async def test_bad_provider_results_are_refused() -> None:
    """Empty tokens and non-numeric expiries are AuthErrors that never echo the token."""

    async def empty(scope: str, /) -> tuple[str, int]:
        return "", 2_000_000

    async def bad_expiry(scope: str, /) -> tuple[str, int]:
        return SECRET, "tomorrow"  # type: ignore[return-value]

    with pytest.raises(AuthError, match="empty token"):
        await EntraToken(empty, clock=Clock()).token()
    with pytest.raises(AuthError, match="non-numeric") as caught:
        await EntraToken(bad_expiry, clock=Clock()).token()
    assert SECRET not in str(caught.value)


async def test_a_failure_does_not_poison_the_cache() -> None:
    """After a failed refresh, the next call tries again and succeeds."""
    clock = Clock()
    provider = FakeProvider(clock, fail_with=OSError("network down"))
    entra = EntraToken(provider, clock=clock)
    with pytest.raises(AuthError):
        await entra.token()
    provider.fail_with = None
    assert await entra.token() == "token-2"


async def test_entra_repr_hides_the_token_and_aclose_closes_the_provider() -> None:
    """repr never shows the token; aclose closes a provider that holds resources."""
    clock = Clock()
    provider = FakeProvider(clock)
    entra = EntraToken(provider, clock=clock)
    token = await entra.token()
    assert token not in repr(entra)
    await entra.aclose()
    assert provider.closed


class FakeAccessToken:
    """The shape of azure.core.credentials.AccessToken."""

    def __init__(self, token: str, expires_on: int) -> None:
        self.token = token
        self.expires_on = expires_on


class FakeCredential:
    """An azure-identity-like async credential (get_token and close)."""

    def __init__(self) -> None:
        self.scopes: list[str] = []
        self.closed = False

    async def get_token(self, *scopes: str) -> FakeAccessToken:
        self.scopes.extend(scopes)
        return FakeAccessToken("azure-token", 2_000_000)

    async def close(self) -> None:
        self.closed = True


async def test_azure_credential_provider_adapts_get_token() -> None:
    """The azure-identity adapter returns (token, expires_on) and closes the credential."""
    credential = FakeCredential()
    entra = EntraToken(AzureCredentialTokenProvider(credential), clock=Clock())
    assert await entra.handshake_headers() == {"Authorization": "Bearer azure-token"}
    assert credential.scopes == [DEFAULT_SCOPE]
    await entra.aclose()
    assert credential.closed


async def test_azure_token_provider_builds_and_closes_without_network() -> None:
    """azure_token_provider() wraps DefaultAzureCredential; building and closing it needs no network."""
    provider = azure_token_provider()
    assert "DefaultAzureCredential" in repr(provider)
    await provider.aclose()
