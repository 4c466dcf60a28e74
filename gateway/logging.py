"""structlog set-up: one JSON object per line, call ids bound through contextvars, secrets redacted.

Bind `call_sid`/`stream_sid` with `structlog.contextvars.bind_contextvars` inside the call's task; every
line logged by that task (and the tasks it starts) then carries them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["QUIET_LIBRARY_LOGGERS", "SECRET_KEY_PATTERN", "configure_logging", "redact_secrets"]

# Keys whose values are never written, whatever logged them.
SECRET_KEY_PATTERN = re.compile(r"(api[-_]?key|token|secret|password|authorization|signature)", re.I)
# Values that look like credentials even under an innocent key (Bearer tokens, OpenAI keys).
_SECRET_VALUE = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]{8,}|\bsk-[A-Za-z0-9_-]{8,}")
# Libraries whose info lines are chatter to an operator ("server listening", "connection open",
# "DefaultAzureCredential acquired a token from ..."): warnings only, unless LOG_LEVEL=debug, which shows
# them from the level given here (websockets' own debug is a line per frame, too much even then).
QUIET_LIBRARY_LOGGERS = {"websockets": logging.INFO, "azure": logging.DEBUG}


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _SECRET_VALUE.sub(lambda m: (m.group(1) or "") + "<redacted>", value)
    if isinstance(value, dict):
        return {k: "<redacted>" if SECRET_KEY_PATTERN.search(str(k)) else _scrub(v) for k, v in value.items()}
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: blank secret-named keys and credential-shaped substrings."""
    for key in list(event_dict):
        if SECRET_KEY_PATTERN.search(key):
            event_dict[key] = "<redacted>"
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route structlog (and the stdlib loggers of aiohttp, websockets, azure) to stderr in one format;
    the libraries' info chatter only at `level` debug."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for name, debug_level in QUIET_LIBRARY_LOGGERS.items():
        quiet = max(numeric, logging.WARNING)
        logging.getLogger(name).setLevel(debug_level if numeric <= logging.DEBUG else quiet)
