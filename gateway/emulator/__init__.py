"""A realtime-API emulator: a real WebSocket server speaking the GA and preview (beta) protocols.

The embedded default backend for `make run` without credentials, for the test suite, and for load
tests. `EmulatorServer` is the socket layer; `EmulatorSession` holds the protocol semantics (sans-I/O).
"""

from collections.abc import Sequence

from gateway.emulator.server import EmulatorServer, HandshakeRejection
from gateway.emulator.session import (
    Accepted,
    CancelRecord,
    CloseSocket,
    EmulatorConfig,
    EmulatorSession,
    ItemRecord,
    Output,
    ReceivedAudio,
    Rejected,
    ResponseRecord,
    TruncationRecord,
    negotiate,
)
from gateway.emulator.vad import EnergyVad, VadSettings
from gateway.emulator.voice import reply_audio, synthesize_voice

__all__ = [
    "Accepted",
    "CancelRecord",
    "CloseSocket",
    "EmulatorConfig",
    "EmulatorServer",
    "EmulatorSession",
    "EnergyVad",
    "HandshakeRejection",
    "ItemRecord",
    "Output",
    "ReceivedAudio",
    "Rejected",
    "ResponseRecord",
    "TruncationRecord",
    "VadSettings",
    "main",
    "negotiate",
    "reply_audio",
    "synthesize_voice",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator from a command line (`python -m gateway.emulator --help`); returns the exit status."""
    # Imported here, not at the top: `python -m gateway.emulator` must find __main__ not yet imported.
    from gateway.emulator.__main__ import main as run

    return run(argv)
