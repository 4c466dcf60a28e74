"""The capacity bench's hand-rolled WebSocket pieces (bench.wsframes), against RFC 6455 and websockets."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from bench.wsframes import (
    MASK_KEY,
    OP_BINARY,
    OP_TEXT,
    HandshakeError,
    accept_key,
    apply_mask,
    client_frame,
    client_handshake,
    parse_client_handshake,
    read_frame_header,
    server_frame,
    server_handshake_response,
    split_http_head,
    verify_server_handshake,
)


def _websockets_parse(data: bytes, *, mask: bool) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=mask)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
        return frame
    raise AssertionError("websockets wanted more bytes")


def test_accept_key_matches_rfc_example() -> None:
    """The Sec-WebSocket-Accept of RFC 6455's sample key is the RFC's value."""
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536])
def test_client_frame_is_read_back_and_by_websockets(size: int) -> None:
    """A masked client frame of each length class (7, 16, 64 bit) parses back, and websockets reads it."""
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    data = client_frame(payload)
    header = read_frame_header(data, 0)
    assert header is not None
    opcode, start, end, key, fin = header
    assert (opcode, end, key, fin) == (OP_TEXT, len(data), MASK_KEY, True)
    assert apply_mask(data[start:end], key) == payload
    frame = _websockets_parse(data, mask=True)
    assert frame.opcode is Opcode.TEXT
    assert frame.data == payload


@pytest.mark.parametrize("size", [3, 126, 70000])
def test_server_frame_is_unmasked_and_read_by_websockets(size: int) -> None:
    """A server frame carries no mask and websockets' client-side parser accepts it."""
    payload = b"x" * size
    data = server_frame(payload, OP_BINARY)
    header = read_frame_header(data, 0)
    assert header is not None
    assert header[0] == OP_BINARY
    assert header[3] == b""
    assert data[header[1] : header[2]] == payload
    assert _websockets_parse(data, mask=False).data == payload


def test_partial_frames_wait_for_more_bytes() -> None:
    """Fed byte by byte, no frame is reported until its last byte is there; then two frames in a row parse."""
    data = client_frame(b"a" * 300) + client_frame(b"bc")
    first_end = len(client_frame(b"a" * 300))
    for cut in range(first_end):
        assert read_frame_header(data[:cut], 0) is None
    first = read_frame_header(data, 0)
    assert first is not None
    assert first[2] == first_end
    second = read_frame_header(data, first_end)
    assert second is not None
    assert apply_mask(data[second[1] : second[2]], second[3]) == b"bc"


def test_handshake_both_ways() -> None:
    """Our request parses as an upgrade with its headers; our 101 verifies; a wrong key or status fails."""
    request = client_handshake("127.0.0.1", 80, "/media?x=1", "a2V5a2V5a2V5a2V5a2V5aw==", {"X-Id": "7"})
    split = split_http_head(request + b"extra")
    assert split is not None
    assert split[1] == len(request)
    path, headers = parse_client_handshake(split[0])
    assert path == "/media?x=1"
    assert headers["x-id"] == "7"
    answer = server_handshake_response(headers["sec-websocket-key"])
    verify_server_handshake(answer.split(b"\r\n\r\n")[0], "a2V5a2V5a2V5a2V5a2V5aw==")
    with pytest.raises(HandshakeError):
        verify_server_handshake(answer.split(b"\r\n\r\n")[0], "b3RoZXJvdGhlcm90aGVyIQ==")
    with pytest.raises(HandshakeError):
        verify_server_handshake(b"HTTP/1.1 403 Forbidden\r\n", "a2V5a2V5a2V5a2V5a2V5aw==")
    with pytest.raises(HandshakeError):
        parse_client_handshake(b"POST / HTTP/1.1\r\nUpgrade: websocket")
