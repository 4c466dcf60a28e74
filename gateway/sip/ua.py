"""The SIP user agent, server side (RFC 3261 8.2, 12-15, 17.2; RFC 3581, 4028, 6026), sans-I/O.

`UserAgent` takes whole messages (`receive(data, peer, now)`: a UDP datagram or a `StreamFramer` output)
and the time (`tick(now)` at `next_deadline()`), and hands back messages to send (`outgoing()`) and events
for the application (`events()`). The application answers calls with commands by Call-ID: `ring`,
`answer`, `reject`, `answer_reinvite`, `hang_up`, and hands them on with `transfer` (REFER). Nothing
here reads a clock or touches a socket.

What it does on its own, so the application never has to:

* every request gets a server transaction: retransmitted requests get the last response again (never a
  second event); a non-2xx final to an INVITE is retransmitted over UDP (Timer G) until its ACK (Timer H);
  a 2xx is retransmitted by the dialog (T1 doubling to T2) until its ACK, and after 64*T1 without one the
  call ends with a BYE (`CallEnded("ack_timeout")`);
* INVITE gets 100 Trying at once; CANCEL before the final answer -> 200 + 487 + `CallCancelled`;
  BYE -> 200 + `CallEnded("bye")`; OPTIONS -> 200 with Allow/Accept/Supported, in or out of a dialog;
* refusals (`Refused` event): 481 for an unknown dialog or transaction, 405 for an unknown method, 416 for
  a URI scheme other than sip/sips/tel, 420 for an unknown `Require`, 415 for a body that is not SDP (or
  is encoded), 482 for a merged INVITE, 500 for an INVITE while another is pending, 503 over
  `max_dialogs`, 401 with a Digest challenge when `digest` is set, 422 for a too-short session interval;
* malformed messages: a `Malformed` event, and a 400 (or 513) with a Warning when its Via can be read;
* responses go where RFC 3261 18.2.2 and RFC 3581 say (`received`/`rport`), on the request's connection
  for TCP/TLS; our BYE follows the dialog's route set to its remote target (Contact);
* session timers (RFC 4028, when `session_expires_s` is set): the interval is answered in the 2xx; when
  the peer refreshes and stops, the call ends (`CallEnded("session_expired")`); when we must refresh, an
  UPDATE goes out at half the interval;
* transfer (RFC 3515): our REFER's answer comes back as `TransferAnswered`, the NOTIFYs of its implicit
  subscription are answered 200 and reported as `TransferProgress` (their sipfrag status); a NOTIFY
  for any other event package gets 489.

Each `IncomingCall` ends in exactly one of `CallCancelled` or `CallEnded`, unless the application itself
ended it with `reject` (or `hang_up` before answering). Everything kept per call is freed when it ends;
`dialogs()` and `transactions()` fall back to 0 (transactions after their absorb timers, at most 64*T1).
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum, auto
from typing import Final, TypeAlias

from gateway.errors import LocalProtocolError
from gateway.sip.digest import DigestAuthenticator, DigestVerdict
from gateway.sip.message import (
    BRANCH_COOKIE,
    Headers,
    NameAddr,
    SipParseError,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    bare_host,
    new_branch,
    new_tag,
    parse,
)

__all__ = [
    "ALLOWED_METHODS",
    "MIN_SE",
    "T1",
    "T2",
    "T4",
    "CallCancelled",
    "CallConfirmed",
    "CallEnded",
    "CallState",
    "DtmfInfo",
    "EndReason",
    "IncomingCall",
    "Malformed",
    "Peer",
    "ReInvite",
    "ReInviteConfirmed",
    "Refused",
    "SipEvent",
    "TransferAnswered",
    "TransferProgress",
    "UaConfig",
    "UserAgent",
    "dtmf_digit",
]

T1: Final = 0.5  # RFC 3261 17.1.1.1: round-trip estimate
T2: Final = 4.0  # the longest retransmission interval
T4: Final = 5.0  # how long a message may linger in the network
TIMEOUT: Final = 64 * T1  # Timers B, F, H, J, L and the wait for an ACK
MIN_SE: Final = 90  # RFC 4028 4: the smallest session interval we accept
ALLOWED_METHODS: Final = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "UPDATE", "NOTIFY")
SDP: Final = "application/sdp"
DTMF_TYPES: Final = ("application/dtmf-relay", "application/dtmf")
_DTMF_CODES: Final = {"10": "*", "11": "#", "12": "A", "13": "B", "14": "C", "15": "D"}
_DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
_URI_SCHEMES: Final = ("sip", "sips", "tel")
_COMPACT_EVERY: Final = 8192
_DIGITS: Final = re.compile(r"[0-9]{1,9}", re.ASCII)
_SIPFRAG_STATUS: Final = re.compile(rb"\s*SIP/2\.0[ \t]+([1-6][0-9]{2})\b", re.ASCII)
REASONS: Final = {
    100: "Trying",
    180: "Ringing",
    183: "Session Progress",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    486: "Busy Here",
    487: "Request Terminated",
    489: "Bad Event",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}


# --- values in and out ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from or goes to."""

    transport: str  # "udp" | "tcp" | "tls"
    host: str
    port: int
    connection: int | None = None  # the transport's connection id for tcp/tls (responses go back on it)


@dataclass(frozen=True, slots=True)
class UaConfig:
    """The user agent's settings, as plain values."""

    host: str  # our address for Via/Contact (SIP_PUBLIC_IP or the bound address)
    port: int
    ports: tuple[tuple[str, int], ...] = ()  # (transport, port) of each listener, when they differ
    user_agent: str = "voice-gateway"
    digest: tuple[str, str, str] | None = None  # (realm, username, password): challenge INVITEs when set
    session_expires_s: int | None = None  # RFC 4028: answer Session-Expires/Min-SE when the peer asks
    max_dialogs: int = 10_000
    # Additions to the brief:
    digest_sha256: bool = False  # also challenge with SHA-256 (first), RFC 8760
    nonce_secret: bytes | None = None  # share it between worker processes; random when None
    ring_timeout_s: float | None = 180.0  # no final answer by then: 480 + CallEnded("ring_timeout")
    # With no route set, send in-dialog requests (our BYE) to the INVITE's source address instead of its
    # Contact host (for callers behind NAT that put a private address in Contact).
    in_dialog_to_source: bool = False


