"""HTTP Digest authentication for SIP requests (RFC 3261 22, RFC 2617, RFC 7616, RFC 8760), sans-I/O.

`DigestAuthenticator` challenges (`challenge` -> WWW-Authenticate values for a 401) and checks the
Authorization a client sends back (`verify`). It keeps no state per client: a nonce is the time it was
issued plus an HMAC of that time under a secret, so any later request can be checked against it alone and
a nonce older than `NONCE_TTL_S` is refused as stale (the 401 then says `stale=true`, and the client
retries without asking its user). MD5 and SHA-256 (plain and -sess), qop=auth or no qop (RFC 2069).
A nonce can be replayed within its lifetime: there is no nonce-count tracking, by design (no state).

`authorization` builds the client's header, for tests and a future client side.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Final

__all__ = [
    "ALGORITHMS",
    "NONCE_TTL_S",
    "DigestAuthenticator",
    "DigestVerdict",
    "authorization",
    "digest_response",
    "parse_digest",
]

NONCE_TTL_S: Final = 300.0
_CLOCK_SKEW_S: Final = 1.0
ALGORITHMS: Final = ("MD5", "SHA-256")
_HASHES: Final = {"MD5": "md5", "SHA-256": "sha256"}
_PARAM: Final = re.compile(r'\s*([A-Za-z0-9_\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


class DigestVerdict(Enum):
    """What a request's credentials are worth."""

    OK = "ok"
    MISSING = "missing"  # no Authorization for our realm: challenge
    STALE = "stale"  # right password, expired nonce: challenge with stale=true
    INVALID = "invalid"  # wrong user, password, realm or a forged nonce: challenge (and count it)


def parse_digest(value: str) -> dict[str, str] | None:
    """`Digest a=b, c="d"` -> {"a": "b", "c": "d"} (names lower-cased); None if not a Digest header."""
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        return None
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            return None
        raw = match.group(2)
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params[match.group(1).lower()] = raw
        position = match.end()
    return params


def _hash(algorithm: str, text: str) -> str:
    return hashlib.new(_HASHES[algorithm.upper().removesuffix("-SESS")], text.encode()).hexdigest()


def digest_response(
    *,
    algorithm: str,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    qop: str | None = None,
    nc: str = "",
    cnonce: str = "",
) -> str:
    """The `response` value of RFC 7616 3.4.1 (RFC 2069's when `qop` is None)."""
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.upper().endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop is None:
        return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def authorization(
    challenge: str, *, username: str, password: str, method: str, uri: str, cnonce: str, nc: int = 1
) -> str:
    """The Authorization value answering a WWW-Authenticate `challenge` (qop=auth when offered)."""
    params = parse_digest(challenge)
    if params is None:
        raise ValueError("not a Digest challenge")
    algorithm = params.get("algorithm", "MD5")
    qop = "auth" if "auth" in params.get("qop", "").split(",") else None
    nc_text = f"{nc:08x}"
    response = digest_response(
        algorithm=algorithm,
        username=username,
        realm=params["realm"],
        password=password,
        method=method,
        uri=uri,
        nonce=params["nonce"],
        qop=qop,
        nc=nc_text,
        cnonce=cnonce,
    )
    fields = [
        f'username="{username}"',
        f'realm="{params["realm"]}"',
        f'nonce="{params["nonce"]}"',
        f'uri="{uri}"',
        f'response="{response}"',
        f"algorithm={algorithm}",
    ]
    if qop is not None:
        fields += [f"qop={qop}", f"nc={nc_text}", f'cnonce="{cnonce}"']
    if "opaque" in params:
        fields.append(f'opaque="{params["opaque"]}"')
    return "Digest " + ", ".join(fields)


class DigestAuthenticator:
    """Challenges and checks one realm's single user, statelessly (see the module docstring)."""

    def __init__(
        self,
        realm: str,
        username: str,
        password: str,
        secret: bytes,
        algorithms: Sequence[str] = ("MD5",),
    ) -> None:
        unknown = [a for a in algorithms if a.upper() not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"unsupported digest algorithms {unknown}")
        self.realm = realm
        self._username = username
        self._password = password
        self._secret = secret
        self._algorithms = tuple(a.upper() for a in algorithms)

    def nonce(self, now: float) -> str:
        """A nonce bound to `now`: the issue time in ms (hex) and its HMAC."""
        issued = f"{max(0, int(now * 1000)):x}"
        return f"{issued}.{self._mac(issued)}"

    def _mac(self, issued: str) -> str:
        return hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:32]

    def nonce_age(self, nonce: str, now: float) -> float | None:
        """Seconds since `nonce` was issued by us, or None when we did not issue it."""
        issued, dot, mac = nonce.partition(".")
        if not dot or not re.fullmatch(r"[0-9a-f]{1,16}", issued):
            return None
        if not hmac.compare_digest(mac.encode(), self._mac(issued).encode()):
            return None
        return now - int(issued, 16) / 1000

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, most preferred algorithm first (RFC 8760 4)."""
        nonce = self.nonce(now)
        suffix = ", stale=true" if stale else ""
        return [
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{suffix}'
            for algorithm in self._algorithms
        ]

    def verify(self, method: str, authorizations: Iterable[str], now: float) -> DigestVerdict:
        """Check the request's Authorization values (those for another realm are ignored)."""
        verdict = DigestVerdict.MISSING
        for value in authorizations:
            params = parse_digest(value)
            if params is None or params.get("realm") != self.realm:
                continue
            verdict = self._check(method, params, now)
            if verdict is DigestVerdict.OK:
                return verdict
        return verdict

    def _check(self, method: str, params: dict[str, str], now: float) -> DigestVerdict:
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm.removesuffix("-SESS") not in self._algorithms:
            return DigestVerdict.INVALID
        qop = params.get("qop")
        required = ("username", "nonce", "uri", "response") + (("nc", "cnonce") if qop else ())
        if any(name not in params for name in required) or qop not in (None, "auth"):
            return DigestVerdict.INVALID
        if params["username"] != self._username:
            return DigestVerdict.INVALID
        age = self.nonce_age(params["nonce"], now)
        if age is None:
            return DigestVerdict.INVALID
        expected = digest_response(
            algorithm=algorithm,
            username=self._username,
            realm=self.realm,
            password=self._password,
            method=method,
            uri=params["uri"],
            nonce=params["nonce"],
            qop=qop,
            nc=params.get("nc", ""),
            cnonce=params.get("cnonce", ""),
        )
        if not hmac.compare_digest(expected.encode(), params["response"].lower().encode()):
            return DigestVerdict.INVALID
        if not -_CLOCK_SKEW_S <= age <= NONCE_TTL_S:
            return DigestVerdict.STALE
        return DigestVerdict.OK
