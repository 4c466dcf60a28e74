"""What every provider dialect shares, sans-I/O: the stream skeleton and the JSON field parsers.

A dialect subclasses `BaseDialect` (or `TextDialect`, for providers that send text frames only) and
writes `_receive(text)`, which returns one event or raises `ViolationError`; `receive_text` turns that
into `ProtocolViolation(reason, fatal)`, so peer garbage never escapes as an exception. The parse
helpers raise `ViolationError` with the reason strings the dialects have always reported. Each dialect
keeps its own states, transition table and messages.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Collection, Mapping
from enum import Enum
from typing import Any, Final, Generic, TypeVar

from gateway.telephony.events import CallStarted, PlayedTo, ProtocolViolation, TelephonyEvent

__all__ = [
    "MAX_COUNTER_DIGITS",
    "BaseDialect",
    "TextDialect",
    "ViolationError",
    "counter_field",
    "decode_base64",
    "event_name",
    "is_counter",
    "load_object",
    "object_field",
    "other_stream",
    "out_of_order",
    "parse_or_fatal_start",
    "played_to",
    "refuse_binary",
    "string_field",
]

# Python refuses int() on very long digit strings (and they are never real counters or positions).
MAX_COUNTER_DIGITS: Final = 18

StateT = TypeVar("StateT", bound=Enum)


class ViolationError(Exception):
    """Raised while parsing one message; `receive_text` returns it as a ProtocolViolation."""

    def __init__(self, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal


def refuse_binary(data: bytes) -> ProtocolViolation:
    """The fatal violation for a binary frame from a provider that sends text only."""
    return ProtocolViolation(reason=f"unexpected binary frame ({len(data)} bytes)", fatal=True)


def load_object(text: str) -> Mapping[str, Any]:
    """A text frame as a JSON object; anything else is a fatal violation."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        raise ViolationError("text frame is not JSON", fatal=True) from None
    if not isinstance(msg, dict):
        raise ViolationError("text frame is not a JSON object", fatal=True)
    return msg


def event_name(msg: Mapping[str, Any], known: Collection[str], key: str = "event") -> str:
    """`msg[key]` if it is a string in `known`; else a (not fatal) violation naming what is wrong."""
    name = msg.get(key)
    if not isinstance(name, str):
        raise ViolationError(f"missing or non-string '{key}'")
    if name not in known:
        raise ViolationError(f"unknown {key} {name[:40]!r}")
    return name


def out_of_order(name: str, *, stopped: bool) -> ViolationError:
    """Why a Media Streams-like event `name` is illegal now (its pair is missing from the transition
    table): after stop or a duplicate `connected`, dropped; a second `start` or anything before it, fatal."""
    if stopped:
        return ViolationError(f"'{name}' after stop")
    if name == "connected":
        return ViolationError("duplicate 'connected'")
    if name == "start":
        return ViolationError("second 'start' on one stream", fatal=True)
    return ViolationError(f"'{name}' before start", fatal=True)


def other_stream(
    msg: Mapping[str, Any], key: str, call: CallStarted | None, name: str
) -> ViolationError | None:
    """A message that names (under `key`) a stream other than the started one is dropped, not fatal."""
    if call is not None and msg.get(key, call.stream_id) != call.stream_id:
        return ViolationError(f"'{name}' for another {key}")
    return None


def parse_or_fatal_start(
    parse: Callable[[Mapping[str, Any]], TelephonyEvent], msg: Mapping[str, Any], name: str
) -> TelephonyEvent:
    """`parse(msg)`; a malformed `start` is fatal (without a usable start there is no stream to talk to),
    any other malformed message is dropped."""
    try:
        return parse(msg)
    except ViolationError as violation:
        raise ViolationError(violation.reason, fatal=name == "start") from None


def object_field(parent: Mapping[str, Any], key: str, where: str | None = None) -> Mapping[str, Any]:
    """`parent[key]` if it is an object; the violation names `where.key`, or just `'key'` at the top."""
    value = parent.get(key)
    if not isinstance(value, dict):
        raise ViolationError(f"{where}.{key} must be an object" if where else f"'{key}' must be an object")
    return value


def string_field(parent: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    """`parent[key]` (or `default` when it is missing) if it is a string, else a violation."""
    value = parent.get(key, default)
    if not isinstance(value, str):
        raise ViolationError(f"{where}.{key} must be a string")
    return value


def is_counter(text: str) -> bool:
    """True for the decimal digits of a counter or position (not empty, not absurdly long)."""
    return 0 < len(text) <= MAX_COUNTER_DIGITS and text.isascii() and text.isdigit()


def counter_field(parent: Mapping[str, Any], key: str, where: str) -> int:
    """A non-negative counter sent as a string of digits (plain ints are accepted too)."""
    value = parent.get(key)
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and is_counter(value):
        return int(value)
    raise ViolationError(f"{where}.{key} must be a non-negative integer string")


def played_to(name: str, what: str) -> PlayedTo:
    """Our marks (`what`: mark, checkpoint) are named after the playback position they confirm; any
    other name is not ours."""
    if not is_counter(name):
        raise ViolationError(f"{what} {name[:40]!r} is not one the gateway sent")
    return PlayedTo(position=int(name))


def decode_base64(encoded: str, where: str) -> bytes:
    """Strict base64, else a (not fatal) violation naming `where`."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ViolationError(f"{where} is not valid base64") from None


class BaseDialect(Generic[StateT]):
    """The skeleton of one stream's protocol state: `state`, `call`, `can_send` and `receive_text`.

    A subclass passes its initial and its streaming state, sets `_state` and `_call` as messages
    arrive, and implements `_receive` (and `receive_bytes`, `playout`, `send`).
    """

    __slots__ = ("_call", "_state", "_streaming")

    def __init__(self, initial: StateT, streaming: StateT) -> None:
        self._state = initial
        self._streaming = streaming
        self._call: CallStarted | None = None

    @property
    def state(self) -> StateT:
        """The current state of the stream."""
        return self._state

    @property
    def call(self) -> CallStarted | None:
        """The stream's start (ids, parameters, audio format) once it has arrived, else None."""
        return self._call

    @property
    def can_send(self) -> bool:
        """True while `send` may be called: once the stream has started, until it stops."""
        return self._state is self._streaming

    def receive_text(self, text: str) -> TelephonyEvent:
        """Parse one text frame. A `ProtocolViolation` with `fatal=True` means: close the socket."""
        try:
            return self._receive(text)
        except ViolationError as violation:
            return ProtocolViolation(reason=violation.reason, fatal=violation.fatal)

    def _receive(self, text: str) -> TelephonyEvent:
        """One text frame's event; raises ViolationError for peer garbage."""
        raise NotImplementedError


class TextDialect(BaseDialect[StateT]):
    """A dialect whose provider sends JSON text frames only."""

    __slots__ = ()

    def receive_bytes(self, data: bytes) -> ProtocolViolation:
        """The provider never sends binary frames; the caller hands them here and closes the socket."""
        return refuse_binary(data)
