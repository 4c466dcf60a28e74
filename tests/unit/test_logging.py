"""Structured logs: JSON lines, call ids from contextvars, secrets never written."""

from __future__ import annotations

import json

import pytest
import structlog

from gateway.logging import configure_logging


def test_json_lines_carry_bound_call_ids_and_redact_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    """A line logged inside a call has call_sid, and key-named fields or Bearer tokens are redacted."""
    configure_logging("info", "json")
    structlog.contextvars.bind_contextvars(call_sid="CA1")
    try:
        structlog.get_logger("t").info(
            "upstream",
            api_key="sk-abcdefghijkl",
            headers={"Authorization": "Bearer abcdefghijklmnop"},
            note="sent Bearer abcdefghijklmnop to sk-abcdefghijkl",
        )
    finally:
        structlog.contextvars.unbind_contextvars("call_sid")
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["call_sid"] == "CA1"
    assert line["event"] == "upstream"
    assert line["api_key"] == "<redacted>"
    assert line["headers"] == {"Authorization": "<redacted>"}
    assert "abcdefghijklmnop" not in line["note"]
    assert "sk-abcdefghijkl" not in line["note"]
