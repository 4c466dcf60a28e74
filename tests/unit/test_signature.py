"""Twilio request signatures: HMAC-SHA1 over the URL and sorted parameters, port variants, tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from gateway.telephony.signature import compute_signature, url_variants, validate_signature

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675310",
    "Digits": "1234",
    "From": "+14158675310",
    "To": "+18005551212",
}
# Published in Twilio's own signature-validation snippet (api-snippets, validateRequest) for the above.
PUBLISHED_SIGNATURE = "GvWf1cFY/Q7PnoempGyD5oXAezc="
STREAM_URL = "wss://gw.example.com/twilio/media"


def _reference(token: str, message: str) -> str:
    return base64.b64encode(hmac.new(token.encode(), message.encode(), hashlib.sha1).digest()).decode()


def test_published_vector() -> None:
    """The signature for Twilio's published example request is the one Twilio published."""
    assert compute_signature(TOKEN, URL, PARAMS) == PUBLISHED_SIGNATURE
    assert validate_signature(TOKEN, URL, PARAMS, PUBLISHED_SIGNATURE)


def test_matches_an_independent_hmac_over_sorted_pairs() -> None:
    """The signed string is the URL followed by name+value pairs sorted by name."""
    message = URL + "CallSidCA1234567890ABCDE" + "Caller+14158675310" + "Digits1234"
    message += "From+14158675310" + "To+18005551212"
    assert compute_signature(TOKEN, URL, dict(reversed(PARAMS.items()))) == _reference(TOKEN, message)


def test_websocket_upgrade_signs_the_bare_wss_url() -> None:
    """The Media Streams upgrade has no body: the signature covers the wss:// URL alone."""
    expected = _reference("secret-token", STREAM_URL)
    assert compute_signature("secret-token", STREAM_URL, {}) == expected
    assert compute_signature("secret-token", STREAM_URL, None) == expected
    assert validate_signature("secret-token", STREAM_URL, None, expected)


def test_repeated_parameters_sign_each_value_sorted() -> None:
    """A parameter with several values contributes name+value for each value, values sorted."""
    expected = _reference(TOKEN, URL + "Ab" + "Ma" + "Mz")
    assert compute_signature(TOKEN, URL, {"M": ["z", "a"], "A": "b"}) == expected


def test_non_ascii_values_are_utf8() -> None:
    """Parameters and URLs are signed as UTF-8."""
    assert compute_signature(TOKEN, URL, {"Body": "héllo ✓"}) == _reference(TOKEN, URL + "Bodyhéllo ✓")


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://mycompany.com:443/myapp.php?foo=1", "https://mycompany.com/myapp.php?foo=1"),
        ("https://mycompany.com/myapp.php?foo=1", "https://mycompany.com:443/myapp.php?foo=1"),
        ("wss://gw.example.com:443/media", "wss://gw.example.com/media"),
        ("wss://gw.example.com/media", "wss://gw.example.com:8443/media"),
        ("http://gw.example.com:80/hook", "http://gw.example.com/hook"),
    ],
)
def test_port_variants_validate(signed_url: str, request_url: str) -> None:
    """A signature over the URL with or without the port validates either way, as Twilio's validator does."""
    signature = compute_signature(TOKEN, signed_url, PARAMS)
    assert validate_signature(TOKEN, request_url, PARAMS, signature)


def test_url_variants_lists_the_candidates() -> None:
    """Variants are the URL itself plus the same URL without its port or with the scheme's default."""
    assert url_variants("wss://h.example/m") == ("wss://h.example/m", "wss://h.example:443/m")
    assert url_variants("ws://h.example/m") == ("ws://h.example/m", "ws://h.example:80/m")
    assert url_variants("https://h.example:8443/m?q=1") == (
        "https://h.example:8443/m?q=1",
        "https://h.example/m?q=1",
    )
    assert url_variants("wss://[::1]:9000/m") == ("wss://[::1]:9000/m", "wss://[::1]/m")
    assert url_variants("wss://h.example:bad/m") == ("wss://h.example:bad/m",)


@pytest.mark.parametrize(
    ("url", "params", "token"),
    [
        (URL, {**PARAMS, "Digits": "9999"}, TOKEN),
        (URL, {**PARAMS, "Extra": "1"}, TOKEN),
        (URL, {k: v for k, v in PARAMS.items() if k != "To"}, TOKEN),
        ("https://mycompany.com/myapp.php?foo=1&bar=3", PARAMS, TOKEN),
        ("http://mycompany.com/myapp.php?foo=1&bar=2", PARAMS, TOKEN),
        (URL, PARAMS, "54321"),
    ],
    ids=["changed value", "added param", "removed param", "changed query", "changed scheme", "wrong token"],
)
def test_tampering_fails(url: str, params: dict[str, str], token: str) -> None:
    """Any change to the URL, the parameters or the token makes the published signature invalid."""
    assert not validate_signature(token, url, params, PUBLISHED_SIGNATURE)


@pytest.mark.parametrize("signature", ["", "not-base64-at-all", PUBLISHED_SIGNATURE[:-2], "GvWf1cFY/Q7Pnoé"])
def test_malformed_signatures_fail(signature: str) -> None:
    """Empty, truncated, garbled or non-ASCII signature headers are rejected without raising."""
    assert not validate_signature(TOKEN, URL, PARAMS, signature)


def test_empty_token_never_validates() -> None:
    """With no auth token configured nothing validates, even a signature computed with the empty key."""
    assert not validate_signature("", URL, PARAMS, compute_signature("", URL, PARAMS))
