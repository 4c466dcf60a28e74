"""A fake Telnyx for the integration tests: a real WebSocket client speaking Telnyx Media Streaming.

`FakeTelnyx` builds on the shared `FakePhone` (gateway/loadtest/legs/common.py) and speaks Telnyx's
layouts (PROTOCOLS.md 2.1): `connected`, `start` (with `custom_parameters` and `media_format`), `media`,
`dtmf`, `stop`, and mark echoes; on `clear` it echoes the pending marks at once, as Telnyx documents.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping
from typing import Any

from gateway.loadtest.legs.common import FRAME_MS, FakePhone, HeardClear, monotonic_ms

__all__ = ["FRAME_MS", "FakePhone", "FakeTelnyx", "HeardClear", "monotonic_ms"]


class FakeTelnyx(FakePhone):
    """Telnyx's side of a TeXML `<Connect><Stream>` (bidirectional RTP mode, PCMU at 8 kHz)."""

    def __init__(
        self,
        url: str,
        *,
        custom_parameters: Mapping[str, str] | None = None,
        call_control_id: str | None = None,
        encoding: str = "PCMU",
    ) -> None:
        super().__init__(url)
        self.custom_parameters = dict(custom_parameters or {})
        self.call_control_id = call_control_id or "v3:" + uuid.uuid4().hex
        self.stream_id = str(uuid.uuid4())
        self.encoding = encoding

    def opening_messages(self) -> list[dict[str, Any]]:
        """`connected`, then `start` with the TeXML `<Parameter>`s and the media format."""
        start = {
            "user_id": str(uuid.uuid4()),
            "call_control_id": self.call_control_id,
            "call_session_id": str(uuid.uuid4()),
            "from": "+13122010094",
            "to": "+13122123456",
            "custom_parameters": self.custom_parameters,
            "media_format": {"encoding": self.encoding, "sample_rate": 8000, "channels": 1},
        }
        return [
            {"event": "connected", "version": "1.0.0"},
            {
                "event": "start",
                "sequence_number": str(self.next_sequence()),
                "stream_id": self.stream_id,
                "start": start,
            },
        ]

    def media_message(self, payload: str) -> dict[str, Any]:
        """Counters travel as decimal strings."""
        media = {
            "track": "inbound",
            "chunk": str(self.chunk),
            "timestamp": str(int(self.caller_audio_ms)),
            "payload": payload,
        }
        return {
            "event": "media",
            "sequence_number": str(self.next_sequence()),
            "stream_id": self.stream_id,
            "media": media,
        }

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        """The digit under `dtmf.digit`."""
        return {
            "event": "dtmf",
            "sequence_number": str(self.next_sequence()),
            "stream_id": self.stream_id,
            "dtmf": {"digit": digit},
        }

    def confirmation(self, name: str) -> dict[str, Any]:
        """A mark echo."""
        return {
            "event": "mark",
            "sequence_number": str(self.next_sequence()),
            "stream_id": self.stream_id,
            "mark": {"name": name},
        }

    def stop_messages(self) -> list[dict[str, Any]]:
        """`stop`, then Telnyx closes the socket."""
        stop = {"call_control_id": self.call_control_id}
        return [
            {
                "event": "stop",
                "sequence_number": str(self.next_sequence()),
                "stream_id": self.stream_id,
                "stop": stop,
            }
        ]

    def on_message(self, data: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """`media` plays, `mark` queues an echo, `clear` flushes and echoes every pending mark at once."""
        event = data["event"]
        if event == "media":
            due = self.play(base64.b64decode(data["media"]["payload"], validate=True), now)
        elif event == "mark":
            due = self.request(data["mark"]["name"], now)
        elif event == "clear":
            due = self.clear(now, confirm_pending=True)
        else:
            self.protocol_errors.append(f"unexpected event {event!r}")
            return []
        return self.confirmations(due)
