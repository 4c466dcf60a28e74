"""TwiML for <Connect><Stream>: well-formed, escaped, and refusing URLs Twilio refuses."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from gateway.telephony.twiml import XML_DECLARATION, connect_stream_twiml

STREAM_URL = "wss://gw.example.com/twilio/media"


def _stream(xml: str) -> ET.Element:
    root = ET.fromstring(xml)
    assert root.tag == "Response"
    [connect] = list(root)
    assert connect.tag == "Connect"
    [stream] = list(connect)
    assert stream.tag == "Stream"
    return stream


def test_document_shape() -> None:
    """The answer is <Response><Connect><Stream url><Parameter name value/>... with a UTF-8 declaration."""
    xml = connect_stream_twiml(STREAM_URL, {"tenant": "acme", "session_token": "tok-1"})
    assert xml.startswith(XML_DECLARATION)
    stream = _stream(xml)
    assert stream.attrib == {"url": STREAM_URL}
    assert [(p.tag, p.attrib) for p in stream] == [
        ("Parameter", {"name": "tenant", "value": "acme"}),
        ("Parameter", {"name": "session_token", "value": "tok-1"}),
    ]


def test_name_and_status_callback() -> None:
    """name and statusCallback become attributes; the callback method is POST."""
    xml = connect_stream_twiml(
        STREAM_URL, {}, name="bot-leg", status_callback="https://gw.example.com/status"
    )
    assert _stream(xml).attrib == {
        "url": STREAM_URL,
        "name": "bot-leg",
        "statusCallback": "https://gw.example.com/status",
        "statusCallbackMethod": "POST",
    }


def test_special_characters_are_escaped() -> None:
    """Quotes, apostrophes, ampersands, angle brackets and newlines in parameters survive parsing intact."""
    tricky = {'we"ird & <name>': 'it\'s "quoted" & <tagged>\nnext line\ttab', "ü": "→ ✓"}
    xml = connect_stream_twiml(STREAM_URL, tricky, name='a"b&c')
    assert "&amp;" in xml
    assert "&quot;" in xml
    stream = _stream(xml)
    assert stream.attrib["name"] == 'a"b&c'
    assert {p.attrib["name"]: p.attrib["value"] for p in stream} == tricky


def test_uppercase_wss_scheme_is_accepted() -> None:
    """The scheme check is case-insensitive, as URL schemes are."""
    assert (
        _stream(connect_stream_twiml("WSS://gw.example.com/m", {})).attrib["url"] == "WSS://gw.example.com/m"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ws://gw.example.com/media", "wss://"),
        ("https://gw.example.com/media", "wss://"),
        ("/media", "wss://"),
        ("wss:///media", "no host"),
        ("wss://gw.example.com/media?token=abc", "query string"),
        ("wss://gw.example.com/media?", "query string"),
        ("wss://gw.example.com/media#frag", "fragment"),
    ],
)
def test_refused_stream_urls(url: str, message: str) -> None:
    """Non-wss URLs and URLs with a query string (or fragment) raise ValueError, as Twilio refuses them."""
    with pytest.raises(ValueError, match=message):
        connect_stream_twiml(url, {})


@pytest.mark.parametrize(
    ("parameters", "kwargs", "match"),
    [
        ({"": "x"}, {}, "must not be empty"),
        ({"bad": "nul\x00byte"}, {}, "control character"),
        ({"bell\x07": "x"}, {}, "control character"),
        ({}, {"name": "esc\x1b"}, "control character"),
        ({}, {"status_callback": "ftp://gw.example.com/status"}, "status_callback"),
        ({}, {"status_callback": "/relative"}, "status_callback"),
    ],
    ids=[
        "empty name",
        "nul in value",
        "control in name",
        "control in stream name",
        "ftp callback",
        "relative",
    ],
)
def test_refused_parameters(parameters: dict[str, str], kwargs: dict[str, str], match: str) -> None:
    """Empty names, characters XML cannot carry and non-http callbacks raise ValueError."""
    with pytest.raises(ValueError, match=match):
        connect_stream_twiml(STREAM_URL, parameters, **kwargs)
