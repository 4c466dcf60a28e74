"""TwiML that connects a call to a bidirectional Media Stream (`<Connect><Stream>`).

Twilio accepts only a `wss://` stream URL and refuses (or fails the upgrade on) a query string, so per-call
data travels as `<Parameter>`s and comes back in `start.customParameters`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

__all__ = ["XML_DECLARATION", "connect_stream_twiml"]

XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'
# Characters XML 1.0 cannot carry at all (not even escaped): they would make the document ill-formed.
_NOT_XML: Final = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _check_text(what: str, value: str) -> str:
    if _NOT_XML.search(value):
        raise ValueError(f"{what} contains a control character that XML cannot carry")
    return value


def _check_stream_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() != "wss":
        raise ValueError(f"stream url must use wss:// (Twilio error 31922), got {parts.scheme or 'none'}://")
    if not parts.hostname:
        raise ValueError("stream url has no host")
    if parts.query or "?" in url:
        raise ValueError("stream url must not have a query string; pass per-call data as parameters")
    if parts.fragment:
        raise ValueError("stream url must not have a fragment")
    return _check_text("stream url", url)


def _check_callback(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("status_callback must be an absolute http:// or https:// URL")
    return _check_text("status_callback", url)


def connect_stream_twiml(
    stream_url: str,
    parameters: Mapping[str, str],
    *,
    name: str | None = None,
    status_callback: str | None = None,
) -> str:
    """The TwiML document to answer the voice webhook with; raises ValueError on a URL Twilio refuses."""
    attributes = {"url": _check_stream_url(stream_url)}
    if name is not None:
        attributes["name"] = _check_text("name", name)
    if status_callback is not None:
        attributes["statusCallback"] = _check_callback(status_callback)
        attributes["statusCallbackMethod"] = "POST"
    response = ET.Element("Response")
    stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", attributes)
    for key, value in parameters.items():
        if not key:
            raise ValueError("parameter names must not be empty")
        ET.SubElement(
            stream,
            "Parameter",
            {"name": _check_text("parameter name", key), "value": _check_text(f"parameter {key!r}", value)},
        )
    return XML_DECLARATION + ET.tostring(response, encoding="unicode")
