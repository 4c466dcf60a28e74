"""How a call ended: one closed set, each outcome with its close code and the level of its summary line.

The provider's socket is closed with the outcome's code; `gateway_calls_total{outcome}` counts its label;
the `call_summary` line is logged at its level, so a failed call is never an info line.
"""

from __future__ import annotations

import logging
from enum import Enum

__all__ = ["Outcome"]

OK, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR = 1000, 1001, 1008, 1011  # RFC 6455 close codes


class Outcome(Enum):
    """A call's outcome: `label` (metric and close reason), `close_code`, `level` (summary log level)."""

    COMPLETED = ("completed", OK, logging.INFO)
    MAX_DURATION = ("max_duration", OK, logging.INFO)
    TRANSFERRED = ("transferred", OK, logging.INFO)  # handed to another party (transfer_call, REFER)
    BOT_HANGUP = ("bot_hangup", OK, logging.INFO)  # the bot's end_call, after its goodbye played
    SHUTDOWN = ("shutdown", GOING_AWAY, logging.INFO)
    CALLER_TIMEOUT = ("caller_timeout", GOING_AWAY, logging.WARNING)
    PROTOCOL_ERROR = ("protocol_error", POLICY_VIOLATION, logging.WARNING)
    START_TIMEOUT = ("start_timeout", POLICY_VIOLATION, logging.WARNING)
    REJECTED = ("rejected", POLICY_VIOLATION, logging.WARNING)
    FLOOD = ("flood", POLICY_VIOLATION, logging.WARNING)
    SLOW_CONSUMER = ("slow_consumer", INTERNAL_ERROR, logging.WARNING)
    UPSTREAM_FAILED = ("upstream_failed", INTERNAL_ERROR, logging.WARNING)
    UPSTREAM_CLOSED = ("upstream_closed", INTERNAL_ERROR, logging.WARNING)
    ERROR = ("error", INTERNAL_ERROR, logging.ERROR)  # a bug of ours ended the call

    def __init__(self, label: str, close_code: int, level: int) -> None:
        self.label = label
        self.close_code = close_code
        self.level = level

    @property
    def failed(self) -> bool:
        """The call did not end the way a call should (hang-up, duration limit, shutdown)."""
        return self.level > logging.INFO
