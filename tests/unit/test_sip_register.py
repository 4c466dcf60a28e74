"""The REGISTER client core (`gateway/sip/register.py`) on a simulated clock, against a registrar built
from our own digest authenticator."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.backend import sip_settings_from
from gateway.config import load_settings
from gateway.errors import ConfigError
from gateway.sip.digest import DigestAuthenticator, DigestVerdict, parse_digest
from gateway.sip.message import Headers, NameAddr, SipRequest, SipResponse, SipUri, parse
from gateway.sip.register import (
    Registered,
    Registration,
    RegistrationConfig,
    RegistrationFailed,
    RegistrationState,
    Unregistered,
    refresh_delay,
    retry_delay,
)

USER = "1001"
PASSWORD = "s3cret-pass"
REALM = "pbx.example.com"


def config(**changes: object) -> RegistrationConfig:
    """Registration settings for 1001 at pbx.example.com, our contact 192.0.2.10:5070."""
    values: dict[str, object] = {
        "registrar": SipUri.parse("sip:pbx.example.com:5060"),
        "username": USER,
        "password": PASSWORD,
        "contact_host": "192.0.2.10",
        "contact_port": 5070,
    }
    values.update(changes)
    return RegistrationConfig(**values)  # type: ignore[arg-type]


def new(**changes: object) -> Registration:
    """A registration with a seeded random source."""
    return Registration(config(**changes), random.Random(7))


def sent(registration: Registration) -> list[SipRequest]:
    """The requests it has to send, parsed."""
    requests = [parse(data) for data in registration.data_to_send()]
    assert all(isinstance(r, SipRequest) for r in requests)
    return requests  # type: ignore[return-value]


def one(registration: Registration) -> SipRequest:
    """The single request it has to send."""
    requests = sent(registration)
    assert len(requests) == 1, requests
    return requests[0]


def answer(
    request: SipRequest, status: int, reason: str = "", headers: list[tuple[str, str]] | None = None
) -> bytes:
    """The registrar's response to `request`."""
    out = Headers([("Via", via) for via in request.headers.get_all("Via")])
    out.add("From", request.headers.get("From") or "")
    out.add("To", f"{request.headers.get('To')};tag=reg")
    out.add("Call-ID", request.call_id)
    out.add("CSeq", request.headers.get("CSeq") or "")
    for name, value in headers or []:
        out.add(name, value)
    return SipResponse(status, reason or "Whatever", out).serialize()


def ok(request: SipRequest, contact_expires: int | None = 120) -> bytes:
    """200 OK echoing the request's Contact with `;expires=`."""
    contact = request.headers.get("Contact") or ""
    if contact_expires is None:
        return answer(request, 200, "OK")
    return answer(request, 200, "OK", [("Contact", f"{contact};expires={contact_expires}")])


class Registrar:
    """A registrar's digest side: challenges, and checks with our own (independent) verifier."""

    def __init__(self, password: str = PASSWORD) -> None:
        self.auth = DigestAuthenticator(REALM, USER, password, b"k" * 32)

    def challenge(self, request: SipRequest, now: float, stale: bool = False) -> bytes:
        """401 with a fresh nonce."""
        values = self.auth.challenge(now, stale)
        return answer(request, 401, "Unauthorized", [("WWW-Authenticate", v) for v in values])

    def verdict(self, request: SipRequest, now: float) -> DigestVerdict:
        """What the request's Authorization is worth."""
        return self.auth.verify("REGISTER", request.headers.get_all("Authorization"), now)


def registered(now: float = 0.0, granted: int = 120) -> tuple[Registration, Registrar, SipRequest]:
    """A registration that went through a challenge and holds a binding; returns the last request."""
    registration = new()
    registrar = Registrar()
    registration.start(now)
    first = one(registration)
    assert registration.receive_data(registrar.challenge(first, now), now)
    second = one(registration)
    assert registrar.verdict(second, now) is DigestVerdict.OK
    assert registration.receive_data(ok(second, granted), now)
    assert registration.events_received() == [Registered(granted)]
    return registration, registrar, second


