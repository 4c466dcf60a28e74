"""A fake Telnyx for the integration tests: a real WebSocket client speaking Telnyx Media Streaming.

`FakeTelnyx` is the shared `FakePhone` (gateway/loadtest/legs/common.py) on Telnyx's wire
(`TelnyxWire` in gateway/loadtest/wires.py, PROTOCOLS.md 2.1): `connected`, `start` (with
`custom_parameters` and `media_format`), `media`, `dtmf`, `stop`, and mark echoes; on `clear` it echoes
the pending marks at once, as Telnyx documents.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from gateway.loadtest.legs.common import FRAME_MS, FakePhone, HeardClear, monotonic_ms
from gateway.loadtest.wires import make_wire
from gateway.telephony.telnyx import CODECS
from telcodec import WireFormat

__all__ = ["FRAME_MS", "FakePhone", "FakeTelnyx", "HeardClear", "monotonic_ms"]


class FakeTelnyx(FakePhone):
    """Telnyx's side of a TeXML `<Connect><Stream>` (bidirectional RTP mode, PCMU at 8 kHz unless
    `encoding` says PCMA)."""

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: Mapping[str, str] | None = None,
        call_control_id: str | None = None,
        encoding: str = "PCMU",
    ) -> None:
        call_id = call_control_id or "v3:" + uuid.uuid4().hex
        super().__init__(
            url, make_wire("telnyx", call_id, custom_parameters, WireFormat(CODECS[encoding], 8000))
        )
