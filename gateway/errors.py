"""The gateway's exception tree.

```
GatewayError
├── ConfigError          a setting is missing or malformed (also a ValueError)
├── ProtocolError
│   ├── LocalProtocolError   we misused a protocol (a bug on our side, e.g. send before start)
│   └── RemoteProtocolError  the peer broke a protocol (raised only where an event cannot carry it)
├── AuthError            credentials could not be obtained or were refused
└── UpstreamError        the realtime service failed in a way the call cannot survive
```

Peer garbage never escapes a sans-I/O core's `receive_*`/`decode` as an exception: it becomes an event
(`ProtocolViolation`, `MalformedEvent`). The exceptions here are for our own mistakes, configuration and
I/O-layer failures. Messages never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "ConfigError",
    "GatewayError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "UpstreamError",
]


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError, ValueError):
    """A setting is missing or malformed; the message names the setting."""


class ProtocolError(GatewayError):
    """A wire protocol (telephony or realtime) was broken by one side."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow in the current state (our bug)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol in a way that cannot be reported as an event."""


class AuthError(GatewayError):
    """Credentials for the realtime service could not be obtained; never carries the secret itself."""


class UpstreamError(GatewayError):
    """The realtime service failed (handshake refused, connection lost) and the call cannot go on."""