def run(registration: Registration, until: float) -> list[tuple[float, SipRequest]]:
    """Tick at every deadline up to `until`; every request sent, with its time."""
    out: list[tuple[float, SipRequest]] = []
    while (deadline := registration.next_deadline()) is not None and deadline <= until:
        registration.tick(deadline)
        out += [(deadline, request) for request in sent(registration)]
    return out


def test_first_register_names_the_domain_our_aor_and_our_contact() -> None:
    """The first REGISTER: Request-URI the registrar's domain, To = From = sip:USER@domain, our Contact
    with its transport, Expires 300, a fresh RFC 3261 branch and CSeq 1."""
    registration = new()
    registration.start(0.0)
    request = one(registration)
    assert request.uri == "sip:pbx.example.com:5060"
    assert request.to.uri == SipUri.parse("sip:1001@pbx.example.com")
    assert request.from_.uri == request.to.uri
    assert request.from_.tag
    assert request.to.tag is None
    assert NameAddr.parse(request.headers.get("Contact") or "").uri == SipUri.parse(
        "sip:1001@192.0.2.10:5070;transport=udp"
    )
    assert request.headers.get("Expires") == "300"
    assert request.cseq == (1, "REGISTER")
    assert (request.vias[0].branch or "").startswith("z9hG4bK")
    assert request.vias[0].host == "192.0.2.10"
    assert request.vias[0].port == 5070
    assert "Authorization" not in request.headers
    assert registration.state is RegistrationState.REGISTERING
    assert not registration.registered


def test_challenge_is_answered_and_the_binding_granted() -> None:
    """401 -> the same REGISTER again (same Call-ID, next CSeq, new branch) with credentials a digest
    verifier accepts -> 200 -> Registered with the Contact's expires."""
    registration = new()
    registrar = Registrar()
    registration.start(0.0)
    first = one(registration)
    assert registration.receive_data(registrar.challenge(first, 0.0), 0.0)
    second = one(registration)
    assert second.call_id == first.call_id
    assert second.cseq == (2, "REGISTER")
    assert second.vias[0].branch != first.vias[0].branch
    assert second.from_.tag == first.from_.tag
    assert registrar.verdict(second, 0.5) is DigestVerdict.OK
    params = parse_digest(second.headers.get("Authorization") or "")
    assert params is not None
    assert params["uri"] == "sip:pbx.example.com:5060"
    assert params["nc"] == "00000001"
    assert registration.receive_data(ok(second, 120), 0.5)
    assert registration.events_received() == [Registered(120)]
    assert registration.registered
    assert registration.state is RegistrationState.REGISTERED


def test_wrong_password_fails_once_without_looping() -> None:
    """A second 401 for the nonce just answered (not stale) is a failure at once: RegistrationFailed,
    nothing more sent, and the next attempt only after the retry delay."""
    registration = new()
    registrar = Registrar(password="another")
    registration.start(0.0)
    first = one(registration)
    challenge = registrar.challenge(first, 0.0)
    registration.receive_data(challenge, 0.0)
    second = one(registration)
    assert registrar.verdict(second, 0.0) is DigestVerdict.INVALID
    nonce = (parse_digest((parse(challenge).headers.get("WWW-Authenticate")) or "") or {})["nonce"]
    again = answer(
        second, 401, "Unauthorized", [("WWW-Authenticate", f'Digest realm="{REALM}", nonce="{nonce}"')]
    )
    assert registration.receive_data(again, 0.1)
    [event] = registration.events_received()
    assert isinstance(event, RegistrationFailed)
    assert event.status == 401
    assert event.retry_in == 30.0
    assert "credentials rejected" in event.reason
    assert PASSWORD not in event.reason
    assert registration.data_to_send() == []
    assert registration.state is RegistrationState.RETRY_WAIT
    assert not registration.registered
    assert registration.next_deadline() == pytest.approx(30.1)


def test_stale_nonce_is_answered_again() -> None:
    """401 with stale=true for the nonce we answered: answered with the new nonce, not a failure."""
    registration = new()
    registration.start(0.0)
    first = one(registration)
    registration.receive_data(
        answer(first, 401, "", [("WWW-Authenticate", f'Digest realm="{REALM}", nonce="n1"')]), 0
    )
    second = one(registration)
    stale = f'Digest realm="{REALM}", nonce="n2", stale=true'
    registration.receive_data(answer(second, 401, "", [("WWW-Authenticate", stale)]), 0)
    third = one(registration)
    assert 'nonce="n2"' in (third.headers.get("Authorization") or "")
    assert registration.events_received() == []


