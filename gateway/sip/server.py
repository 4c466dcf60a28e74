"""The native SIP leg's I/O: SIP over UDP and TCP around the sans-I/O user agent, one RTP channel a call.

`SipServer` binds the `SIP_LISTEN` sockets, feeds every message to the `UserAgent` (`gateway/sip/ua.py`),
sends what it answers, runs its timers, and turns its events into calls:

- an INVITE from outside `SIP_ALLOW_FROM` gets 403; one the app cannot take now (draining, at capacity,
  no realtime backend yet) gets 503; an offer without PCMU or PCMA gets 488;
- otherwise an RTP port is bound from `RTP_PORTS`, the INVITE is answered (180, then 200 with our SDP
  answer; with no offer in the INVITE, our offer goes in the 200 and the answer comes in the ACK), and
  the app's `start_call` runs the call on the `RtpChannel` until it ends;
- a BYE, a CANCEL or a lost ACK ends the call's channel; when the call ends on our side, the channel
  asks for a BYE;
- re-INVITEs (hold, resume, session refresh) are answered from the current media, INFO DTMF reaches the
  call.

Nothing here reads the app's settings: `SipSettings` is built by the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import itertools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from gateway.call.outcome import Outcome
from gateway.metrics import GatewayMetrics
from gateway.sip.channel import TRANSFERRED, MediaPlan, RtpChannel, RtpClock
from gateway.sip.message import SipParseError, SipUri, StreamFramer, bare_host
from gateway.sip.register import (
    UNREGISTER_WAIT_S,
    Registered,
    Registration,
    RegistrationConfig,
    RegistrationEvent,
    RegistrationFailed,
    RegistrationState,
    Unregistered,
)
from gateway.sip.sdp import (
    STATIC_PAYLOAD_TYPES,
    Negotiated,
    SdpError,
    accept_answer,
    build_answer,
    build_offer,
    negotiate,
    parse_sdp,
)
from gateway.sip.settings import SipSettings
from gateway.sip.throttle import (
    TCP_CLOSE_AFTER_DROPS,
    SourceThrottle,
    ThrottleEnded,
    ThrottleStarted,
    address_in,
)
from gateway.sip.ua import (
    CallCancelled,
    CallConfirmed,
    CallEnded,
    DtmfInfo,
    IncomingCall,
    Malformed,
    Peer,
    Refused,
    ReInvite,
    TransferAnswered,
    TransferProgress,
    UaConfig,
    UserAgent,
)
from gateway.telephony.events import CallStarted, DtmfReceived
from telcodec import WireFormat

__all__ = ["SipServer", "SipSettings"]

log = structlog.get_logger(__name__)

UDP_RECEIVE_BUFFER = 4 << 20  # bytes of datagrams the kernel may hold for the SIP socket
DNS_TIMEOUT_S = 5.0  # a host name in a Contact or Route that does not resolve by then: the message is dropped
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a TLS connection that never finishes its handshake is dropped
# What the call core gets for each RTP codec: G.711 as it is; G.722 decoded by the channel to 16 kHz PCM16.
CODECS = {
    "G722": WireFormat.of("l16", 16000),
    "PCMU": WireFormat.of("ulaw", 8000),
    "PCMA": WireFormat.of("alaw", 8000),
}


Busy = Callable[[], str | None]  # why the gateway cannot take a call now (None: it can)
StartCall = Callable[[RtpChannel], Awaitable[None]]


def outbound_ip() -> str:
    """This host's address on its default route (no packet is sent), or 127.0.0.1 without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed anywhere real
            return str(probe.getsockname()[0])
        except OSError:
            return "127.0.0.1"


@dataclass(slots=True)
class _Call:
    call_id: str
    channel: RtpChannel | None = None
    offer_sent: bytes | None = None  # late offer: our offer in the 200, the answer due in the ACK
    task: asyncio.Task[None] | None = None
    sdp_version: int = 1
    answer: bytes = b""  # the SDP of our 200 OK, sent once the bot is there
    answered: bool = False
    transfer: asyncio.Future[int | None] | None = None  # our REFER's outcome, while one is out
    refer_accepted: bool = False


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: SipServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.received(data, Peer("udp", addr[0], addr[1]))