class EndReason(StrEnum):
    """Why a call ended (`CallEnded.reason`)."""

    BYE = "bye"  # the peer sent BYE
    BYE_SENT = "bye_sent"  # our BYE (hang_up) was answered or timed out
    ACK_TIMEOUT = "ack_timeout"  # no ACK for our 200 within 64*T1: we sent BYE
    SESSION_EXPIRED = "session_expired"  # RFC 4028: the session was not refreshed in time; we sent BYE
    RING_TIMEOUT = "ring_timeout"  # the application never answered; we sent 480


@dataclass(frozen=True, slots=True)
class IncomingCall:
    """A new INVITE: answer with `ring`/`answer`, or `reject`. `offer` is None for a late offer."""

    call_id: str
    request_uri: str
    from_uri: str
    to_uri: str
    from_display: str | None
    offer: bytes | None
    peer: Peer
    headers: Headers = field(hash=False)


@dataclass(frozen=True, slots=True)
class CallConfirmed:
    """The ACK for our 200 arrived: media may flow. With a late offer, `answer` is the ACK's SDP."""

    call_id: str
    answer: bytes | None


@dataclass(frozen=True, slots=True)
class CallCancelled:
    """The caller cancelled before we answered (487 sent); the call is gone."""

    call_id: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The call is over (`reason` is an `EndReason`); everything about it is freed."""

    call_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class ReInvite:
    """A re-INVITE or UPDATE (hold, resume, session refresh): call `answer_reinvite` (or `reject`)."""

    call_id: str
    offer: bytes | None


@dataclass(frozen=True, slots=True)
class ReInviteConfirmed:
    """The ACK for our 200 to a re-INVITE; `answer` is its SDP when the re-INVITE had no offer."""

    call_id: str
    answer: bytes | None


@dataclass(frozen=True, slots=True)
class DtmfInfo:
    """A key press sent as SIP INFO (application/dtmf-relay or application/dtmf)."""

    call_id: str
    digit: str


@dataclass(frozen=True, slots=True)
class TransferAnswered:
    """The peer's answer to our REFER (`transfer`): 202 (or another 2xx) when it will try the target,
    else its refusal; None when it never answered (or the call was not up)."""

    call_id: str
    status: int | None


@dataclass(frozen=True, slots=True)
class TransferProgress:
    """A NOTIFY about our REFER (RFC 3515): what the transfer target answered, from its sipfrag body;
    final once `status` >= 200 (2xx: the caller is now talking to the target; hang up)."""

    call_id: str
    status: int

    @property
    def final(self) -> bool:
        """No more progress will come for this transfer."""
        return self.status >= 200


@dataclass(frozen=True, slots=True)
class Refused:
    """We refused a request on our own (481, 405, 420, 415, 503, 401 with wrong credentials, ...)."""

    peer: Peer
    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """A message that could not be parsed (answered 400 when it could be routed, else dropped)."""

    peer: Peer
    reason: str


SipEvent: TypeAlias = (
    IncomingCall
    | CallConfirmed
    | CallCancelled
    | CallEnded
    | ReInvite
    | ReInviteConfirmed
    | DtmfInfo
    | TransferAnswered
    | TransferProgress
    | Refused
    | Malformed
)


class CallState(Enum):
    """Where a call (an INVITE and its dialog) stands."""

    EARLY = auto()  # INVITE received, 100 (maybe 180) sent: the application decides
    ANSWERED = auto()  # 200 sent, retransmitted until the ACK
    CONFIRMED = auto()  # ACK received: the call is up
    ENDING = auto()  # our BYE is out, waiting for its response


class _TxState(Enum):
    PROCEEDING = auto()  # no final response yet
    COMPLETED = auto()  # final sent (non-2xx for INVITE): retransmitted until ACK / absorbing
    CONFIRMED = auto()  # INVITE only: the ACK for a non-2xx arrived (Timer I absorbs more)
    ACCEPTED = auto()  # INVITE only: 2xx sent (RFC 6026), absorbing retransmitted INVITEs


# --- internal records ----------------------------------------------------------------------------------


class _Timer:
    __slots__ = ("action", "cancelled")

    def __init__(self, action: Callable[[float], None]) -> None:
        self.action = action
        self.cancelled = False


def _cancel(*timers: _Timer | None) -> None:
    for timer in timers:
        if timer is not None:
            timer.cancelled = True


@dataclass(eq=False, slots=True)
class _Refusal:
    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    warning: str | None = None
    count: bool = True  # report it as a Refused event


@dataclass(frozen=True, slots=True)
class _Session:
    interval: int
    refresher: str  # "uac" (the peer refreshes) | "uas" (we do)


@dataclass(eq=False, slots=True)
class _ServerTx:
    key: tuple[str, ...]
    method: str
    request: SipRequest
    via: Via  # the request's topmost Via
    source: Peer  # where the request came from
    peer: Peer  # where responses go
    to_tag: str
    state: _TxState = _TxState.PROCEEDING
    last: bytes | None = None
    call_id: str | None = None
    interval: float = T1
    retransmit: _Timer | None = None
    timeout: _Timer | None = None

    @property
    def reliable(self) -> bool:
        return self.source.transport != "udp"


@dataclass(eq=False, slots=True)
class _ClientTx:
    key: tuple[str, str]
    data: bytes
    peer: Peer
    on_done: Callable[[int | None, float], None]  # final status (None: timed out), now
    interval: float = T1
    proceeding: bool = False
    retransmit: _Timer | None = None
    timeout: _Timer | None = None


@dataclass(eq=False, slots=True)
class _Pending2xx:
    data: bytes
    peer: Peer
    cseq: int
    initial: bool
    interval: float = T1
    retransmit: _Timer | None = None
    deadline: _Timer | None = None


@dataclass(eq=False, slots=True)
class _Call:
    call_id: str
    invite_key: tuple[str, ...]
    local_tag: str
    remote_tag: str
    local_header: str  # the INVITE's To with our tag: our From in requests we send
    remote_header: str  # the INVITE's From: our To
    remote_target: str  # the peer's Contact URI
    route_set: list[str]
    peer: Peer  # where the INVITE came from
    remote_cseq: int
    allows_update: bool
    state: CallState = CallState.EARLY
    local_cseq: int = 0
    session: _Session | None = None
    pending: _Pending2xx | None = None  # our 2xx waiting for its ACK
    reinvite: tuple[str, ...] | None = None  # a re-INVITE waiting for answer_reinvite
    update: tuple[str, ...] | None = None  # an UPDATE with an offer waiting for answer_reinvite
    update_session: _Session | None = None
    refreshing: bool = False  # our UPDATE refresh is out
    hangup_requested: bool = False  # hang_up before the ACK: BYE once it comes
    refer_to: str | None = None  # transfer before the ACK: the REFER goes once it comes
    reported: bool = False  # CallEnded already emitted
    ring_timer: _Timer | None = None
    session_timer: _Timer | None = None


# --- helpers -------------------------------------------------------------------------------------------


def _server_key(via: Via, request: SipRequest, method: str | None = None) -> tuple[str, ...]:
    """RFC 3261 17.2.3: branch, sent-by and method (ACK matches INVITE); RFC 2543 peers by dialog ids."""
    method = method or ("INVITE" if request.method == "ACK" else request.method)
    branch = via.branch
    if branch and branch.startswith(BRANCH_COOKIE):
        return (branch, via.host.lower(), str(via.port), method)
    return ("", request.call_id, str(request.cseq[0]), request.from_.tag or "", str(via), method)


def _response_peer(via: Via, source: Peer) -> Peer:
    """Where a response goes: the same connection (TCP/TLS), else RFC 3261 18.2.2 with RFC 3581."""
    if source.transport != "udp":
        return source
    if via.rport is not None:
        return source
    # `received` is always the source address (we stamp it), sent with the Via's port.
    return Peer("udp", source.host, via.port or 5060)


def _with_tag(value: str, tag: str) -> str:
    try:
        if NameAddr.parse(value).tag is not None:
            return value
    except SipParseError:
        return value
    return f"{value};tag={tag}"


def _phrase(text: str) -> str:
    """A reason phrase or warning text safe to put on the wire."""
    cleaned = re.sub(r"[\x00-\x1f\x7f\"\\]", " ", text).strip()
    return cleaned[:120] or "Error"


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _option_tags(request: SipRequest, name: str) -> set[str]:
    return {tag.lower() for tag in request.headers.get_list(name)}


def dtmf_digit(content_type: str | None, body: bytes) -> str | None:
    """The key in an INFO body (`Signal=5` for application/dtmf-relay, `5` for application/dtmf)."""
    text = body.decode("utf-8", "replace")
    value: str | None = None
    if content_type == "application/dtmf-relay":
        for line in text.splitlines():
            name, _, rest = line.partition("=")
            if name.strip().lower() == "signal":
                value = rest.strip()
                break
    elif content_type == "application/dtmf":
        value = text.strip()
    if value is None:
        return None
    value = _DTMF_CODES.get(value, value).upper()
    return value if value in _DTMF_DIGITS else None


class UserAgent:
    """The server-side SIP user agent core (see the module docstring). Feed it, drain it, tick it."""

    def __init__(self, config: UaConfig, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._host = _uri_host(config.host)
        self._ports = dict(config.ports)
        self._server: dict[tuple[str, ...], _ServerTx] = {}
        self._client: dict[tuple[str, str], _ClientTx] = {}
        self._calls: dict[str, _Call] = {}
        self._outgoing: list[tuple[bytes, Peer]] = []
        self._events: list[SipEvent] = []
        self._heap: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._digest: DigestAuthenticator | None = None
        if config.digest is not None:
            realm, username, password = config.digest
            secret = config.nonce_secret or self._rng.randbytes(32)
            algorithms = ("SHA-256", "MD5") if config.digest_sha256 else ("MD5",)
            self._digest = DigestAuthenticator(realm, username, password, secret, algorithms)
        self._supported = ("timer",) if config.session_expires_s is not None else ()
        self.stale_commands = 0  # commands for calls already gone: expected races, not errors
        self.dropped = 0  # stray ACKs and responses, dropped silently

    # --- the I/O side's interface ------------------------------------------------------------------------

    def receive(self, data: bytes, peer: Peer, now: float) -> None:
        """One whole message from `peer` (a datagram or a `StreamFramer` output); never raises on garbage."""
        try:
            message = parse(data)
        except SipParseError as error:
            self._on_malformed(error, peer)
            return
        if isinstance(message, SipResponse):
            self._on_response(message, now)
        else:
            self._on_request(message, peer, now)

    def outgoing(self) -> list[tuple[bytes, Peer]]:
        """Messages to send, in order (drained): UDP to (host, port), TCP/TLS on `peer.connection`."""
        out, self._outgoing = self._outgoing, []
        return out

    def events(self) -> list[SipEvent]:
        """Events for the application, in order (drained)."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        """When `tick` must run next, or None when no timer is running."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def tick(self, now: float) -> None:
        """Run every timer due at `now` (retransmissions, timeouts)."""
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if not timer.cancelled:
                timer.cancelled = True
                timer.action(now)

    def dialogs(self) -> int:
        """Live calls (early or confirmed dialogs), for leak checks."""
        return len(self._calls)

    def transactions(self) -> int:
        """Live server and client transactions, for leak checks."""
        return len(self._server) + len(self._client)

    # --- commands -------------------------------------------------------------------------------------

    def ring(self, call_id: str) -> None:
        """180 Ringing (a no-op once the call is answered or gone)."""
        call, tx = self._early(call_id)
        if call is not None and tx is not None:
            self._respond(tx, 180, 0.0, headers=self._dialog_headers(tx))

    def answer(self, call_id: str, sdp: bytes, now: float) -> None:
        """200 OK with `sdp` (our answer, or our offer after a late offer), retransmitted until the ACK."""
        call, tx = self._early(call_id)
        if call is None or tx is None:
            return
        headers = [*self._dialog_headers(tx), *self._capabilities(), *self._session_headers(call.session)]
        if sdp:
            headers.append(("Content-Type", SDP))
        self._respond(tx, 200, now, headers=headers, body=sdp)
        call.state = CallState.ANSWERED
        _cancel(call.ring_timer)
        self._await_ack(call, tx, now, initial=True)
        self._arm_session(call, call.session, now)

    def reject(self, call_id: str, status: int, reason: str | None = None, now: float = 0.0) -> None:
        """A final 3xx-6xx: to the INVITE while it rings (the call is then gone, no event follows), or
        to a pending re-INVITE/UPDATE (the call goes on)."""
        if not 300 <= status <= 699:
            raise LocalProtocolError(f"reject needs a final status 300-699, not {status}")
        call = self._calls.get(call_id)
        if call is None:
            self.stale_commands += 1
        elif call.state is CallState.EARLY:
            tx = self._server.get(call.invite_key)
            if tx is not None and tx.state is _TxState.PROCEEDING:
                self._respond(tx, status, now, reason=reason)
            self._forget(call, now)
        elif (tx := self._pending_offer(call)) is not None:
            call.reinvite = call.update = None
            self._respond(tx, status, now, reason=reason)
        else:
            self.stale_commands += 1

    def answer_reinvite(self, call_id: str, sdp: bytes, now: float) -> None:
        """200 OK with `sdp` to the pending re-INVITE (retransmitted until its ACK) or UPDATE."""
        call = self._calls.get(call_id)
        tx = None if call is None else self._pending_offer(call)
        if call is None or tx is None:
            self.stale_commands += 1
            return
        session = call.update_session if tx.method == "UPDATE" else self._session_or_none(tx.request)
        headers = [("Contact", self._contact(tx)), *self._capabilities(), *self._session_headers(session)]
        if sdp:
            headers.append(("Content-Type", SDP))
        call.reinvite = call.update = None
        self._respond(tx, 200, now, headers=headers, body=sdp)
        if tx.method == "INVITE":
            self._await_ack(call, tx, now, initial=False)
        self._arm_session(call, session, now)

    def transfer(self, call_id: str, target: str, now: float) -> None:
        """Blind transfer (RFC 3515): a REFER asking the peer to call `target`, which goes out exactly as
        given (a `tel:` URI is not rewritten into a SIP one). `TransferAnswered` follows with the REFER's
        answer, then a `TransferProgress` for each NOTIFY; hang up once one is final and 2xx. Asked for
        between our 200 and its ACK, the REFER waits for the ACK (no request in a dialog before it)."""
        call = self._calls.get(call_id)
        if call is not None and call.state is CallState.ANSWERED and not call.hangup_requested:
            call.refer_to = target
            return
        if call is None or call.state is not CallState.CONFIRMED:
            self.stale_commands += 1
            self._events.append(TransferAnswered(call_id, None))
            return
        headers = [
            ("Refer-To", target if target.startswith("<") else f"<{target}>"),
            ("Referred-By", f"<sip:{self._host}:{self._port(call.peer.transport)}>"),
            ("Contact", self._contact_for(call.peer.transport)),
        ]

        def answered(status: int | None, _now: float) -> None:
            self._events.append(TransferAnswered(call_id, status))

        self._send_request(call, "REFER", now, answered, headers)

    def hang_up(self, call_id: str, now: float) -> None:
        """End the call from our side: BYE once confirmed (after the ACK if it is still due), 480 while it
        rings. `CallEnded("bye_sent")` follows once the BYE is answered or times out."""
        call = self._calls.get(call_id)
        if call is None:
            self.stale_commands += 1
        elif call.state is CallState.EARLY:
            self.reject(call_id, 480, None, now)
        elif call.state is CallState.ANSWERED:
            call.hangup_requested = True  # RFC 3261 15: no BYE before the ACK (or its timeout)
        elif call.state is CallState.CONFIRMED:
            self._send_bye(call, now)

    # --- receiving ------------------------------------------------------------------------------------

    def _on_malformed(self, error: SipParseError, peer: Peer) -> None:
        self._events.append(Malformed(peer, error.reason))
        request = error.partial
        if not isinstance(request, SipRequest) or request.method == "ACK":
            return
        try:
            via = Via.parse(request.headers.get_list("Via")[0])
        except (SipParseError, IndexError):
            return
        response = self._response(
            request, via, peer, error.status, to_tag=new_tag(self._rng), warning=error.reason
        )
        self._outgoing.append((response.serialize(), _response_peer(via, peer)))

    def _on_response(self, response: SipResponse, now: float) -> None:
        tx = self._client.get((response.vias[0].branch or "", response.cseq[1]))
        if tx is None:
            self.dropped += 1
        elif response.status < 200:
            tx.proceeding = True
        else:
            self._finish_client(tx, response.status, now)

    def _on_request(self, request: SipRequest, peer: Peer, now: float) -> None:
        via = request.vias[0]
        key = _server_key(via, request)
        if request.method == "ACK":
            self._on_ack(request, key, now)
            return
        existing = self._server.get(key)
        if existing is not None:  # a retransmission: the last response again, nothing new
            if existing.last is not None and existing.state is not _TxState.ACCEPTED:  # RFC 6026: absorbed
                self._outgoing.append((existing.last, existing.peer))
            return
        tx = _ServerTx(key, request.method, request, via, peer, _response_peer(via, peer), new_tag(self._rng))
        self._server[key] = tx
        try:
            self._dispatch(tx, now)
        except SipParseError as error:  # a header only this request's handling reads (Contact, Route, ...)
            self._events.append(Malformed(peer, error.reason))
            if tx.state is _TxState.PROCEEDING:
                self._respond(tx, 400, now, warning=error.reason)

    def _dispatch(self, tx: _ServerTx, now: float) -> None:
        request = tx.request
        refusal = self._screen(request)
        if refusal is not None:
            self._refuse(tx, refusal, now)
        elif request.method == "CANCEL":
            self._on_cancel(tx, now)
        elif request.to.tag is not None:
            self._in_dialog(tx, request.to.tag, now)
        elif request.method == "INVITE":
            self._on_invite(tx, now)
        elif request.method == "OPTIONS":
            self._respond(tx, 200, now, headers=self._capabilities())
        else:  # BYE, INFO, UPDATE, NOTIFY outside any dialog
            self._refuse(tx, _Refusal(481), now)

    def _screen(self, request: SipRequest) -> _Refusal | None:
        """RFC 3261 8.2.1-8.2.2: method, URI scheme, required extensions (never for CANCEL)."""
        if request.method not in ALLOWED_METHODS:
            return _Refusal(405, headers=(("Allow", ", ".join(ALLOWED_METHODS)),))
        if request.method == "CANCEL":
            return None
        if request.uri.partition(":")[0].lower() not in _URI_SCHEMES:
            return _Refusal(416)
        unsupported = sorted(_option_tags(request, "Require") - set(self._supported))
        if unsupported:
            return _Refusal(420, headers=(("Unsupported", ", ".join(unsupported)),))
        return None

    def _on_invite(self, tx: _ServerTx, now: float) -> None:
        request = tx.request
        if request.call_id in self._calls:  # RFC 3261 8.2.2.2: a merged request (a fork come back)
            self._refuse(tx, _Refusal(482), now)
            return
        refusal = self._check_invite(request, now)
        session = self._session(request)
        if refusal is None and isinstance(session, _Refusal):
            refusal = session
        if refusal is not None:
            self._refuse(tx, refusal, now)
            return
        call = self._new_call(tx, session if isinstance(session, _Session) else None)
        self._respond(tx, 100, now)
        if self.config.ring_timeout_s is not None:
            call.ring_timer = self._at(
                now + self.config.ring_timeout_s, lambda t: self._ring_timeout(call, t)
            )
        from_ = request.from_
        self._events.append(
            IncomingCall(
                call.call_id,
                request.uri,
                str(from_.uri),
                str(request.to.uri),
                from_.display,
                request.body or None,
                tx.source,
                request.headers.copy(),
            )
        )

    def _check_invite(self, request: SipRequest, now: float) -> _Refusal | None:
        if len(self._calls) >= self.config.max_dialogs:
            return _Refusal(503, warning="too many calls")
        if self._digest is not None:
            verdict = self._digest.verify("INVITE", request.headers.get_all("Authorization"), now)
            if verdict is not DigestVerdict.OK:
                challenge = self._digest.challenge(now, stale=verdict is DigestVerdict.STALE)
                return _Refusal(
                    401,
                    headers=tuple(("WWW-Authenticate", value) for value in challenge),
                    count=verdict is DigestVerdict.INVALID,
                )
        return self._check_body(request)

    def _check_body(self, request: SipRequest) -> _Refusal | None:
        if not request.body:
            return None
        if request.content_type != SDP:
            return _Refusal(415, headers=(("Accept", SDP),))
        if any(coding.lower() != "identity" for coding in request.headers.get_list("Content-Encoding")):
            return _Refusal(415, headers=(("Accept-Encoding", "identity"),))
        return None

    def _new_call(self, tx: _ServerTx, session: _Session | None) -> _Call:
        request = tx.request
        contacts = request.headers.get_list("Contact")
        target = str(NameAddr.parse(contacts[0]).uri) if contacts else None
        routes = request.headers.get_list("Record-Route")
        for route in routes:
            NameAddr.parse(route)  # an unreadable route set is a 400, now rather than at BYE time
        call = _Call(
            call_id=request.call_id,
            invite_key=tx.key,
            local_tag=tx.to_tag,
            remote_tag=request.from_.tag or "",
            local_header=_with_tag(request.headers.get("To") or "", tx.to_tag),
            remote_header=request.headers.get("From") or "",
            remote_target=target or f"sip:{_uri_host(tx.source.host)}:{tx.source.port}",
            route_set=routes,
            peer=tx.source,
            remote_cseq=request.cseq[0],
            allows_update="UPDATE" in {m.upper() for m in request.headers.get_list("Allow")},
            session=session,
        )
        self._calls[call.call_id] = call
        tx.call_id = call.call_id
        return call

    def _on_cancel(self, tx: _ServerTx, now: float) -> None:
        invite = self._server.get(_server_key(tx.via, tx.request, "INVITE"))
        if invite is None:
            self._refuse(tx, _Refusal(481), now)
            return
        tx.to_tag = invite.to_tag
        self._respond(tx, 200, now)
        if invite.state is not _TxState.PROCEEDING:
            return  # RFC 3261 9.2: a final answer was already sent; the CANCEL changes nothing
        self._respond(invite, 487, now)
        call = self._calls.get(invite.call_id or "")
        if call is None:
            return
        if call.invite_key == invite.key:
            self._forget(call, now)
            self._events.append(CallCancelled(call.call_id))
        elif call.reinvite == invite.key:
            call.reinvite = None

    def _on_ack(self, request: SipRequest, key: tuple[str, ...], now: float) -> None:
        tx = self._server.get(key)
        if tx is not None and tx.state in (_TxState.COMPLETED, _TxState.CONFIRMED):
            if tx.state is _TxState.COMPLETED:  # the ACK for our non-2xx: Timer I absorbs copies
                tx.state = _TxState.CONFIRMED
                _cancel(tx.retransmit, tx.timeout)
                self._expire(tx, now, 0.0 if tx.reliable else T4)
            return
        call = self._calls.get(request.call_id)
        pending = None if call is None else call.pending
        if (
            call is None
            or pending is None
            or request.to.tag != call.local_tag
            or request.cseq[0] != pending.cseq
        ):
            self.dropped += 1  # an ACK for nothing we know (or a copy): dropped silently
            return
        call.pending = None
        _cancel(pending.retransmit, pending.deadline)
        if not pending.initial:
            self._events.append(ReInviteConfirmed(call.call_id, request.body or None))
            return
        call.state = CallState.CONFIRMED
        if call.hangup_requested:
            self._send_bye(call, now)
        else:
            self._events.append(CallConfirmed(call.call_id, request.body or None))
            if call.refer_to is not None:
                target, call.refer_to = call.refer_to, None
                self.transfer(call.call_id, target, now)

    def _in_dialog(self, tx: _ServerTx, to_tag: str, now: float) -> None:
        request = tx.request
        call = self._calls.get(request.call_id)
        if call is None or call.local_tag != to_tag or call.remote_tag != (request.from_.tag or ""):
            self._refuse(tx, _Refusal(481), now)
            return
        tx.call_id = call.call_id
        number = request.cseq[0]
        if number <= call.remote_cseq:  # RFC 3261 12.2.2
            self._refuse(tx, _Refusal(500, warning="CSeq out of order"), now)
            return
        call.remote_cseq = number
        if call.state is CallState.ENDING and request.method != "BYE":
            self._refuse(tx, _Refusal(481, warning="the call is ending"), now)
        elif request.method == "BYE":
            self._on_bye(tx, call, now)
        elif request.method == "INFO":
            self._on_info(tx, call, now)
        elif request.method == "NOTIFY":
            self._on_notify(tx, call, now)
        elif request.method in ("INVITE", "UPDATE"):
            self._on_offer(tx, call, now)
        else:  # OPTIONS inside the dialog
            self._respond(tx, 200, now, headers=self._capabilities())

    def _on_bye(self, tx: _ServerTx, call: _Call, now: float) -> None:
        self._respond(tx, 200, now)
        if call.state is CallState.EARLY:  # a BYE in an early dialog also ends the INVITE
            invite = self._server.get(call.invite_key)
            if invite is not None and invite.state is _TxState.PROCEEDING:
                self._respond(invite, 487, now)
        self._end(call, EndReason.BYE, now)

    def _on_info(self, tx: _ServerTx, call: _Call, now: float) -> None:
        request = tx.request
        if request.body and request.content_type not in DTMF_TYPES:
            self._refuse(tx, _Refusal(415, headers=(("Accept", ", ".join(DTMF_TYPES)),)), now)
            return
        self._respond(tx, 200, now)
        digit = dtmf_digit(request.content_type, request.body) if request.body else None
        if digit is not None:
            self._events.append(DtmfInfo(call.call_id, digit))

    def _on_notify(self, tx: _ServerTx, call: _Call, now: float) -> None:
        """A NOTIFY in the dialog: only the implicit subscription of our REFER exists (RFC 3515 2.4.4)."""
        request = tx.request
        event = (request.headers.get("Event") or "").partition(";")[0].strip().lower()
        if event != "refer":
            self._refuse(tx, _Refusal(489, headers=(("Allow-Events", "refer"),)), now)
            return
        self._respond(tx, 200, now)
        match = _SIPFRAG_STATUS.match(request.body)
        if match is not None:
            self._events.append(TransferProgress(call.call_id, int(match.group(1))))

    def _on_offer(self, tx: _ServerTx, call: _Call, now: float) -> None:
        """A re-INVITE or an UPDATE: hold/resume or a session refresh."""
        request = tx.request
        is_invite = request.method == "INVITE"
        if call.refreshing:  # glare with our UPDATE (RFC 3311 5.2)
            self._refuse(tx, _Refusal(491), now)
            return
        busy = call.reinvite is not None or call.update is not None or call.pending is not None
        if busy or (is_invite and call.state is not CallState.CONFIRMED):  # RFC 3261 14.2
            retry = ("Retry-After", str(self._rng.randint(0, 10)))
            self._refuse(tx, _Refusal(500, headers=(retry,), warning="another offer is pending"), now)
            return
        session = self._session(request)
        refusal = self._check_body(request) or (session if isinstance(session, _Refusal) else None)
        if refusal is not None:
            self._refuse(tx, refusal, now)
            return
        session = session if isinstance(session, _Session) else None
        if not is_invite and not request.body:  # an UPDATE that only refreshes the session
            self._respond(tx, 200, now, headers=[*self._capabilities(), *self._session_headers(session)])
            self._arm_session(call, session, now)
            return
        if is_invite:
            call.reinvite = tx.key
            self._respond(tx, 100, now)
        else:
            call.update, call.update_session = tx.key, session
        self._events.append(ReInvite(call.call_id, request.body or None))

    # --- responding -----------------------------------------------------------------------------------

    def _response(
        self,
        request: SipRequest,
        via: Via,
        source: Peer,
        status: int,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        warning: str | None = None,
    ) -> SipResponse:
        """RFC 3261 8.2.6: Via (stamped), From, To (tagged), Call-ID, CSeq copied from the request."""
        out = Headers()
        out.add("Via", str(via.stamped(source.host, source.port)))
        for value in request.headers.get_list("Via")[1:]:
            out.add("Via", value)
        for name in ("From", "To", "Call-ID", "CSeq"):
            copied = request.headers.get(name)
            if copied is not None:
                out.add(
                    name, _with_tag(copied, to_tag) if name == "To" and to_tag and status > 100 else copied
                )
        timestamp = request.headers.get("Timestamp")
        if status == 100 and timestamp is not None:
            out.add("Timestamp", timestamp)
        for name, value in headers:
            out.add(name, value)
        out.add("Server", self.config.user_agent)
        if warning is not None:
            out.add("Warning", f'399 {self._host} "{_phrase(warning)}"')
        phrase = _phrase(reason) if reason else REASONS.get(status, "Unknown")
        return SipResponse(status, phrase, out, body)

    def _respond(
        self,
        tx: _ServerTx,
        status: int,
        now: float,
        *,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        warning: str | None = None,
    ) -> None:
        """Send a response in `tx` and move it on (RFC 3261 17.2.1, 17.2.2; RFC 6026)."""
        response = self._response(
            tx.request,
            tx.via,
            tx.source,
            status,
            reason=reason,
            to_tag=tx.to_tag,
            headers=headers,
            body=body,
            warning=warning,
        )
        tx.last = response.serialize()
        self._outgoing.append((tx.last, tx.peer))
        if status < 200:
            return
        if tx.method != "INVITE":
            tx.state = _TxState.COMPLETED  # Timer J absorbs retransmitted requests
            self._expire(tx, now, 0.0 if tx.reliable else TIMEOUT)
        elif status < 300:
            tx.state = _TxState.ACCEPTED  # Timer L; the dialog retransmits the 2xx itself
            self._expire(tx, now, TIMEOUT)
        else:
            tx.state = _TxState.COMPLETED
            if not tx.reliable:
                tx.retransmit = self._at(now + T1, lambda t: self._timer_g(tx, t))
            tx.timeout = self._at(now + TIMEOUT, lambda t: self._drop_server(tx))  # Timer H

    def _refuse(self, tx: _ServerTx, refusal: _Refusal, now: float) -> None:
        self._respond(
            tx, refusal.status, now, reason=refusal.reason, headers=refusal.headers, warning=refusal.warning
        )
        if refusal.count:
            reason = refusal.warning or REASONS.get(refusal.status, "refused")
            self._events.append(Refused(tx.source, refusal.status, reason))

    def _timer_g(self, tx: _ServerTx, now: float) -> None:
        if tx.state is _TxState.COMPLETED and tx.last is not None:
            self._outgoing.append((tx.last, tx.peer))
            tx.interval = min(2 * tx.interval, T2)
            tx.retransmit = self._at(now + tx.interval, lambda t: self._timer_g(tx, t))

    def _expire(self, tx: _ServerTx, now: float, delay: float) -> None:
        """Keep `tx` for `delay` seconds to absorb retransmissions, then drop it (at once when 0)."""
        _cancel(tx.timeout)
        if delay <= 0.0:
            self._drop_server(tx)
        else:
            tx.timeout = self._at(now + delay, lambda t: self._drop_server(tx))

    def _drop_server(self, tx: _ServerTx, now: float = 0.0) -> None:
        _cancel(tx.retransmit, tx.timeout)
        if self._server.get(tx.key) is tx:
            del self._server[tx.key]

    def _contact(self, tx: _ServerTx) -> str:
        if tx.request.uri.lower().startswith("sips:"):
            return f"<sips:{self._host}:{self._port(tx.source.transport)}>"
        return self._contact_for(tx.source.transport)

    def _contact_for(self, transport: str) -> str:
        return f"<sip:{self._host}:{self._port(transport)};transport={transport}>"

    def _port(self, transport: str) -> int:
        """The port of our listener for `transport` (the first listener's when there is none of it)."""
        return self._ports.get(transport, self.config.port)

    def _dialog_headers(self, tx: _ServerTx) -> list[tuple[str, str]]:
        """Contact and the copied Record-Route of a dialog-creating response (RFC 3261 12.1.1)."""
        headers = [("Contact", self._contact(tx))]
        headers += [("Record-Route", value) for value in tx.request.headers.get_all("Record-Route")]
        return headers

    def _capabilities(self) -> list[tuple[str, str]]:
        headers = [
            ("Allow", ", ".join(ALLOWED_METHODS)),
            ("Accept", SDP),
            ("Accept-Encoding", "identity"),
            ("Accept-Language", "en"),
        ]
        if self._supported:
            headers.append(("Supported", ", ".join(self._supported)))
        return headers

    # --- dialogs --------------------------------------------------------------------------------------

    def _early(self, call_id: str) -> tuple[_Call | None, _ServerTx | None]:
        call = self._calls.get(call_id)
        tx = None if call is None else self._server.get(call.invite_key)
        if (
            call is None
            or call.state is not CallState.EARLY
            or tx is None
            or tx.state is not _TxState.PROCEEDING
        ):
            self.stale_commands += 1
            return None, None
        return call, tx

    def _pending_offer(self, call: _Call) -> _ServerTx | None:
        """The re-INVITE or UPDATE waiting for the application's answer, if any."""
        for key in (call.reinvite, call.update):
            tx = None if key is None else self._server.get(key)
            if tx is not None and tx.state is _TxState.PROCEEDING:
                return tx
        return None

    def _await_ack(self, call: _Call, tx: _ServerTx, now: float, *, initial: bool) -> None:
        """RFC 3261 13.3.1.4: retransmit the 2xx at T1 doubling to T2 until the ACK, for 64*T1."""
        assert tx.last is not None
        pending = _Pending2xx(tx.last, tx.peer, tx.request.cseq[0], initial)
        pending.retransmit = self._at(now + T1, lambda t: self._retransmit_2xx(call, pending, t))
        pending.deadline = self._at(now + TIMEOUT, lambda t: self._ack_timeout(call, pending, t))
        call.pending = pending

    def _retransmit_2xx(self, call: _Call, pending: _Pending2xx, now: float) -> None:
        if call.pending is pending:
            self._outgoing.append((pending.data, pending.peer))
            pending.interval = min(2 * pending.interval, T2)
            pending.retransmit = self._at(
                now + pending.interval, lambda t: self._retransmit_2xx(call, pending, t)
            )

    def _ack_timeout(self, call: _Call, pending: _Pending2xx, now: float) -> None:
        if call.pending is not pending or self._calls.get(call.call_id) is not call:
            return
        call.pending = None
        _cancel(pending.retransmit)
        if call.refer_to is not None:  # the transfer never went: say so
            call.refer_to = None
            self._events.append(TransferAnswered(call.call_id, None))
        if not call.hangup_requested:
            self._report_end(call, EndReason.ACK_TIMEOUT)
        self._send_bye(call, now)

    def _ring_timeout(self, call: _Call, now: float) -> None:
        if self._calls.get(call.call_id) is call and call.state is CallState.EARLY:
            self.reject(call.call_id, 480, None, now)
            self._events.append(CallEnded(call.call_id, EndReason.RING_TIMEOUT))

    def _report_end(self, call: _Call, reason: EndReason) -> None:
        if not call.reported:
            call.reported = True
            self._events.append(CallEnded(call.call_id, reason))

    def _finish_offers(self, call: _Call, now: float) -> None:
        """Answer a re-INVITE/UPDATE still waiting when the dialog ends (RFC 3261 15.1.2: 487)."""
        while (tx := self._pending_offer(call)) is not None:
            call.reinvite = call.update = None
            self._respond(tx, 487, now)

    def _forget(self, call: _Call, now: float) -> None:
        """Free the call without any event (the application ended it, or it was cancelled)."""
        self._finish_offers(call, now)
        _cancel(call.ring_timer, call.session_timer)
        if call.pending is not None:
            _cancel(call.pending.retransmit, call.pending.deadline)
            call.pending = None
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]

    def _end(self, call: _Call, reason: EndReason, now: float) -> None:
        self._forget(call, now)
        self._report_end(call, reason)

    def _send_bye(self, call: _Call, now: float) -> None:
        self._finish_offers(call, now)
        _cancel(call.ring_timer, call.session_timer)
        if call.pending is not None:  # a re-INVITE's 200 still unacknowledged: the dialog is going anyway
            _cancel(call.pending.retransmit, call.pending.deadline)
            call.pending = None
        call.state = CallState.ENDING
        self._send_request(call, "BYE", now, lambda status, t: self._bye_done(call, t))

    def _bye_done(self, call: _Call, now: float) -> None:
        if self._calls.get(call.call_id) is call:
            self._forget(call, now)
            self._report_end(call, EndReason.BYE_SENT)

    # --- session timers (RFC 4028) --------------------------------------------------------------------

    def _session(self, request: SipRequest) -> _Session | _Refusal | None:
        """The session interval to answer `request` with, a 422, or None (no session timer)."""
        ours = self.config.session_expires_s
        if ours is None:
            return None
        peer_timer = "timer" in _option_tags(request, "Supported") | _option_tags(request, "Require")
        requested: int | None = None
        refresher: str | None = None
        value = request.headers.get("Session-Expires")
        if value is not None:
            delta, _, params = value.partition(";")
            if _DIGITS.fullmatch(delta.strip()):
                requested = int(delta)
                match = re.search(r"refresher\s*=\s*(uac|uas)", params, re.IGNORECASE)
                refresher = match.group(1).lower() if match else None
        min_se_text = (request.headers.get("Min-SE") or "").partition(";")[0].strip()
        min_se = max(MIN_SE, int(min_se_text) if _DIGITS.fullmatch(min_se_text) else 0)
        if requested is not None and requested < MIN_SE:
            if peer_timer:
                return _Refusal(422, headers=(("Min-SE", str(MIN_SE)),))
            requested = MIN_SE  # RFC 4028 errata 1687: raise it rather than fail the call
        if requested is None and not peer_timer:
            return None
        interval = max(min(requested or ours, max(ours, MIN_SE)), min_se)
        if not peer_timer:
            refresher = "uas"  # RFC 4028 9: a peer without the extension cannot refresh
        return _Session(interval, refresher or "uac")

    def _session_or_none(self, request: SipRequest) -> _Session | None:
        session = self._session(request)
        return session if isinstance(session, _Session) else None

    def _session_headers(self, session: _Session | None) -> list[tuple[str, str]]:
        if session is None:
            return []
        headers = [("Session-Expires", f"{session.interval};refresher={session.refresher}")]
        if session.refresher == "uac":
            headers.append(("Require", "timer"))
        return headers

    def _arm_session(self, call: _Call, session: _Session | None, now: float) -> None:
        _cancel(call.session_timer)
        call.session_timer = None
        call.session = session
        if session is None:
            return
        if session.refresher == "uac":  # the peer refreshes; end the call if it stops (RFC 4028 10)
            when = now + session.interval - min(32.0, session.interval / 3)
            call.session_timer = self._at(when, lambda t: self._session_expired(call, t))
        else:  # we refresh, with an UPDATE at half the interval
            call.session_timer = self._at(now + session.interval / 2, lambda t: self._refresh(call, t))

    def _session_expired(self, call: _Call, now: float) -> None:
        if self._calls.get(call.call_id) is call and call.state in (CallState.ANSWERED, CallState.CONFIRMED):
            self._report_end(call, EndReason.SESSION_EXPIRED)
            if call.state is CallState.ANSWERED:
                call.hangup_requested = True
            else:
                self._send_bye(call, now)

    def _refresh(self, call: _Call, now: float) -> None:
        if self._calls.get(call.call_id) is not call or call.session is None:
            return
        if call.state is not CallState.CONFIRMED or self._pending_offer(call) is not None:
            call.session_timer = self._at(now + T2, lambda t: self._refresh(call, t))
            return
        call.refreshing = True
        session = call.session
        headers = [
            ("Session-Expires", f"{session.interval};refresher=uas"),
            ("Supported", "timer"),
            ("Contact", self._contact_for(call.peer.transport)),
        ]
        self._send_request(call, "UPDATE", now, lambda status, t: self._refreshed(call, status, t), headers)

    def _refreshed(self, call: _Call, status: int | None, now: float) -> None:
        call.refreshing = False
        if self._calls.get(call.call_id) is not call or call.state is not CallState.CONFIRMED:
            return
        if status is not None and 200 <= status < 300:
            self._arm_session(call, call.session, now)
        elif status in (None, 408, 481):  # RFC 4028 10: the session is dead
            self._report_end(call, EndReason.SESSION_EXPIRED)
            self._send_bye(call, now)
        # Anything else (405, 501, ...): the peer cannot be refreshed by UPDATE; let the call go on.

    # --- requests we send -----------------------------------------------------------------------------

    def _send_request(
        self,
        call: _Call,
        method: str,
        now: float,
        on_done: Callable[[int | None, float], None],
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """A non-INVITE client transaction in the dialog (RFC 3261 12.2.1.1, 17.1.2)."""
        call.local_cseq += 1
        uri, routes, peer = self._route(call)
        branch = new_branch(self._rng)
        params = (("branch", branch), ("rport", None))
        via = Via(peer.transport.upper(), self._host, self._port(peer.transport), params)
        out = Headers(
            [
                ("Via", str(via)),
                ("Max-Forwards", "70"),
                ("From", call.local_header),
                ("To", call.remote_header),
                ("Call-ID", call.call_id),
                ("CSeq", f"{call.local_cseq} {method}"),
            ]
        )
        for route in routes:
            out.add("Route", route)
        for name, value in headers:
            out.add(name, value)
        out.add("User-Agent", self.config.user_agent)
        tx = _ClientTx((branch, method), SipRequest(method, uri, out).serialize(), peer, on_done)
        self._client[tx.key] = tx
        self._outgoing.append((tx.data, peer))
        if peer.transport == "udp":
            tx.retransmit = self._at(now + T1, lambda t: self._timer_e(tx, t))
        tx.timeout = self._at(now + TIMEOUT, lambda t: self._finish_client(tx, None, t))  # Timer F

    def _timer_e(self, tx: _ClientTx, now: float) -> None:
        if self._client.get(tx.key) is tx:
            self._outgoing.append((tx.data, tx.peer))
            tx.interval = T2 if tx.proceeding else min(2 * tx.interval, T2)
            tx.retransmit = self._at(now + tx.interval, lambda t: self._timer_e(tx, t))

    def _finish_client(self, tx: _ClientTx, status: int | None, now: float) -> None:
        _cancel(tx.retransmit, tx.timeout)
        if self._client.get(tx.key) is tx:
            del self._client[tx.key]
            tx.on_done(status, now)

    def _route(self, call: _Call) -> tuple[str, list[str], Peer]:
        """Request-URI, Route headers and next hop for a request in the dialog (RFC 3261 12.2.1.1)."""
        if not call.route_set:
            if self.config.in_dialog_to_source:
                return call.remote_target, [], call.peer
            return call.remote_target, [], self._hop(SipUri.parse(call.remote_target), call)
        first = NameAddr.parse(call.route_set[0]).uri
        if first.param("lr") is not None:
            return call.remote_target, list(call.route_set), self._hop(first, call)
        # A strict router: it goes in the Request-URI and the remote target at the end of the routes.
        return str(first), [*call.route_set[1:], f"<{call.remote_target}>"], self._hop(first, call)

    def _hop(self, uri: SipUri, call: _Call) -> Peer:
        transport = uri.transport or ("tls" if uri.scheme == "sips" else call.peer.transport)
        if transport not in ("udp", "tcp", "tls"):
            transport = call.peer.transport
        if not uri.host:  # a tel: target: nowhere better than where the call came from
            return call.peer
        port = uri.port or (5061 if transport == "tls" else 5060)
        # Connection reuse: the INVITE's connection is the way back to a peer behind NAT.
        connection = call.peer.connection if transport == call.peer.transport != "udp" else None
        return Peer(transport, bare_host(uri.host), port, connection)

    # --- timers ---------------------------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[float], None]) -> _Timer:
        timer = _Timer(action)
        order = next(self._order)
        heapq.heappush(self._heap, (when, order, timer))
        if order % _COMPACT_EVERY == _COMPACT_EVERY - 1:  # cancelled timers would pile up otherwise
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
        return timer