def test_fresh_nonces_forever_end_after_max_challenges() -> None:
    """A registrar that challenges every answer with a new nonce is answered three times, then fails."""
    registration = new()
    registration.start(0.0)
    for n in range(4):
        request = one(registration)
        challenge = f'Digest realm="{REALM}", nonce="n{n}"'
        registration.receive_data(answer(request, 401, "", [("WWW-Authenticate", challenge)]), 0)
    [event] = registration.events_received()
    assert isinstance(event, RegistrationFailed)
    assert "3 times" in event.reason
    assert registration.data_to_send() == []


def test_proxy_challenge_gets_proxy_authorization_and_sha256_is_preferred_when_listed_first() -> None:
    """407 is answered in Proxy-Authorization; of several challenges the first usable one is taken."""
    registration = new()
    registration.start(0.0)
    first = one(registration)
    challenges = [
        ("Proxy-Authenticate", f'Digest realm="{REALM}", nonce="a", algorithm=SHA-512, qop="auth"'),
        ("Proxy-Authenticate", f'Digest realm="{REALM}", nonce="b", algorithm=SHA-256, qop="auth"'),
        ("Proxy-Authenticate", f'Digest realm="{REALM}", nonce="c", algorithm=MD5, qop="auth"'),
    ]
    registration.receive_data(answer(first, 407, "Proxy Authentication Required", challenges), 0)
    second = one(registration)
    assert "Authorization" not in second.headers
    params = parse_digest(second.headers.get("Proxy-Authorization") or "")
    assert params is not None
    assert params["nonce"] == "b"
    assert params["algorithm"] == "SHA-256"


def test_interval_too_brief_retries_with_min_expires_and_keeps_it() -> None:
    """423 with Min-Expires: 600 -> the REGISTER again at once asking for 600; refreshes ask for 600 too."""
    registration = new(expires=60)
    registration.start(0.0)
    first = one(registration)
    assert first.headers.get("Expires") == "60"
    registration.receive_data(answer(first, 423, "Interval Too Brief", [("Min-Expires", "600")]), 0)
    second = one(registration)
    assert second.headers.get("Expires") == "600"
    assert second.cseq[0] == 2
    registration.receive_data(ok(second, None), 0)
    assert registration.events_received() == [Registered(600)]
    [(when, refresh)] = run(registration, 600)[:1]
    assert when == 568
    assert refresh.headers.get("Expires") == "600"


def test_interval_too_brief_without_a_larger_minimum_is_a_failure() -> None:
    """423 whose Min-Expires is missing or not above what we asked: a failure, no loop."""
    registration = new()
    registration.start(0.0)
    registration.receive_data(
        answer(one(registration), 423, "Interval Too Brief", [("Min-Expires", "300")]), 0
    )
    [event] = registration.events_received()
    assert isinstance(event, RegistrationFailed)
    assert event.status == 423
    assert registration.data_to_send() == []


@pytest.mark.parametrize(
    ("headers", "granted"),
    [
        # Our Contact's expires wins over other bindings' and over the Expires header.
        (
            [
                ("Contact", "<sip:1001@198.51.100.7:5060>;expires=3600"),
                ("Contact", "<sip:1001@192.0.2.10:5070;transport=udp>;expires=45"),
                ("Expires", "900"),
            ],
            45,
        ),
        ([("Contact", "<sip:1001@198.51.100.7:5060>;expires=3600"), ("Expires", "900")], 900),
        ([], 300),  # neither: what we asked for
        ([("Contact", '"Gw" <sip:1001@192.0.2.10:5070>;expires=77;q=0.5, <sip:x@y>;expires=1')], 77),
    ],
)
def test_granted_expiry(headers: list[tuple[str, str]], granted: int) -> None:
    """The granted time: our Contact's `expires`, else the Expires header, else the requested time."""
    registration = new()
    registration.start(0.0)
    registration.receive_data(answer(one(registration), 200, "OK", headers), 0)
    assert registration.events_received() == [Registered(granted)]


