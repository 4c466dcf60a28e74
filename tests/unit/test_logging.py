"""Structured logs: JSON lines, call ids from contextvars, secrets never written."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from gateway.logging import QUIET_LIBRARY_LOGGERS, configure_logging


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the stdlib and structlog configuration back after each test here: later tests (in this process)
    must neither write to this test's closed capture stream nor lose debug lines to its level."""
    root = logging.getLogger()
    level = root.level
    libraries = {name: logging.getLogger(name).level for name in QUIET_LIBRARY_LOGGERS}
    config = structlog.get_config()
    yield
    # pytest's own capture handlers come and go with each test phase; only ours (bound to this test's
    # captured stderr) has to go.
    root.handlers[:] = [
        h for h in root.handlers if not isinstance(h.formatter, structlog.stdlib.ProcessorFormatter)
    ]
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)
    structlog.configure(**config)


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


AZURE_LOGGERS = ("azure", "azure.identity", "azure.core.pipeline.policies.http_logging_policy")


def test_azure_info_lines_only_at_debug(capsys: pytest.CaptureFixture[str]) -> None:
    """Azure Identity / azure-core loggers pass warnings but not info at "info", and info too at "debug"."""
    configure_logging("info", "json")
    for name in AZURE_LOGGERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
    logging.getLogger("azure.identity._credentials.environment").info("EnvironmentCredential will use x")
    assert capsys.readouterr().err == ""
    configure_logging("debug", "json")
    for name in AZURE_LOGGERS:
        assert logging.getLogger(name).isEnabledFor(logging.INFO), name
    logging.getLogger("azure.identity._credentials.environment").info("EnvironmentCredential will use x")
    line = json.loads(capsys.readouterr().err.strip())
    assert line["event"] == "EnvironmentCredential will use x"
    assert line["logger"] == "azure.identity._credentials.environment"


def test_websockets_info_only_at_debug_and_never_its_frames() -> None:
    """websockets' info lines (connection open, server listening) show only at "debug", its per-frame
    debug lines never."""
    configure_logging("info", "json")
    assert not logging.getLogger("websockets.server").isEnabledFor(logging.INFO)
    assert logging.getLogger("websockets.server").isEnabledFor(logging.WARNING)
    configure_logging("debug", "json")
    assert logging.getLogger("websockets.server").isEnabledFor(logging.INFO)
    assert not logging.getLogger("websockets.server").isEnabledFor(logging.DEBUG)
