"""Credentials for the realtime WebSocket handshake: a static API key, or an Entra ID token.

Both offer `async handshake_headers() -> dict[str, str]`, called once per connection attempt. Secrets
never appear in a repr or an error message.

`EntraToken` caches the token and fetches a new one `refresh_margin_s` before it expires. Its seam is
`TokenProvider`: any async callable `(scope) -> (token, expires_on)`. `azure_token_provider()` builds one
on azure-identity's `DefaultAzureCredential` (imported only when called, so the gateway runs without
Azure configured); close it with `aclose()` (or `EntraToken.aclose()`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol

from gateway.errors import AuthError
from gateway.realtime.endpoint import AuthStyle

__all__ = [
    "DEFAULT_REFRESH_MARGIN_S",
    "DEFAULT_SCOPE",
    "AzureCredentialTokenProvider",
    "Credential",
    "EntraToken",
    "StaticKey",
    "TokenProvider",
    "azure_token_provider",
]

DEFAULT_SCOPE: Final = "https://cognitiveservices.azure.com/.default"
DEFAULT_REFRESH_MARGIN_S: Final = 300.0
_MAX_DETAIL: Final = 300


class TokenProvider(Protocol):
    """Fetch an access token for `scope`: returns the token and its expiry (epoch seconds)."""

    def __call__(self, scope: str, /) -> Awaitable[tuple[str, int]]: ...


class Credential(Protocol):
    """Anything that yields handshake headers: `StaticKey` or `EntraToken`."""

    async def handshake_headers(self) -> dict[str, str]: ...


class StaticKey:
    """An API key sent as `api-key: KEY` or `Authorization: Bearer KEY`, depending on `style`."""

    __slots__ = ("_key", "style")

    def __init__(self, key: str, style: AuthStyle) -> None:
        if not key or not key.strip():
            raise AuthError("the API key is empty")
        self._key = key.strip()
        self.style = style

    def __repr__(self) -> str:
        return f"StaticKey(style={self.style.name}, key=<redacted>)"

    def headers(self) -> dict[str, str]:
        """The handshake headers carrying the key."""
        if self.style is AuthStyle.API_KEY_HEADER:
            return {"api-key": self._key}
        return {"Authorization": f"Bearer {self._key}"}

    async def handshake_headers(self) -> dict[str, str]:
        """The handshake headers carrying the key (async for symmetry with `EntraToken`)."""
        return self.headers()


class EntraToken:
    """A cached Entra ID bearer token, refreshed `refresh_margin_s` before it expires."""

    __slots__ = ("_clock", "_expires_on", "_lock", "_provider", "_token", "refresh_margin_s", "scope")

    def __init__(
        self,
        token_provider: TokenProvider,
        *,
        scope: str = DEFAULT_SCOPE,
        refresh_margin_s: float = DEFAULT_REFRESH_MARGIN_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_margin_s < 0:
            raise ValueError("refresh_margin_s must be >= 0")
        self._provider = token_provider
        self.scope = scope
        self.refresh_margin_s = refresh_margin_s
        self._clock = clock
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        state = "cached" if self._token is not None else "empty"
        return f"EntraToken(scope={self.scope!r}, token=<redacted, {state}>)"

    @property
    def expires_on(self) -> float | None:
        """Expiry of the cached token (epoch seconds), or None before the first fetch."""
        return self._expires_on if self._token is not None else None

    def _fresh(self) -> str | None:
        if self._token is not None and self._clock() < self._expires_on - self.refresh_margin_s:
            return self._token
        return None

    async def token(self) -> str:
        """The cached token, or a new one if it is due for refresh; raises AuthError on failure."""
        cached = self._fresh()
        if cached is not None:
            return cached
        async with self._lock:  # one fetch at a time; late waiters reuse its result
            cached = self._fresh()
            if cached is not None:
                return cached
            token, expires_on = await self._fetch()
            self._token, self._expires_on = token, float(expires_on)
            return token

    async def _fetch(self) -> tuple[str, int]:
        try:
            result = await self._provider(self.scope)
        except AuthError:
            raise
        except Exception as exc:
            detail = str(exc).splitlines()[0][:_MAX_DETAIL] if str(exc) else ""
            raise AuthError(
                f"could not get an Entra ID token for {self.scope}: {type(exc).__name__}: {detail}"
            ) from exc
        return self._check(result)

    def _check(self, result: Any) -> tuple[str, int]:
        if not isinstance(result, tuple) or len(result) != 2:
            raise AuthError("the token provider must return (token, expires_on)")
        token, expires_on = result
        if not isinstance(token, str) or not token:
            raise AuthError("the token provider returned an empty token")
        if isinstance(expires_on, bool) or not isinstance(expires_on, int | float):
            raise AuthError("the token provider returned a non-numeric expiry")
        if expires_on <= self._clock():
            raise AuthError(f"the token provider returned a token that already expired ({expires_on})")
        return token, int(expires_on)

    async def handshake_headers(self) -> dict[str, str]:
        """`Authorization: Bearer TOKEN` with a token valid for at least `refresh_margin_s` when possible."""
        return {"Authorization": f"Bearer {await self.token()}"}

    async def aclose(self) -> None:
        """Close the token provider if it holds resources (azure-identity credentials do)."""
        close = getattr(self._provider, "aclose", None)
        if close is not None:
            await close()


class AzureCredentialTokenProvider:
    """A `TokenProvider` on an azure-identity async credential (anything with `get_token` and `close`)."""

    __slots__ = ("_credential",)

    def __init__(self, credential: Any) -> None:
        self._credential = credential

    def __repr__(self) -> str:
        return f"AzureCredentialTokenProvider({type(self._credential).__name__})"

    async def __call__(self, scope: str, /) -> tuple[str, int]:
        """Fetch a token for `scope` from the credential."""
        access = await self._credential.get_token(scope)
        return str(access.token), int(access.expires_on)

    async def aclose(self) -> None:
        """Close the credential's HTTP sessions."""
        await self._credential.close()


def azure_token_provider(**credential_options: Any) -> AzureCredentialTokenProvider:
    """A provider on `azure.identity.aio.DefaultAzureCredential(**credential_options)`; aclose() it."""
    try:
        from azure.identity.aio import DefaultAzureCredential
    except ImportError as exc:  # pragma: no cover - azure-identity is a declared dependency
        raise AuthError("Entra ID auth needs the azure-identity package") from exc
    return AzureCredentialTokenProvider(DefaultAzureCredential(**credential_options))
