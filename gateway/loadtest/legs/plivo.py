"""A fake Plivo for the integration tests: a real WebSocket client speaking Plivo Audio Streams.

Built on the shared `FakePhone` (gateway/loadtest/legs/common.py): it opens the stream as Plivo does
(the upgrade signed with `X-Plivo-Signature-V3` when given the auth token; no `connected`, a `start`
carrying `extra_headers`), sends `media` (numeric `sequenceNumber` and `chunk`, epoch-ms `timestamp`) and
`dtmf`, plays `playAudio` at real time (checking it is in the stream's own format), answers a
`checkpoint` with `playedStream` only once the audio before it has played, and on `clearAudio` drops the
queue, answers `clearedAudio` and never confirms the checkpoints it dropped (Plivo confirms only audio
that really played). It hangs up by closing the socket: Plivo sends no stop message.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

from gateway.loadtest.legs.common import FakePhone
from gateway.telephony.plivo import NONCE_HEADER, SIGNATURE_HEADER, compute_signature

__all__ = ["NONCE", "FakePlivo"]

NONCE = "05429567804466091622"


class FakePlivo(FakePhone):
    """Plivo's side of a bidirectional `<Stream>`, in mu-law at 8 kHz unless told another format."""

    def __init__(
        self,
        url: str,
        *,
        extra_headers: str = "",
        call_id: str | None = None,
        encoding: str = "audio/x-mulaw",
        sample_rate: int = 8000,
        auth_token: str | None = None,
        signed_url: str | None = None,
    ) -> None:
        headers = {}
        if auth_token is not None:
            signature = compute_signature(auth_token, "GET", signed_url or url, {}, NONCE)
            headers = {SIGNATURE_HEADER: signature, NONCE_HEADER: NONCE}
        per_ms = 8 if encoding == "audio/x-mulaw" else 2 * sample_rate // 1000
        super().__init__(url, headers=headers, bytes_per_ms=per_ms)
        self.extra_headers = extra_headers
        self.call_id = call_id or str(uuid.uuid4())
        self.stream_id = str(uuid.uuid4())
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.cleared_audio_sent = 0

    def _epoch_ms(self) -> str:
        return str(int(time.time() * 1000))

    def opening_messages(self) -> list[dict[str, Any]]:
        """Only `start`: call and stream ids, the format, and the answer's extraHeaders as `k=v;k=v`."""
        start = {
            "callId": self.call_id,
            "streamId": self.stream_id,
            "accountId": "MA" + "X" * 18,
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": self.encoding, "sampleRate": self.sample_rate},
        }
        message = {"event": "start", "sequenceNumber": self.next_sequence(), "start": start}
        return [{**message, "extra_headers": self.extra_headers.replace(",", ";")}]

    def media_message(self, payload: str) -> dict[str, Any]:
        """Numeric counters, an epoch-ms timestamp as a string."""
        media = {"track": "inbound", "timestamp": self._epoch_ms(), "chunk": self.chunk, "payload": payload}
        return {
            "event": "media",
            "sequenceNumber": self.next_sequence(),
            "streamId": self.stream_id,
            "media": media,
            "extra_headers": self.extra_headers,
        }

    def dtmf_message(self, digit: str) -> dict[str, Any]:
        """The digit under `dtmf.digit`."""
        return {
            "event": "dtmf",
            "sequenceNumber": self.next_sequence(),
            "streamId": self.stream_id,
            "dtmf": {"track": "inbound", "digit": digit, "timestamp": self._epoch_ms()},
            "extra_headers": self.extra_headers,
        }

    def confirmation(self, name: str) -> dict[str, Any]:
        """`playedStream`: the audio before the checkpoint has played."""
        return {
            "event": "playedStream",
            "sequenceNumber": self.next_sequence(),
            "streamId": self.stream_id,
            "name": name,
        }

    def stop_messages(self) -> list[dict[str, Any]]:
        """None: Plivo just closes the socket."""
        return []

    def on_message(self, data: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """`playAudio` plays, `checkpoint` waits for its audio, `clearAudio` drops both."""
        event = data["event"]
        if event == "playAudio":
            media = data["media"]
            if (media["contentType"], media["sampleRate"]) != (self.encoding, self.sample_rate):
                self.protocol_errors.append(
                    f"playAudio in {media['contentType']} at {media['sampleRate']} Hz"
                )
            return self.confirmations(self.play(base64.b64decode(media["payload"], validate=True), now))
        if data.get("streamId") != self.stream_id:
            self.protocol_errors.append(f"{event} for stream {data.get('streamId')!r}")
        if event == "checkpoint":
            return self.confirmations(self.request(data["name"], now))
        if event == "clearAudio":
            self.cleared_audio_sent += 1
            cleared = {
                "event": "clearedAudio",
                "sequenceNumber": self.next_sequence(),
                "streamId": self.stream_id,
            }
            return [*self.confirmations(self.clear(now, confirm_pending=False)), cleared]
        self.protocol_errors.append(f"unexpected event {event!r}")
        return []
