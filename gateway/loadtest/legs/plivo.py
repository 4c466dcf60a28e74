"""A fake Plivo for the integration tests: a real WebSocket client speaking Plivo Audio Streams.

The shared `FakePhone` (gateway/loadtest/legs/common.py) on Plivo's wire (`PlivoWire` in
gateway/loadtest/wires.py): it opens the stream as Plivo does (the upgrade signed with
`X-Plivo-Signature-V3` when given the auth token; no `connected`, a `start` carrying `extra_headers`),
sends `media` (numeric `sequenceNumber` and `chunk`, epoch-ms `timestamp`) and `dtmf`, plays `playAudio`
at real time (refusing it unless it is in the stream's own format), answers a `checkpoint` with
`playedStream` only once the audio before it has played, and on `clearAudio` drops the queue, answers
`clearedAudio` and never confirms the checkpoints it dropped (Plivo confirms only audio that really
played). It hangs up by closing the socket: Plivo sends no stop message.
"""

from __future__ import annotations

import uuid

from gateway.loadtest.legs.common import FakePhone
from gateway.loadtest.wires import make_wire
from gateway.telephony.plivo import FORMATS, NONCE_HEADER, SIGNATURE_HEADER, compute_signature

__all__ = ["NONCE", "FakePlivo"]

NONCE = "05429567804466091622"


class FakePlivo(FakePhone):
    """Plivo's side of a bidirectional `<Stream>`, in mu-law at 8 kHz unless told another format.

    `extra_headers` is the answer's `extraHeaders` attribute as written (`k=v,k=v`); the stream's
    `start` hands its pairs back, after the call's own `CallUUID` unless they name one."""

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
        pairs = dict(pair.split("=", 1) for pair in extra_headers.split(",") if pair)
        wire = make_wire("plivo", call_id or str(uuid.uuid4()), pairs, FORMATS[(encoding, sample_rate)])
        super().__init__(url, wire, headers=headers)

    @property
    def cleared_audio_sent(self) -> int:
        """`clearedAudio` answers sent: one for every `clearAudio` (PlivoWire.flushed)."""
        return len(self.clears)
