"""A local stand-in for Azure Communication Services' REST side, over real sockets.

- `FakeAcs`: an aiohttp server playing Call Automation's REST endpoint (`answerCall`, HMAC-checked with
  the connection string's key and recorded, so a test asserts the body) and ACS's OpenID configuration
  and JWKS (an RSA key made here), with `token()` to sign JWTs the way ACS signs its callbacks and
  media upgrades.
- ACS's side of the media WebSocket (`AcsMediaCall`) lives in gateway/loadtest/legs/acs.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import ssl
import time
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

RESOURCE_ID = "0f4d5ab1-8f1c-4f6d-9b0b-2f3c4d5e6f70"  # the ACS resource id: the JWTs' audience
OPENID_PATH = "/calling/.well-known/acsopenidconfiguration"  # where ACS publishes it
KEYS_PATH = "/calling/keys"
TOPIC = "/subscriptions/xx/resourcegroups/rg/providers/microsoft.communication/communicationservices/acs"


class FakeAcs:
    """Call Automation's answerCall and ACS's OpenID configuration and keys, on 127.0.0.1."""

    def __init__(
        self, *, answer_status: int = 200, tls: ssl.SSLContext | None = None, bearer: str | None = None
    ) -> None:
        """`tls` serves https (what a bearer credential insists on); with `bearer`, answerCall wants that
        Entra token instead of the HMAC signature."""
        self.access_key = base64.b64encode(b"fake-acs-access-key-32-bytes!!!!").decode()
        self.answer_status = answer_status
        self.tls = tls
        self.bearer = bearer
        self.answers: list[dict[str, Any]] = []  # answerCall bodies, in order
        self.bad_signatures = 0
        self.key_fetches = 0
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """http(s)://127.0.0.1:PORT: ACS_ENDPOINT and the issuer."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def connection_string(self) -> str:
        """A connection string with this fake's key (its endpoint is replaced by ACS_ENDPOINT)."""
        return f"endpoint=https://fake-acs.communication.azure.com/;accesskey={self.access_key}"

    @property
    def openid_url(self) -> str:
        """ACS_OPENID_URL for this fake."""
        return self.base_url + OPENID_PATH

    def env(self, *, audience: bool = False) -> dict[str, str]:
        """The gateway settings that point at this fake (with the JWT checks on when `audience`)."""
        env = {
            "ACS_CONNECTION_STRING": self.connection_string,
            "ACS_ENDPOINT": self.base_url,
            "ACS_OPENID_URL": self.openid_url,
        }
        if audience:
            env["ACS_AUDIENCE"] = RESOURCE_ID
        return env

    def token(
        self,
        *,
        audience: str = RESOURCE_ID,
        lifetime_s: int = 300,
        key: rsa.RSAPrivateKey | None = None,
        kid: str = "acs-1",
    ) -> str:
        """A JWT as ACS signs its callbacks and media upgrades (RS256 by the published key)."""
        now = int(time.time())
        claims = {"iss": self.base_url, "aud": audience, "iat": now, "nbf": now, "exp": now + lifetime_s}
        return jwt.encode(claims, key or self.private_key, algorithm="RS256", headers={"kid": kid})

    async def __aenter__(self) -> FakeAcs:
        app = web.Application()
        app.router.add_post("/calling/callConnections:answer", self._answer)
        app.router.add_get(OPENID_PATH, self._openid)
        app.router.add_get(KEYS_PATH, self._keys)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _signature_ok(self, request: web.Request, body: bytes) -> bool:
        """Check the SDK's HMAC-SHA256 over verb, path and query, date, host and body hash."""
        content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
        if request.headers.get("x-ms-content-sha256") != content_hash:
            return False
        signed = f"POST\n{request.raw_path}\n{request.headers.get('x-ms-date')};{request.host};{content_hash}"
        digest = hmac.new(base64.b64decode(self.access_key), signed.encode(), hashlib.sha256).digest()
        expected = (
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature="
            + base64.b64encode(digest).decode()
        )
        return hmac.compare_digest(request.headers.get("Authorization", ""), expected)

    async def _answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.bearer is not None:
            authorized = request.headers.get("Authorization") == f"Bearer {self.bearer}"
        else:
            authorized = self._signature_ok(request, body)
        if not authorized:
            self.bad_signatures += 1
            return web.json_response({"error": {"code": "Denied", "message": "bad signature"}}, status=401)
        doc = json.loads(body)
        self.answers.append(doc)
        if self.answer_status != 200:
            error = {"error": {"code": "8523", "message": "Invalid request: incoming call context expired"}}
            return web.json_response(error, status=self.answer_status)
        return web.json_response(
            {
                "callConnectionId": f"421f0b00-conn-{len(self.answers)}",
                "serverCallId": "aHR0cHM6Ly9jb252LXVzd2UtMDgu",
                "callbackUri": doc["callbackUri"],
                "callConnectionState": "connecting",
                "correlationId": "d3b0c2a1-1111-2222-3333-444455556666",
            }
        )

    async def _openid(self, _request: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": self.base_url,
                "jwks_uri": self.base_url + KEYS_PATH,
                "id_token_signing_alg_values_supported": ["RS256"],
            }
        )

    async def _keys(self, _request: web.Request) -> web.Response:
        self.key_fetches += 1
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        return web.json_response({"keys": [{**jwk, "kid": "acs-1", "use": "sig", "alg": "RS256"}]})


def incoming_call_event(
    context: str = "eyJ0eXAiOiJKV1QifQ.signed-incoming-call-context",
) -> list[dict[str, Any]]:
    """An Event Grid delivery of Microsoft.Communication.IncomingCall (Event Grid schema)."""
    return [
        {
            "id": "6f0e1a1c-0000-0000-0000-000000000000",
            "topic": TOPIC,
            "subject": "/phonenumber/14255550100",
            "data": {
                "to": {
                    "kind": "phoneNumber",
                    "rawId": "4:+14255550100",
                    "phoneNumber": {"value": "+14255550100"},
                },
                "from": {
                    "kind": "phoneNumber",
                    "rawId": "4:+14255550123",
                    "phoneNumber": {"value": "+14255550123"},
                },
                "serverCallId": "aHR0cHM6Ly9jb252LXVzd2UtMDgu",
                "callerDisplayName": "",
                "incomingCallContext": context,
                "correlationId": "d3b0c2a1-1111-2222-3333-444455556666",
            },
            "eventType": "Microsoft.Communication.IncomingCall",
            "dataVersion": "1.0",
            "metadataVersion": "1",
            "eventTime": "2024-11-15T19:16:10.1234567Z",
        }
    ]


def callback_event(event_type: str, call_connection_id: str = "421f0b00-conn-1") -> list[dict[str, Any]]:
    """A Call Automation CloudEvents delivery of one event."""
    return [
        {
            "id": "b5d7f9a0-0000-0000-0000-000000000001",
            "source": f"calling/callConnections/{call_connection_id}",
            "type": f"Microsoft.Communication.{event_type}",
            "data": {"callConnectionId": call_connection_id, "correlationId": "d3b0c2a1-1111"},
            "time": "2024-11-15T19:16:11.5Z",
            "specversion": "1.0",
            "datacontenttype": "application/json",
            "subject": f"calling/callConnections/{call_connection_id}",
        }
    ]
