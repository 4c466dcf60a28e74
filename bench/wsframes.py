"""Just enough RFC 6455 for the capacity bench's lean peers, sans-I/O: handshakes, frames, masking.

Both lean peers (the Twilio client and the realtime stub) run hundreds of connections in one event loop
of one process, so they skip what a general library does per message: no per-frame random mask (the
client masks with one fixed key, so payloads can be masked once and reused; the peer unmasks every
frame either way, so its cost does not change), no fragmentation, no extensions, no UTF-8 validation,
and a server frame's payload is handed over as buffer offsets so the owner can look at a prefix only.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Final

__all__ = [
    "GUID",
    "MASK_KEY",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "FrameHeader",
    "HandshakeError",
    "accept_key",
    "apply_mask",
    "client_frame",
    "client_frame_header",
    "client_handshake",
    "close_payload",
    "parse_client_handshake",
    "read_frame_header",
    "server_frame",
    "server_handshake_response",
    "split_http_head",
    "unmask_prefix",
    "verify_server_handshake",
]

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MASK_KEY: Final = b"\x5a\x3c\x96\xe1"  # fixed: every client frame is masked with it (see the module doc)
OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
MAX_HEAD: Final = 16 * 1024  # an HTTP head longer than this is refused
_U16: Final = struct.Struct("!H")
_U64: Final = struct.Struct("!Q")

# (opcode, payload start, payload end, mask key or b"", fin)
FrameHeader = tuple[int, int, int, bytes, bool]


class HandshakeError(Exception):
    """The HTTP upgrade failed (bad status, missing or wrong headers)."""


def accept_key(key: bytes | str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key."""
    raw = key.encode("ascii") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + GUID).digest()).decode("ascii")


def client_handshake(
    host: str, port: int, path: str, key: str, headers: dict[str, str] | None = None
) -> bytes:
    """The client's upgrade request."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def split_http_head(buffer: bytes | bytearray) -> tuple[bytes, int] | None:
    """(the HTTP head, bytes it took including the blank line) once complete, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HandshakeError("HTTP head too long")
        return None
    return bytes(buffer[:end]), end + 4


def _header_map(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return out


def verify_server_handshake(head: bytes, key: str) -> None:
    """Check the server's answer to our upgrade: 101 and the right Sec-WebSocket-Accept."""
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        raise HandshakeError(f"upgrade refused: {lines[0].decode('latin-1', 'replace')}")
    if _header_map(lines[1:]).get("sec-websocket-accept") != accept_key(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept")


def parse_client_handshake(head: bytes) -> tuple[str, dict[str, str]]:
    """The path and (lower-cased) headers of an upgrade request; raises HandshakeError if it is not one."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET":
        raise HandshakeError("not a GET request")
    headers = _header_map(lines[1:])
    if headers.get("upgrade", "").lower() != "websocket" or "sec-websocket-key" not in headers:
        raise HandshakeError("not a WebSocket upgrade")
    return parts[1].decode("latin-1"), headers


def server_handshake_response(key: str) -> bytes:
    """The server's 101 answer to an upgrade with this Sec-WebSocket-Key."""
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
    ).encode("latin-1")


def apply_mask(data: bytes | bytearray | memoryview, key: bytes = MASK_KEY) -> bytes:
    """XOR `data` with the repeating 4-byte `key` (masking and unmasking are the same operation)."""
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


def unmask_prefix(buffer: bytes | bytearray, start: int, end: int, key: bytes, n: int) -> bytes:
    """The first `n` unmasked payload bytes of a frame at buffer[start:end] (fewer if it is shorter)."""
    stop = min(end, start + n)
    return apply_mask(buffer[start:stop], key) if key else bytes(buffer[start:stop])


def _length_field(n: int) -> bytes:
    if n < 126:
        return bytes((n,))
    if n < 65536:
        return b"\x7e" + _U16.pack(n)
    return b"\x7f" + _U64.pack(n)


def client_frame_header(opcode: int, n: int, key: bytes = MASK_KEY) -> bytes:
    """Header of a final, masked client frame with an `n`-byte payload (the mask bit and key included)."""
    field = _length_field(n)
    return bytes((0x80 | opcode, field[0] | 0x80)) + field[1:] + key


def client_frame(payload: bytes, opcode: int = OP_TEXT, key: bytes = MASK_KEY) -> bytes:
    """A whole client frame: header plus the masked payload."""
    return client_frame_header(opcode, len(payload), key) + apply_mask(payload, key)


def server_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """A whole (unmasked) server frame."""
    return bytes((0x80 | opcode,)) + _length_field(len(payload)) + payload


def close_payload(code: int, reason: str = "") -> bytes:
    """The payload of a close frame."""
    return _U16.pack(code) + reason.encode("utf-8")


def read_frame_header(buffer: bytes | bytearray, pos: int) -> FrameHeader | None:
    """The frame starting at buffer[pos], if it is all there: (opcode, start, end, mask key, fin).

    The payload is buffer[start:end], still masked with `mask key` (b"" for an unmasked frame).
    Returns None when more bytes are needed; the caller resumes from the same `pos` later.
    """
    avail = len(buffer) - pos
    if avail < 2:
        return None
    first = buffer[pos]
    second = buffer[pos + 1]
    n = second & 0x7F
    at = pos + 2
    if n == 126:
        if avail < 4:
            return None
        n = _U16.unpack_from(buffer, at)[0]
        at += 2
    elif n == 127:
        if avail < 10:
            return None
        n = _U64.unpack_from(buffer, at)[0]
        at += 8
    key = b""
    if second & 0x80:
        if len(buffer) < at + 4:
            return None
        key = bytes(buffer[at : at + 4])
        at += 4
    if len(buffer) < at + n:
        return None
    return first & 0x0F, at, at + n, key, bool(first & 0x80)
