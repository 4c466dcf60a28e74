"""Upstream helpers that need no socket."""

from __future__ import annotations

from gateway.realtime.upstream import client_request_id


def test_client_request_id_is_a_guid_per_call() -> None:
    """A CallSid maps onto the GUID Azure's x-ms-client-request-id expects; other ids are hashed stably."""
    assert client_request_id("CA" + "0123456789abcdef" * 2) == "01234567-89ab-cdef-0123-456789abcdef"
    assert client_request_id("call-7") == client_request_id("call-7")
    assert len(client_request_id("call-7")) == 36
