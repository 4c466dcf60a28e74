"""SIP registration, client side (RFC 3261 section 10), sans-I/O: the gateway as an extension on a PBX.

`Registration` keeps one binding of our Contact at a registrar alive. It builds the REGISTER requests,
reads the responses (`receive_data(data, now)`, which says whether the message was one of its own), and
runs its timers (`tick(now)` at `next_deadline()`); the I/O sends `data_to_send()` to the registrar and
acts on `events_received()`. Nothing here reads a clock or touches a socket.

Every REGISTER goes to the registrar's domain (Request-URI `sip:host[:port]`), To and From are the
address of record `sip:USERNAME@host`, the Call-ID and From tag stay the same across refreshes and the
CSeq goes up by one per request (RFC 3261 10.2). What it does with the answers:

* 401/407: the first Digest challenge with an algorithm we know (MD5, SHA-256, their -sess variants) is
  answered (`gateway.sip.digest.authorization`); a challenge for the very nonce we just answered, without
  `stale=true`, means the password is wrong: the attempt fails at once, no loop. At most
  `MAX_CHALLENGES` challenges are answered in a row. Later requests (refreshes, the un-REGISTER) carry
  the credentials of the last challenge straight away, with the nonce count going up.
* 423 Interval Too Brief: the request goes out again at once asking for `Min-Expires`.
* 2xx: the binding lasts what the registrar granted: the `expires` parameter of the response's Contact
  that is ours, else its Expires header, else what we asked for. It is refreshed `refresh_delay(granted)`
  later: when a whole client transaction (64*T1 = 32 s, Timer F) still fits before the binding lapses,
  but never before half the granted time (so a 60 s binding is refreshed after 30 s, a 300 s one after
  268 s, a 2 s one after 1 s).
* anything else, no answer within 64*T1 (408), or a transport error (`send_failed`, 503): a
  `RegistrationFailed` event, then a new attempt after `retry_delay(failures)` (30 s, doubling, capped at
  300 s; longer when the registrar sent Retry-After).

Over UDP the request is retransmitted as Timer E says (T1, doubling to T2; T2 once a provisional
response came). `stop(now)` sends the un-REGISTER (Expires: 0 for our Contact only) when a binding may
exist, and the state machine ends in STOPPED once it is answered (or times out).

Transitions (`_TRANSITIONS` checks every one):

    IDLE          --start-->                   REGISTERING
    REGISTERING   --2xx-->                     REGISTERED      (Registered)
    REGISTERING   --failure-->                 RETRY_WAIT      (RegistrationFailed)
    REGISTERED    --refresh timer-->           REFRESHING
    REFRESHING    --2xx-->                     REGISTERED      (Registered, refreshed)
    REFRESHING    --failure-->                 RETRY_WAIT      (RegistrationFailed)
    RETRY_WAIT    --retry timer-->             REGISTERING
    any but IDLE  --stop, binding possible-->  UNREGISTERING
    UNREGISTERING --final answer or timeout--> STOPPED         (Unregistered)
    IDLE, RETRY_WAIT --stop, no binding-->      STOPPED
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Final, TypeAlias

from gateway.sip.digest import ALGORITHMS, authorization, parse_digest
from gateway.sip.message import (
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    bare_host,
    new_branch,
    new_call_id,
    new_tag,
    parse,
)
from gateway.sip.ua import T1, T2, TIMEOUT

__all__ = [
    "DEFAULT_EXPIRES",
    "MAX_CHALLENGES",
    "RETRY_BASE_S",
    "RETRY_CAP_S",
    "UNREGISTER_WAIT_S",
    "Registered",
    "Registration",
    "RegistrationConfig",
    "RegistrationEvent",
    "RegistrationFailed",
    "RegistrationState",
    "Unregistered",
    "refresh_delay",
    "retry_delay",
]

DEFAULT_EXPIRES: Final = 300  # seconds asked for (SIP_REGISTER_EXPIRES)
REFRESH_MARGIN_S: Final = TIMEOUT  # refresh while a whole client transaction still fits before expiry
RETRY_BASE_S: Final = 30.0  # the first retry after a failure ...
RETRY_CAP_S: Final = 300.0  # ... doubling up to this (gentle on a PBX's fail2ban)
MAX_RETRY_AFTER_S: Final = 3600.0  # a registrar's Retry-After is honoured up to this
MAX_CHALLENGES: Final = 3  # challenges answered in a row before the attempt counts as failed
MAX_EXPIRES: Final = 2**31 - 1  # RFC 3261 20.19: delta-seconds
UNREGISTER_WAIT_S: Final = 2.0  # at shutdown, how long the I/O waits for the un-REGISTER's answer


class RegistrationState(Enum):
    """Where the registration stands (see the module docstring for the transitions)."""

    IDLE = auto()  # not started
    REGISTERING = auto()  # a REGISTER is out and no binding is known to exist
    REGISTERED = auto()  # the binding is granted; the refresh timer runs
    REFRESHING = auto()  # the binding is granted and its refresh is out
    RETRY_WAIT = auto()  # the last attempt failed; the retry timer runs
    UNREGISTERING = auto()  # the Expires: 0 REGISTER is out
    STOPPED = auto()  # nothing more happens


_S = RegistrationState
_TRANSITIONS: Final[dict[RegistrationState, frozenset[RegistrationState]]] = {
    _S.IDLE: frozenset({_S.REGISTERING, _S.STOPPED}),
    _S.REGISTERING: frozenset({_S.REGISTERED, _S.RETRY_WAIT, _S.UNREGISTERING}),
    _S.REGISTERED: frozenset({_S.REFRESHING, _S.UNREGISTERING}),
    _S.REFRESHING: frozenset({_S.REGISTERED, _S.RETRY_WAIT, _S.UNREGISTERING}),
    _S.RETRY_WAIT: frozenset({_S.REGISTERING, _S.UNREGISTERING, _S.STOPPED}),
    _S.UNREGISTERING: frozenset({_S.STOPPED}),
    _S.STOPPED: frozenset(),
}


# --- values in and out ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistrationConfig:
    """What a registration needs, as plain values."""

    registrar: SipUri  # sip:host[:port][;transport=udp]; the Request-URI and the domain of our AOR
    username: str  # our AOR's user part and the digest username
    password: str = field(repr=False)
    contact_host: str  # our address for Via and Contact (SIP_PUBLIC_IP or the bound address)
    contact_port: int
    transport: str = "udp"
    expires: int = DEFAULT_EXPIRES
    user_agent: str = "voice-gateway"

    @property
    def registrar_port(self) -> int:
        """Where to send: the registrar URI's port, or 5060."""
        return self.registrar.port or 5060