@pytest.mark.parametrize(
    ("granted", "delay"), [(300, 268.0), (3600, 3568.0), (60, 30.0), (64, 32.0), (2, 1.0)]
)
def test_refresh_delay(granted: int, delay: float) -> None:
    """Refresh when a whole transaction (32 s) still fits before expiry, never before half the time."""
    assert refresh_delay(granted) == delay


def test_refresh_keeps_call_id_bumps_cseq_and_reuses_the_credentials() -> None:
    """At refresh time the REGISTER goes out again: same Call-ID and From tag, next CSeq, credentials
    for the last nonce with nonce count 2 (no new challenge round trip); its 200 is a refresh."""
    registration, registrar, last = registered(now=10.0, granted=60)
    assert registration.next_deadline() == 40.0
    assert run(registration, 39.9) == []
    [(when, refresh)] = run(registration, 40.0)
    assert when == 40.0
    assert registration.state is RegistrationState.REFRESHING
    assert registration.registered
    assert refresh.call_id == last.call_id
    assert refresh.from_.tag == last.from_.tag
    assert refresh.cseq == (last.cseq[0] + 1, "REGISTER")
    assert registrar.verdict(refresh, 40.0) is DigestVerdict.OK
    assert (parse_digest(refresh.headers.get("Authorization") or "") or {})["nc"] == "00000002"
    registration.receive_data(ok(refresh, 60), 40.2)
    assert registration.events_received() == [Registered(60, refreshed=True)]
    assert registration.next_deadline() == pytest.approx(70.2)


def test_failed_refresh_means_not_registered_and_a_retry() -> None:
    """A refresh answered 403: RegistrationFailed, not registered, a new attempt after 30 s."""
    registration, _, _ = registered(granted=60)
    [(_, refresh)] = run(registration, 30.0)
    registration.receive_data(answer(refresh, 403, "Forbidden"), 30.0)
    assert registration.events_received() == [RegistrationFailed(403, "Forbidden", 30.0)]
    assert not registration.registered
    [(when, retry)] = run(registration, 60.0)
    assert when == 60.0
    assert retry.cseq[0] == refresh.cseq[0] + 1
    assert "Authorization" not in retry.headers  # a failure forgets the old nonce
    assert registration.state is RegistrationState.REGISTERING


def test_backoff_doubles_to_its_cap_and_honours_retry_after() -> None:
    """Failures in a row wait 30, 60, 120, 240, 300, 300 s; Retry-After stretches one wait; a success
    resets the sequence."""
    registration = new()
    registration.start(0.0)
    now = 0.0
    waits = []
    for _ in range(6):
        registration.receive_data(answer(one(registration), 503, "Service Unavailable"), now)
        [event] = registration.events_received()
        assert isinstance(event, RegistrationFailed)
        waits.append(event.retry_in)
        now += event.retry_in
        registration.tick(now)
    assert waits == [30, 60, 120, 240, 300, 300]
    registration.receive_data(answer(one(registration), 503, "", [("Retry-After", "900 (maintenance)")]), now)
    assert [e.retry_in for e in registration.events_received() if isinstance(e, RegistrationFailed)] == [900]
    registration.tick(now + 900)
    registration.receive_data(ok(one(registration)), now + 900)
    registration.tick(now + 900 + refresh_delay(120))
    registration.receive_data(answer(one(registration), 500, "Oops"), now + 1000)
    assert [e.retry_in for e in registration.events_received() if isinstance(e, RegistrationFailed)] == [30]
    assert retry_delay(1) == 30
    assert retry_delay(20) == 300
    assert retry_delay(10_000) == 300  # no overflow after days of failures


def test_unregister_sends_expires_zero_for_our_contact_only() -> None:
    """stop() while registered: REGISTER with Expires: 0 and our Contact (never `*`), with credentials;
    its 200 -> Unregistered, STOPPED, no timer left."""
    registration, registrar, last = registered(granted=120)
    registration.stop(5.0)
    request = one(registration)
    assert registration.state is RegistrationState.UNREGISTERING
    assert not registration.registered
    assert request.headers.get("Expires") == "0"
    assert request.headers.get("Contact") == last.headers.get("Contact")
    assert request.call_id == last.call_id
    assert request.cseq[0] == last.cseq[0] + 1
    assert registrar.verdict(request, 5.0) is DigestVerdict.OK
    registration.receive_data(answer(request, 200, "OK"), 5.1)
    assert registration.events_received() == [Unregistered(200)]
    assert registration.state is RegistrationState.STOPPED
    assert registration.next_deadline() is None
    registration.stop(6.0)
    assert registration.data_to_send() == []