class _TcpProtocol(asyncio.Protocol):
    """A SIP connection over TCP, or over TLS (`name` "tls"; asyncio's SSL transport decrypts)."""

    def __init__(self, server: SipServer, connection: int, name: str = "tcp") -> None:
        self.server = server
        self.connection = connection
        self.name = name
        self.framer = StreamFramer()
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.dropped = 0  # messages the throttle dropped: a connection that keeps flooding is closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = Peer(self.name, host, port, self.connection)
        self.server.tcp[self.connection] = transport

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        assert self.transport is not None
        try:
            messages = self.framer.feed(data)
        except SipParseError as exc:
            self.server.count_malformed(self.peer, exc.reason)
            self.transport.close()
            return
        for message in messages:
            if not self.server.received(message, self.peer):
                self.dropped += 1
                if self.dropped >= TCP_CLOSE_AFTER_DROPS:
                    log.warning("sip_connection_flooding", peer=f"{self.peer.host}:{self.peer.port}")
                    self.transport.close()
                    return

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.tcp.pop(self.connection, None)


@dataclass(slots=True)
class SipCounters:
    """What the SIP leg counts (the app exports them as metrics)."""

    malformed: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    messages: dict[str, int] = field(default_factory=dict)  # taken in, by kind: request, response
    throttled: int = 0  # dropped silently: the source was over its rate
    stray_rtp: int = 0  # RTP packets from a source other than the latched one