@dataclass(frozen=True, slots=True)
class Registered:
    """The registrar granted (or refreshed) our binding for `expires` seconds."""

    expires: int
    refreshed: bool = False  # True for a refresh of a binding we already held


@dataclass(frozen=True, slots=True)
class RegistrationFailed:
    """An attempt failed (`status` 408: no answer; 503: transport error); the next comes in `retry_in`."""

    status: int
    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class Unregistered:
    """The un-REGISTER was answered with `status` (408: no answer, 503: transport error): STOPPED."""

    status: int


RegistrationEvent: TypeAlias = Registered | RegistrationFailed | Unregistered


def refresh_delay(granted: int) -> float:
    """Seconds after a grant of `granted` seconds at which the binding is refreshed (see the docstring)."""
    return max(granted / 2, granted - REFRESH_MARGIN_S)


def retry_delay(failures: int, retry_after: float | None = None) -> float:
    """Seconds to wait after the `failures`-th failure in a row (1 for the first)."""
    delay = min(RETRY_BASE_S * (1 << min(max(failures - 1, 0), 16)), RETRY_CAP_S)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
    return delay


# --- internal records ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Credentials:
    header: str  # Authorization | Proxy-Authorization
    challenge: str
    nonce: str
    count: int = 0  # the nonce count of the last request that used them


