"""Reading SignalWire's cXML answers in the tests (the fake leg is gateway/loadtest/legs/signalwire.py)."""

from __future__ import annotations

import xml.etree.ElementTree as ET


def stream_of(cxml: str) -> tuple[dict[str, str], dict[str, str]]:
    """The `<Stream>` attributes and `<Parameter>`s of a `<Connect><Stream>` cXML document."""
    stream = ET.fromstring(cxml).find("./Connect/Stream")
    assert stream is not None, cxml
    return dict(stream.attrib), {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}