class SipServer:
    """The SIP listeners, the user agent, and the calls it answered (see the module docstring)."""

    def __init__(
        self,
        settings: SipSettings,
        start_call: StartCall,
        busy: Busy,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.start_call = start_call
        self.busy = busy
        self.counters = SipCounters()
        self.metrics = metrics if metrics is not None else GatewayMetrics()
        self.throttle: SourceThrottle | None = None
        if settings.rate_limit:
            self.throttle = SourceThrottle(
                settings.rate_limit, settings.rate_burst, trusted=settings.allow_from
            )
        first = settings.listen[0]
        self.host = settings.public_ip or (first[1] if first[1] not in ("0.0.0.0", "::") else outbound_ip())
        self.rtp_host = first[1]
        self.ua: UserAgent | None = None
        self.udp: asyncio.DatagramTransport | None = None
        self.tcp: dict[int, asyncio.Transport] = {}
        self.calls: dict[str, _Call] = {}
        self._servers: list[asyncio.Server] = []
        self._lookups: set[asyncio.Task[None]] = set()  # sends waiting for a host name to resolve
        self.clock = RtpClock()  # one 20 ms timer for every call's RTP
        self._timer: asyncio.TimerHandle | None = None
        self._connections = itertools.count(1)
        self._networks = tuple(ipaddress.ip_network(cidr) for cidr in settings.allow_from)
        self._ports = range(settings.rtp_ports[0], settings.rtp_ports[1] + 1)
        self.registration: Registration | None = None  # SIP_REGISTRAR: our binding at the registrar
        self._registrar: tuple[str, int] | None = None  # its resolved address (None: resolve first)
        self._registration_timer: asyncio.TimerHandle | None = None
        self._resolving: asyncio.Task[None] | None = None
        self._unregistered = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> list[tuple[str, str, int]]:
        """Bind every listener; returns them with their real ports (port 0 binds a free one)."""
        loop = asyncio.get_running_loop()
        bound: list[tuple[str, str, int]] = []
        for transport, host, port in self.settings.listen:
            if transport == "udp":
                if self.udp is not None:
                    raise ValueError("one UDP listener only")
                self.udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(host, port)
                )
                _widen_receive_buffer(self.udp)
                bound.append(("udp", host, int(self.udp.get_extra_info("sockname")[1])))
            else:
                tls = self._tls_context() if transport == "tls" else None
                server = await loop.create_server(
                    functools.partial(self._connection, transport),
                    host,
                    port,
                    ssl=tls,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if tls is not None else None,
                )
                self._servers.append(server)
                bound.append((transport, host, int(server.sockets[0].getsockname()[1])))
        digest = self.settings.digest
        # Every worker process must accept the nonces the others issued: derive the key from the password.
        secret = None if digest is None else hashlib.sha256(b"sip-nonce:" + digest[2].encode()).digest()
        ports = tuple((transport, port) for transport, _, port in bound)
        self.ua = UserAgent(
            UaConfig(host=self.host, port=bound[0][2], ports=ports, digest=digest, nonce_secret=secret)
        )
        log.info("sip_listening", listen=[f"{t}:{h}:{p}" for t, h, p in bound], contact_host=self.host)
        self._start_registration(bound)
        return bound

    def _connection(self, name: str) -> _TcpProtocol:
        return _TcpProtocol(self, next(self._connections), name)

    def _tls_context(self) -> ssl.SSLContext:
        """The server side of SIP over TLS (RFC 5630: TLS 1.2 or newer; peers' certificates not asked)."""
        if self.settings.tls_cert is None or self.settings.tls_key is None:
            raise ValueError("a tls: listener needs SIP_TLS_CERT and SIP_TLS_KEY")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        return context

    async def stop(self) -> None:
        """Close the listeners (calls end with the app's shutdown, each with a BYE)."""
        await self._stop_registration()  # first: the PBX stops sending calls here
        if self._timer is not None:
            self._timer.cancel()
        for call in list(self.calls.values()):
            if call.task is not None:
                call.task.cancel()
        tasks = [c.task for c in self.calls.values() if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._pump()  # the BYEs of the calls just closed
        for server in self._servers:
            server.close()
        for transport in list(self.tcp.values()):
            transport.close()
        if self.udp is not None:
            self.udp.close()

    # -- messages in and out -----------------------------------------------------------------------------

    def received(self, data: bytes, peer: Peer) -> bool:
        """One whole SIP message from `peer`; False when it was dropped silently (its source is over
        SIP_RATE_LIMIT: a flood gets no answer, not even a 503)."""
        assert self.ua is not None
        now = time.monotonic()
        if self.throttle is not None:
            admitted = self.throttle.admit(peer.host, now)
            for event in self.throttle.events():
                _log_throttle(event)
            if not admitted:
                self.counters.throttled += 1
                self.metrics.sip_throttled.inc()
                return False
        kind = "response" if data.startswith(b"SIP/") else "request"
        self.counters.messages[kind] = self.counters.messages.get(kind, 0) + 1
        self.metrics.sip_messages.labels(kind=kind).inc()
        if self.registration is not None and self.registration.receive_data(data, now):
            self._pump_registration()
            return True
        self.ua.receive(data, peer, now)
        self._pump()
        return True

    def count_malformed(self, peer: Peer, reason: str) -> None:
        """A message (or a TCP stream) that could not be parsed: it costs its source more of its budget."""
        self.counters.malformed += 1
        self.metrics.sip_malformed.inc()
        if self.throttle is not None:
            self.throttle.penalize(peer.host, time.monotonic())
        log.warning("sip_malformed", peer=f"{peer.host}:{peer.port}", transport=peer.transport, reason=reason)

    def count_refused(self, status: int) -> None:
        """We answered a request with a refusal (403, 405, 481, 503, ...)."""
        self.counters.refused[status] = self.counters.refused.get(status, 0) + 1
        self.metrics.sip_refused.labels(status=str(status)).inc()

    def count_stray_rtp(self) -> None:
        """An RTP packet from a source other than the one its call latched on (dropped by the channel)."""
        self.counters.stray_rtp += 1
        self.metrics.rtp_stray_packets.inc()

    def _pump(self) -> None:
        """Send what the user agent has to send, act on its events, re-arm its timer."""
        ua = self.ua
        if ua is None:
            return
        for _ in range(8):  # acting on events may produce more messages and events
            for data, peer in ua.outgoing():
                self._send(data, peer)
            events = ua.events()
            if not events:
                break
            for event in events:
                self._on_event(event)
        self._arm_timer()

    def _send(self, data: bytes, peer: Peer) -> None:
        if peer.transport == "udp":
            if self.udp is None:
                return
            if _is_address(peer.host):
                self.udp.sendto(data, (peer.host, peer.port))
            else:  # a Contact or Route with a host name: never resolve it on the event loop (a slow DNS)
                task = asyncio.create_task(self._send_by_name(data, peer))
                self._lookups.add(task)
                task.add_done_callback(self._lookups.discard)
            return
        transport = self.tcp.get(peer.connection or -1)
        if transport is not None and not transport.is_closing():
            transport.write(data)
        else:
            log.warning("sip_connection_gone", peer=f"{peer.host}:{peer.port}")

    async def _send_by_name(self, data: bytes, peer: Peer) -> None:
        try:
            address = await self._lookup(peer.host, peer.port)
        except OSError as exc:
            log.warning("sip_dns_failed", host=peer.host, error=str(exc) or type(exc).__name__)
            return
        if self.udp is not None and not self.udp.is_closing():
            self.udp.sendto(data, address)

    async def _lookup(self, host: str, port: int) -> tuple[str, int]:
        """`host` resolved off the event loop, to an address of the UDP socket's family, within
        DNS_TIMEOUT_S. OSError (TimeoutError is one) when it does not resolve or is no host name at all
        (IDNA's UnicodeError: an empty label, say)."""
        assert self.udp is not None
        family = self.udp.get_extra_info("socket").family
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(DNS_TIMEOUT_S):
                infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        except UnicodeError as exc:
            raise OSError(f"not a host name: {exc}") from None
        if not infos:
            raise OSError(f"{host} has no address")
        address = infos[0][4]
        return str(address[0]), int(address[1])

    def _arm_timer(self) -> None:
        assert self.ua is not None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.ua.next_deadline()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            delay = max(0.0, deadline - time.monotonic())
            self._timer = loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        assert self.ua is not None
        self.ua.tick(time.monotonic())
        self._pump()

    # -- calls -------------------------------------------------------------------------------------------

    def _on_event(self, event: object) -> None:
        match event:
            case IncomingCall():
                self._incoming(event)
            case CallConfirmed(call_id=call_id, answer=answer):
                self._confirmed(call_id, answer)
            case CallCancelled(call_id=call_id):
                self._ended(call_id, "cancel")
            case CallEnded(call_id=call_id, reason=reason):
                self._ended(call_id, reason)
            case ReInvite(call_id=call_id, offer=offer):
                self._reinvite(call_id, offer)
            case TransferAnswered(call_id=call_id, status=status):
                self._transfer_answered(call_id, status)
            case TransferProgress(call_id=call_id, status=status):
                self._transfer_progress(call_id, status)
            case DtmfInfo(call_id=call_id, digit=digit):
                call = self.calls.get(call_id)
                if call is not None and call.channel is not None:
                    call.channel.inject(DtmfReceived(digit))
            case Refused(status=status, reason=reason, peer=peer):
                self.count_refused(status)
                log.warning("sip_refused", status=status, reason=reason, peer=f"{peer.host}:{peer.port}")
            case Malformed(peer=peer, reason=reason):
                self.count_malformed(peer, reason)
            case _:
                log.debug("sip_event_ignored", event=type(event).__name__)

    def _reject(self, call_id: str, status: int, reason: str) -> None:
        assert self.ua is not None
        self.count_refused(status)
        log.warning("sip_call_refused", call_id=call_id, status=status, reason=reason)
        self.ua.reject(call_id, status, reason, time.monotonic())

    def _allowed(self, host: str) -> bool:
        return not self._networks or address_in(host, self._networks)

    def _incoming(self, event: IncomingCall) -> None:
        if not self._allowed(event.peer.host):
            self._reject(event.call_id, 403, "address not allowed")
            return
        reason = self.busy()
        if reason is not None:
            self._reject(event.call_id, 503, reason)
            return
        negotiated: Negotiated | None = None
        if event.offer is not None:
            try:
                negotiated = negotiate(parse_sdp(event.offer), codecs=self.settings.codecs)
            except SdpError as exc:
                self._reject(event.call_id, 400, f"bad SDP: {exc}")
                return
            if negotiated is None:
                self._reject(event.call_id, 488, f"no common codec ({', '.join(self.settings.codecs)})")
                return
        call = _Call(event.call_id)
        self.calls[event.call_id] = call
        call.task = asyncio.create_task(self._run_call(call, event, negotiated))

    async def _run_call(self, call: _Call, event: IncomingCall, negotiated: Negotiated | None) -> None:
        assert self.ua is not None
        plan = (
            _plan(negotiated)
            if negotiated is not None
            else _placeholder(event.peer.host, self.settings.codecs)
        )
        started = CallStarted(
            stream_id=event.call_id,
            call_id=event.call_id,
            account_id="",
            tracks=("inbound",),
            custom_parameters={"From": event.from_uri, "To": event.to_uri, "RequestUri": event.request_uri},
            encoding=plan.format.encoding.value,
            sample_rate=plan.format.rate,
            format=plan.format,
        )
        channel = RtpChannel(
            started,
            plan,
            jitter_ms=self.settings.jitter_ms,
            rtp_timeout_s=self.settings.rtp_timeout_s,
            hang_up=lambda: self._hang_up(call.call_id),
            on_ready=lambda: self._answer(call),
            on_stray=self.count_stray_rtp,
            clock=self.clock,
        )
        try:
            port = await channel.open(self.rtp_host, self._ports)
        except OSError as exc:
            self._reject(call.call_id, 503, f"no RTP port free: {exc}")
            self.calls.pop(call.call_id, None)
            return
        call.channel = channel
        if negotiated is not None:
            call.answer = build_answer(negotiated, self.host, port, session_id=port, version=call.sdp_version)
        else:
            call.answer = call.offer_sent = build_offer(  # the placeholder's codec only: the core's format
                self.host, port, codecs=(plan.codec,), session_id=port, version=call.sdp_version
            )
        self.ua.ring(call.call_id)  # 180 until the realtime session is up; then 200 (channel.ready)
        self._pump()
        try:
            await self.start_call(channel)
        finally:
            await channel.close(Outcome.COMPLETED)  # already closed by the bridge, unless it never ran
            if call.transfer is not None and not call.transfer.done():
                call.transfer.set_result(None)
            self.calls.pop(call.call_id, None)
            self._pump()

    def _confirmed(self, call_id: str, answer: bytes | None) -> None:
        call = self.calls.get(call_id)
        if call is None or call.offer_sent is None or call.channel is None:
            return
        negotiated = None
        if answer is not None:
            with contextlib.suppress(SdpError):
                negotiated = accept_answer(parse_sdp(call.offer_sent), parse_sdp(answer))
        if negotiated is None:
            log.warning("sip_late_offer_failed", call_id=call_id, answer=answer is not None)
            self._hang_up(call_id)
            call.channel.peer_hung_up("bad answer")
            return
        call.channel.update(_plan(negotiated))

    def _reinvite(self, call_id: str, offer: bytes | None) -> None:
        assert self.ua is not None
        call = self.calls.get(call_id)
        if call is None or call.channel is None:
            return
        call.sdp_version += 1
        port = call.channel.local_port
        negotiated = None
        if offer is not None:
            with contextlib.suppress(SdpError):
                # The call keeps its codec: the call core's audio format was fixed when it started.
                negotiated = negotiate(parse_sdp(offer), codecs=(call.channel.plan.codec,))
        if negotiated is None:  # a refresh without SDP (or one we cannot take): offer what we have
            sdp = build_offer(
                self.host, port, codecs=(call.channel.plan.codec,), session_id=port, version=call.sdp_version
            )
        else:
            call.channel.update(_plan(negotiated))
            sdp = build_answer(negotiated, self.host, port, session_id=port, version=call.sdp_version)
        self.ua.answer_reinvite(call_id, sdp, time.monotonic())

    def _ended(self, call_id: str, reason: str) -> None:
        call = self.calls.get(call_id)
        if call is None:
            return
        if call.refer_accepted and call.transfer is not None and not call.transfer.done():
            # The caller's side accepted our REFER and hung up without a final NOTIFY: it took the call.
            call.transfer.set_result(202)
            reason = TRANSFERRED
        if call.channel is not None:
            call.channel.peer_hung_up(reason)
        elif call.task is not None:
            call.task.cancel()

    def _answer(self, call: _Call) -> None:
        """200 OK with our SDP: the bot is ready to talk."""
        if self.ua is None or call.call_id not in self.calls:
            return
        call.answered = True
        self.ua.answer(call.call_id, call.answer, time.monotonic())
        self._pump()
        log.info("sip_call_answered", call_id=call.call_id)

    def _hang_up(self, call_id: str) -> None:
        """The call ended on our side: BYE once answered, 503 while it was still ringing."""
        call = self.calls.get(call_id)
        if self.ua is None or call is None:
            return
        if call.answered:
            self.ua.hang_up(call_id, time.monotonic())
        else:
            self.ua.reject(call_id, 503, "the bot could not be reached", time.monotonic())
        self._pump()

    def transfer(self, call_id: str, target: str) -> asyncio.Future[int | None]:
        """Hand an answered call to `target` (a `sip:` or `tel:` URI, sent as given) with a REFER. The
        future gives the outcome as the caller's side reports it: a 2xx once the target answered (the
        call then ends with a BYE, outcome `transferred`); the target's failure status, or the REFER's
        refusal, or None without an answer, and the call goes on. One transfer at a time per call."""
        call = self.calls.get(call_id)
        if call is not None and call.transfer is not None and not call.transfer.done():
            return call.transfer
        future: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        if call is None or not call.answered or self.ua is None:
            future.set_result(None)
            return future
        call.transfer, call.refer_accepted = future, False
        log.info("sip_transfer_requested", call_id=call_id, target=target)
        self.ua.transfer(call_id, target, time.monotonic())
        self._pump()
        return future

    def _transfer_answered(self, call_id: str, status: int | None) -> None:
        call = self.calls.get(call_id)
        if call is None or call.transfer is None or call.transfer.done():
            return
        if status is not None and 200 <= status < 300:
            call.refer_accepted = True
            return
        log.warning("sip_transfer_refused", call_id=call_id, status=status)
        call.transfer.set_result(status)

    def _transfer_progress(self, call_id: str, status: int) -> None:
        call = self.calls.get(call_id)
        if call is None or call.transfer is None or call.transfer.done() or status < 200:
            return
        call.transfer.set_result(status)
        if status >= 300:
            log.warning("sip_transfer_failed", call_id=call_id, status=status)
            return
        log.info("sip_transferred", call_id=call_id)
        if call.channel is not None:
            call.channel.peer_hung_up(TRANSFERRED)
        self._hang_up(call_id)

    def active_calls(self) -> int:
        """Calls with a channel (for tests and leak checks)."""
        return len(self.calls)

    # -- registration (SIP_REGISTRAR): the core is gateway/sip/register.py -----------------------------------

    @property
    def registered(self) -> bool:
        """True while our registration is current (gateway_sip_registered)."""
        return self.registration is not None and self.registration.registered

    def _start_registration(self, bound: list[tuple[str, str, int]]) -> None:
        """Register over the UDP listener, as the digest user, with our Contact host and UDP port."""
        udp_port = next((port for transport, _, port in bound if transport == "udp"), None)
        if self.settings.registrar is None or self.settings.digest is None or udp_port is None:
            return
        _, username, password = self.settings.digest
        config = RegistrationConfig(
            registrar=SipUri.parse(self.settings.registrar),
            username=username,
            password=password,
            contact_host=self.host,
            contact_port=udp_port,
            expires=self.settings.register_expires,
        )
        self.registration = Registration(config)
        log.info("sip_registering", registrar=self.settings.registrar, aor=self.registration.aor)
        self.registration.start(time.monotonic())
        self._pump_registration()

    async def _stop_registration(self) -> None:
        """Un-REGISTER, waiting at most UNREGISTER_WAIT_S for the answer."""
        registration = self.registration
        if registration is None:
            return
        registration.stop(time.monotonic())
        self._pump_registration()
        try:
            await asyncio.wait_for(self._unregistered.wait(), UNREGISTER_WAIT_S)
        except TimeoutError:
            log.warning(
                "sip_unregister_unanswered", registrar=self.settings.registrar, waited=UNREGISTER_WAIT_S
            )
        for handle in (self._registration_timer, self._resolving):
            if handle is not None:
                handle.cancel()
        self.metrics.sip_registered.set(0)

    def _pump_registration(self) -> None:
        """Send the core's requests (resolving the registrar first), log its events, re-arm its timer."""
        registration = self.registration
        if registration is None:
            return
        for data in registration.data_to_send():
            if self._registrar is not None:
                self._send(data, Peer("udp", *self._registrar))
            elif self._resolving is None or self._resolving.done():
                self._resolving = asyncio.create_task(self._resolve_and_send(data))
            # else: a retransmission while the name resolves; Timer E sends it again
        for event in registration.events_received():
            self._on_registration_event(event)
        self.metrics.sip_registered.set(1 if registration.registered else 0)
        if registration.state is RegistrationState.STOPPED:
            self._unregistered.set()
        if self._registration_timer is not None:
            self._registration_timer.cancel()
            self._registration_timer = None
        deadline = registration.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - time.monotonic())
            self._registration_timer = asyncio.get_running_loop().call_later(delay, self._registration_tick)

    def _registration_tick(self) -> None:
        self._registration_timer = None
        if self.registration is not None:
            self.registration.tick(time.monotonic())
            self._pump_registration()

    async def _resolve_and_send(self, data: bytes) -> None:
        """Resolve the registrar (`_lookup`), then send."""
        assert self.registration is not None
        config = self.registration.config
        try:
            self._registrar = await self._lookup(bare_host(config.registrar.host), config.registrar_port)
        except OSError as exc:
            self.registration.send_failed(time.monotonic(), f"cannot resolve {config.registrar.host}: {exc}")
            self._pump_registration()
            return
        self._send(data, Peer("udp", *self._registrar))

    def _on_registration_event(self, event: RegistrationEvent) -> None:
        registrar = self.settings.registrar
        match event:
            case Registered(expires=expires, refreshed=False):
                log.info("sip_registered", registrar=registrar, expires=expires)
            case Registered(expires=expires):
                log.debug("sip_registration_refreshed", registrar=registrar, expires=expires)
            case RegistrationFailed(status=status, reason=reason, retry_in=retry_in):
                self._registrar = None  # resolve again: the registrar may have moved
                log.warning(
                    "sip_registration_failed",
                    registrar=registrar,
                    status=status,
                    reason=reason,
                    retry_in=retry_in,
                )
            case Unregistered(status=status) if 200 <= status < 300:
                log.info("sip_unregistered", registrar=registrar)
            case Unregistered(status=status):
                log.warning("sip_unregister_failed", registrar=registrar, status=status)