@dataclass(eq=False, slots=True)
class _Request:
    cseq: int
    branch: str
    expires: int
    data: bytes
    nonce: str | None  # the nonce this request answered, if it carried credentials
    timeout_at: float  # Timer F
    retransmit_at: float | None  # Timer E (UDP only)
    interval: float = T1
    proceeding: bool = False


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _delta_seconds(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return min(int(text.strip()), MAX_EXPIRES)


def _usable(challenge: str) -> dict[str, str] | None:
    params = parse_digest(challenge)
    if params is None or "nonce" not in params or "realm" not in params:
        return None
    if params.get("algorithm", "MD5").upper().removesuffix("-SESS") not in ALGORITHMS:
        return None
    qops = [q.strip().lower() for q in params.get("qop", "").split(",") if q.strip()]
    return params if not qops or "auth" in qops else None


class Registration:
    """One binding at one registrar (see the module docstring). Start it, feed it, tick it, stop it."""

    def __init__(self, config: RegistrationConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        host = _uri_host(config.contact_host)
        self.state = RegistrationState.IDLE
        self.call_id = new_call_id(self._rng, bare_host(host))
        self._call_id_bytes = self.call_id.encode()
        self._tag = new_tag(self._rng)
        registrar = config.registrar
        port = "" if registrar.port is None else f":{registrar.port}"
        transport = "" if config.transport == "udp" else f";transport={config.transport}"
        self.request_uri = f"sip:{registrar.host}{port}{transport}"
        self.aor = f"sip:{config.username}@{registrar.host}"
        self.contact = SipUri.parse(
            f"sip:{config.username}@{host}:{config.contact_port};transport={config.transport}"
        )
        self._via_host = host
        self._expires = config.expires
        self._cseq = 0
        self._request: _Request | None = None
        self._credentials: _Credentials | None = None
        self._challenges = 0
        self._failures = 0
        self._bound = False  # a binding may exist at the registrar (granted once, not yet removed)
        self._wake_at: float | None = None  # the refresh or retry timer
        self._outgoing: list[bytes] = []
        self._events: list[RegistrationEvent] = []
        self.stray = 0  # responses to our Call-ID that answer no request of ours (late, duplicated)
        self.grants = 0  # 2xx that granted (or refreshed) the binding

    # --- the I/O side's interface ------------------------------------------------------------------------

    @property
    def registered(self) -> bool:
        """True while the registrar holds our binding (as far as we know)."""
        return self.state in (RegistrationState.REGISTERED, RegistrationState.REFRESHING)

    def start(self, now: float) -> None:
        """Send the first REGISTER (a no-op unless IDLE)."""
        if self.state is RegistrationState.IDLE:
            self._enter(RegistrationState.REGISTERING)
            self._send(self._expires, now)

    def stop(self, now: float) -> None:
        """Remove our binding (Expires: 0) if one may exist; STOPPED at once otherwise."""
        if self.state in (RegistrationState.STOPPED, RegistrationState.UNREGISTERING):
            return
        self._wake_at = None
        if self._bound or self._request is not None:
            self._enter(RegistrationState.UNREGISTERING)
            self._send(0, now)
        else:
            self._enter(RegistrationState.STOPPED)

    def receive_data(self, data: bytes, now: float) -> bool:
        """One whole message from the network: True when it was a response to our REGISTERs (consumed),
        False when it is someone else's (hand it to the user agent). Never raises."""
        if not data.lstrip(b"\r\n").startswith(b"SIP/2.0") or self._call_id_bytes not in data:
            return False
        try:
            message = parse(data)
            if not isinstance(message, SipResponse) or message.call_id != self.call_id:
                return False
            cseq, method = message.cseq
            branch = message.vias[0].branch
        except SipParseError:
            return False
        if method != "REGISTER":
            return False
        request = self._request
        if request is None or cseq != request.cseq or branch != request.branch:
            self.stray += 1
        else:
            self._on_response(message, request, now)
        return True

    def send_failed(self, now: float, reason: str = "transport error") -> None:
        """The request could not be sent (no route, the registrar's name did not resolve): as a 503."""
        if self._request is not None:
            self._finish(503, reason, now)

    def data_to_send(self) -> list[bytes]:
        """Requests to send to the registrar, in order (drained)."""
        out, self._outgoing = self._outgoing, []
        return out

    def events_received(self) -> list[RegistrationEvent]:
        """What happened, in order (drained)."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When `tick` must run next, or None."""
        request = self._request
        times = [self._wake_at]
        if request is not None:
            times += [request.timeout_at, request.retransmit_at]
        return min((t for t in times if t is not None), default=None)

    def tick(self, now: float) -> None:
        """Run the timers due at `now`: retransmission, transaction timeout, refresh, retry."""
        request = self._request
        if request is not None and now >= request.timeout_at:
            self._finish(408, "no response from the registrar", now)
        elif request is not None and request.retransmit_at is not None and now >= request.retransmit_at:
            self._outgoing.append(request.data)
            request.interval = T2 if request.proceeding else min(2 * request.interval, T2)
            request.retransmit_at = now + request.interval
        if self._wake_at is not None and now >= self._wake_at:
            self._wake_at = None
            if self.state is RegistrationState.REGISTERED:
                self._enter(RegistrationState.REFRESHING)
            else:
                self._enter(RegistrationState.REGISTERING)  # from RETRY_WAIT: no other state has the timer
            self._send(self._expires, now)

    # --- responses ------------------------------------------------------------------------------------

    def _on_response(self, response: SipResponse, request: _Request, now: float) -> None:
        status = response.status
        if status < 200:
            request.proceeding = True  # Timer E: T2 from now on
            return
        if status < 300:
            self._on_success(response, request, now)
            return
        problem: str | None = response.reason or "rejected"
        if status in (401, 407):
            problem = self._answer_challenge(response, request, now)
        elif status == 423:
            problem = self._interval_too_brief(response, request, now)
        if problem is not None:
            retry_after = _delta_seconds((response.headers.get("Retry-After") or "").partition("(")[0])
            self._finish(status, problem, now, retry_after)

    def _on_success(self, response: SipResponse, request: _Request, now: float) -> None:
        self._request = None
        self._challenges = 0
        if self.state is RegistrationState.UNREGISTERING:
            self._stopped(response.status)
            return
        granted = self._granted(response, request.expires)
        if granted <= 0:
            self._bound = False
            self._finish(response.status, "the registrar kept no binding for our Contact", now)
            return
        refreshed = self.state is RegistrationState.REFRESHING
        self._bound = True
        self._failures = 0
        self.grants += 1
        self._enter(RegistrationState.REGISTERED)
        self._wake_at = now + refresh_delay(granted)
        self._events.append(Registered(granted, refreshed))

    def _granted(self, response: SipResponse, requested: int) -> int:
        """The Contact's expires for our URI, else the Expires header, else what we asked for."""
        for value in response.headers.get_list("Contact"):
            try:
                contact = NameAddr.parse(value)
            except SipParseError:
                continue
            if self._is_ours(contact.uri):
                expires = _delta_seconds(contact.param("expires"))
                if expires is not None:
                    return expires
        expires = _delta_seconds(response.headers.get("Expires"))
        return requested if expires is None else expires

    def _is_ours(self, uri: SipUri) -> bool:
        ours = self.contact
        return (
            uri.user == ours.user
            and bare_host(uri.host).lower() == bare_host(ours.host).lower()
            and (uri.port or 5060) == ours.port
        )

    def _answer_challenge(self, response: SipResponse, request: _Request, now: float) -> str | None:
        """Send the request again with credentials; the reason it cannot be, if so."""
        header = "WWW-Authenticate" if response.status == 401 else "Proxy-Authenticate"
        found = next(
            ((value, p) for value in response.headers.get_all(header) if (p := _usable(value)) is not None),
            None,
        )
        if found is None:
            return f"no Digest challenge we can answer in {header}"
        challenge, params = found
        stale = params.get("stale", "").lower() == "true"
        if request.nonce == params["nonce"] and not stale:
            return "credentials rejected (check SIP_USERNAME and SIP_PASSWORD)"
        self._challenges += 1
        if self._challenges > MAX_CHALLENGES:
            return f"challenged {MAX_CHALLENGES} times in a row"
        target = "Proxy-Authorization" if response.status == 407 else "Authorization"
        self._credentials = _Credentials(target, challenge, params["nonce"])
        self._send(request.expires, now)
        return None

    def _interval_too_brief(self, response: SipResponse, request: _Request, now: float) -> str | None:
        """423: send the request again asking for Min-Expires; the reason it cannot be, if so."""
        minimum = _delta_seconds(response.headers.get("Min-Expires"))
        if minimum is None or minimum <= request.expires:
            return f"Interval Too Brief without a usable Min-Expires ({response.headers.get('Min-Expires')})"
        self._expires = minimum
        self._send(minimum, now)
        return None

    def _finish(
        self,
        status: int,
        reason: str,
        now: float,
        retry_after: int | None = None,
    ) -> None:
        """The attempt failed: stop, when un-registering; else wait and try again."""
        self._request = None
        self._credentials = None
        self._challenges = 0
        if self.state is RegistrationState.UNREGISTERING:
            self._stopped(status)
            return
        self._failures += 1
        delay = retry_delay(self._failures, retry_after)
        self._enter(RegistrationState.RETRY_WAIT)
        self._wake_at = now + delay
        self._events.append(RegistrationFailed(status, reason, delay))

    def _stopped(self, status: int) -> None:
        self._request = None
        self._bound = False
        self._enter(RegistrationState.STOPPED)
        self._events.append(Unregistered(status))

    # --- requests -------------------------------------------------------------------------------------

    def _send(self, expires: int, now: float) -> None:
        """A new REGISTER transaction (the previous one, if any, is abandoned)."""
        self._cseq += 1
        branch = new_branch(self._rng)
        via = Via(
            self.config.transport.upper(),
            self._via_host,
            self.config.contact_port,
            (("branch", branch), ("rport", None)),
        )
        headers = Headers(
            [
                ("Via", str(via)),
                ("Max-Forwards", "70"),
                ("From", f"<{self.aor}>;tag={self._tag}"),
                ("To", f"<{self.aor}>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self._cseq} REGISTER"),
                ("Contact", f"<{self.contact}>"),
                ("Expires", str(expires)),
            ]
        )
        nonce = None
        credentials = self._credentials
        if credentials is not None:
            credentials.count += 1
            value = authorization(
                credentials.challenge,
                username=self.config.username,
                password=self.config.password,
                method="REGISTER",
                uri=self.request_uri,
                cnonce=f"{self._rng.getrandbits(64):016x}",
                nc=credentials.count,
            )
            headers.add(credentials.header, value)
            nonce = credentials.nonce
        headers.add("User-Agent", self.config.user_agent)
        data = SipRequest("REGISTER", self.request_uri, headers).serialize()
        retransmit_at = now + T1 if self.config.transport == "udp" else None
        self._request = _Request(self._cseq, branch, expires, data, nonce, now + TIMEOUT, retransmit_at)
        self._outgoing.append(data)

    def _enter(self, state: RegistrationState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError(f"registration: {self.state.name} -> {state.name}")
        self.state = state