def test_unregister_answers_a_challenge_and_gives_up_on_silence() -> None:
    """The un-REGISTER is challenged -> answered; then no answer for 64*T1 -> Unregistered(408)."""
    registration = new()
    registration.start(0.0)
    registration.receive_data(ok(one(registration)), 0.0)
    registration.events_received()
    registration.stop(1.0)
    request = one(registration)
    registration.receive_data(
        answer(request, 401, "", [("WWW-Authenticate", f'Digest realm="{REALM}", nonce="u"')]), 1
    )
    answered = one(registration)
    assert answered.headers.get("Expires") == "0"
    assert "Authorization" in answered.headers
    run(registration, 100.0)
    assert registration.events_received() == [Unregistered(408)]
    assert registration.state is RegistrationState.STOPPED


def test_stop_without_any_binding_sends_nothing() -> None:
    """Never started, or waiting to retry after failures only: stop() is STOPPED at once, silently."""
    idle = new()
    idle.stop(0.0)
    assert idle.state is RegistrationState.STOPPED
    assert idle.data_to_send() == []
    failed = new()
    failed.start(0.0)
    failed.receive_data(answer(one(failed), 403, "Forbidden"), 0.0)
    failed.stop(1.0)
    assert failed.state is RegistrationState.STOPPED
    assert failed.data_to_send() == []
    assert failed.next_deadline() is None


def test_stop_while_the_first_register_is_out_unregisters() -> None:
    """A REGISTER in flight may yet create a binding: stop() sends the un-REGISTER, and the late 200 of
    the first request is consumed as stray."""
    registration = new()
    registration.start(0.0)
    first = one(registration)
    registration.stop(0.1)
    assert one(registration).headers.get("Expires") == "0"
    assert registration.receive_data(ok(first), 0.2)
    assert registration.stray == 1
    assert registration.state is RegistrationState.UNREGISTERING


def test_udp_retransmissions_follow_timer_e_and_timer_f_fails_with_408() -> None:
    """No answer: retransmissions 0.5, 1.5, 3.5, 7.5 s after, then every T2 (4 s); at 64*T1 (32 s) a
    RegistrationFailed(408); a provisional response moves the interval straight to T2."""
    registration = new()
    registration.start(0.0)
    first = one(registration)
    out = run(registration, 32.0)
    times = [when for when, _ in out]
    assert times == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert all(request.cseq == first.cseq for _, request in out)
    [event] = registration.events_received()
    assert isinstance(event, RegistrationFailed)
    assert event.status == 408
    proceeding = new()
    proceeding.start(0.0)
    request = one(proceeding)
    assert [when for when, _ in run(proceeding, 1.0)] == [0.5]
    proceeding.receive_data(answer(request, 100, "Trying"), 1.0)
    assert [when for when, _ in run(proceeding, 10.0)] == [1.5, 5.5, 9.5]


def test_over_tcp_nothing_is_retransmitted() -> None:
    """transport=tcp: Contact and Via say TCP, the Request-URI keeps the transport, no Timer E."""
    registration = new(transport="tcp")
    registration.start(0.0)
    request = one(registration)
    assert request.uri == "sip:pbx.example.com:5060;transport=tcp"
    assert request.vias[0].transport == "TCP"
    assert (request.headers.get("Contact") or "").endswith(";transport=tcp>")
    assert [when for when, _ in run(registration, 40.0)] == []
    assert isinstance(registration.events_received()[0], RegistrationFailed)


def test_transport_error_counts_as_503() -> None:
    """send_failed (the registrar's name does not resolve): RegistrationFailed(503) and a retry."""
    registration = new()
    registration.start(0.0)
    one(registration)
    registration.send_failed(0.0, "cannot resolve pbx.example.com")
    assert registration.events_received() == [RegistrationFailed(503, "cannot resolve pbx.example.com", 30.0)]