def _widen_receive_buffer(transport: asyncio.DatagramTransport) -> None:
    """Room in the kernel for a flood's backlog (the kernel caps it at net.core.rmem_max): with the
    default ~200 KB, a few hundred datagrams queued while the loop is busy crowd out every other
    source's; the throttle then drops the flood's cheaply once they are read."""
    sock = transport.get_extra_info("socket")
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)


def _log_throttle(event: ThrottleStarted | ThrottleEnded) -> None:
    """One line when a source starts being throttled and one when it stops: never one per message."""
    if isinstance(event, ThrottleStarted):
        log.warning("sip_throttled", source=event.source, rate=event.rate, burst=event.burst)
    else:
        log.warning("sip_throttle_ended", source=event.source, dropped=event.dropped, seconds=event.seconds)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _plan(negotiated: Negotiated) -> MediaPlan:
    rtcp = None
    if negotiated.remote_rtcp_port:
        rtcp = (negotiated.remote_rtcp_address or negotiated.remote_address, negotiated.remote_rtcp_port)
    return MediaPlan(
        format=CODECS[negotiated.codec],
        payload_type=negotiated.payload_type,
        remote=(negotiated.remote_address, negotiated.remote_port),
        dtmf_payload_type=negotiated.dtmf_payload_type,
        ptime_ms=20,
        on_hold=negotiated.on_hold,
        codec=negotiated.codec,
        remote_rtcp=rtcp,
        rtcp_mux=negotiated.rtcp_mux,
    )


def _placeholder(host: str, codecs: tuple[str, ...]) -> MediaPlan:
    """Late offer: we offer one codec (PCMU, which every peer has, unless SIP_CODECS leaves it out) and,
    until the ACK's answer, send it to the signalling peer (latching corrects the address)."""
    codec = "PCMU" if "PCMU" in codecs else codecs[0]
    payload_type = next(pt for pt, name in STATIC_PAYLOAD_TYPES.items() if name == codec)
    return MediaPlan(
        format=CODECS[codec], payload_type=payload_type, remote=(host, 0), dtmf_payload_type=101, codec=codec
    )