def test_other_messages_are_left_to_the_user_agent() -> None:
    """Requests, responses of other Call-IDs and responses to other methods are not consumed; responses
    to an old CSeq of ours are consumed and counted as stray."""
    registration = new()
    registration.start(0.0)
    request = one(registration)
    other = SipRequest("REGISTER", request.uri, request.headers.copy())
    other.headers.set("Call-ID", "someone-else")
    assert not registration.receive_data(answer(other, 200), 0.0)
    invite = SipRequest("INVITE", "sip:1001@192.0.2.10", request.headers.copy())
    invite.headers.set("CSeq", "1 INVITE")
    assert not registration.receive_data(invite.serialize(), 0.0)
    assert not registration.receive_data(answer(invite, 200), 0.0)
    assert registration.state is RegistrationState.REGISTERING
    assert registration.stray == 0
    stale = SipRequest("REGISTER", request.uri, request.headers.copy())
    stale.headers.set("CSeq", "0 REGISTER")
    assert registration.receive_data(answer(stale, 200), 0.0)
    assert registration.stray == 1
    assert registration.registered is False


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, 300))
def test_garbage_with_our_call_id_never_raises(noise: bytes, cut: int) -> None:
    """Any bytes, even a response of ours cut short or with noise spliced in, never raise."""
    registration = new()
    registration.start(0.0)
    response = ok(one(registration))
    for data in (
        noise,
        response[:cut] + noise,
        b"SIP/2.0 200 OK\r\n" + registration.call_id.encode() + noise,
    ):
        registration.receive_data(data, 0.0)
    registration.tick(1.0)


SIP_ENV = {"SIP_LISTEN": "udp:127.0.0.1:5060", "SIP_USERNAME": "1001", "SIP_PASSWORD": PASSWORD}


@pytest.mark.parametrize(
    ("raw", "uri"),
    [
        ("sip:pbx.example.com:5060", "sip:pbx.example.com:5060"),
        ("pbx.example.com", "sip:pbx.example.com"),
        ("pbx.example.com:5080", "sip:pbx.example.com:5080"),
        ("localhost:5080", "sip:localhost:5080"),
        ("10.0.0.5", "sip:10.0.0.5"),
        ("sip:pbx.example.com;transport=udp", "sip:pbx.example.com;transport=udp"),
        ("", None),
    ],
)
def test_sip_registrar_setting_forms(raw: str, uri: str | None) -> None:
    """SIP_REGISTRAR takes a sip: URI or a bare HOST[:PORT]; it is kept as a sip: URI."""
    settings = load_settings({**SIP_ENV, "SIP_REGISTRAR": raw})
    assert settings.sip_registrar == uri
    assert settings.sip_register_expires == 300
    assert sip_settings_from(settings).registrar == uri


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIP_REGISTRAR": "sip:1001@pbx.example.com"}, "no user part"),
        ({"SIP_REGISTRAR": "sips:pbx.example.com"}, "sips"),
        ({"SIP_REGISTRAR": "sip:pbx.example.com;transport=tcp"}, "UDP only"),
        ({"SIP_REGISTRAR": "pbx example"}, "SIP_REGISTRAR"),
        ({"SIP_REGISTRAR": "pbx.example.com", "SIP_LISTEN": "tcp:127.0.0.1:5060"}, "udp: listener"),
        ({"SIP_REGISTRAR": "pbx.example.com", "SIP_USERNAME": "", "SIP_PASSWORD": ""}, "SIP_USERNAME"),
        ({"SIP_REGISTRAR": "pbx.example.com", "SIP_USERNAME": "a@b"}, "user part"),
        ({"SIP_REGISTER_EXPIRES": "5"}, "SIP_REGISTER_EXPIRES"),
    ],
)
def test_sip_registrar_setting_errors(env: dict[str, str], message: str) -> None:
    """A registrar the gateway cannot register with stops start-up with a message naming the problem."""
    with pytest.raises(ConfigError, match=message) as error:
        load_settings({**SIP_ENV, **env})
    assert PASSWORD not in str(error.value)
