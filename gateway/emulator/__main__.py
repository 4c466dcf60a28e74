"""Run the realtime-API emulator standalone: `python -m gateway.emulator --host 127.0.0.1 --port 8765`.

`--tool-rule 'pressed 9=end_call'` (repeatable) scripts the bot's function calls: the first response to
a user turn containing WHEN calls the tool after its spoken reply (`EmulatorConfig.tool_rules`).

Logs go to stderr as the gateway's do: at info the start-up line (`emulator.listening`, with its URLs)
and problems; `--log-level debug` (or LOG_LEVEL=debug) adds every connection and session.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
from collections.abc import Sequence

import structlog

from gateway.emulator.server import EmulatorServer
from gateway.emulator.session import EmulatorConfig, ToolRule
from gateway.logging import configure_logging

__all__ = ["build_parser", "config_from_args", "main"]

API_KEY_ENV = "EMULATOR_API_KEY"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "console")

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m gateway.emulator` (and `python -m gateway emulator`)."""
    parser = argparse.ArgumentParser(
        prog="gateway.emulator", description="Realtime-API emulator (GA and preview)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument(
        "--api-key", default=None, help=f"require this key (default: ${API_KEY_ENV}; unset = open)"
    )
    parser.add_argument("--reply-ms", type=int, default=2500, help="length of each bot reply")
    parser.add_argument("--delta-ms", type=int, nargs=2, default=(40, 240), metavar=("MIN", "MAX"))
    parser.add_argument(
        "--realtime-factor", type=float, default=4.0, help="send audio this much faster (0: at once)"
    )
    parser.add_argument("--response-delay-ms", type=int, default=0)
    parser.add_argument("--response-jitter-ms", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--session-expires-s", type=int, default=1800)
    parser.add_argument(
        "--drop-after-ms", type=int, default=None, help="fault: drop each socket this long after connect"
    )
    parser.add_argument(
        "--drop-after-responses", type=int, default=None, help="fault: drop after N responses"
    )
    parser.add_argument(
        "--error-after-responses", type=int, default=None, help="fault: send an error after N"
    )
    parser.add_argument(
        "--refuse-status", type=int, default=None, help="fault: refuse every handshake (401/403/429)"
    )
    parser.add_argument(
        "--tool-rule",
        action="append",
        default=[],
        type=_tool_rule,
        metavar="WHEN=TOOL[:ARGS-JSON][!]",
        help="call TOOL (with ARGS; after the spoken reply, or without one with a trailing !) in the first "
        "response to a user turn containing WHEN, once per session, e.g. 'pressed 9=end_call' (a key "
        "entry reads 'The caller pressed 9'; WHEN '*': any turn); repeatable",
    )
    parser.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=os.environ.get("LOG_LEVEL", "info").lower(),
        help="default: $LOG_LEVEL, else info; debug logs every connection",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("LOG_FORMAT", "json").lower(),
        help="default: $LOG_FORMAT, else json",
    )
    return parser


def _tool_rule(spec: str) -> ToolRule:
    try:
        return ToolRule.parse(spec)
    except ValueError as exc:  # argparse shows an ArgumentTypeError's message as it is
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Turn parsed arguments into an `EmulatorConfig`."""
    return EmulatorConfig(
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        reply_ms=args.reply_ms,
        delta_ms=(args.delta_ms[0], args.delta_ms[1]),
        realtime_factor=args.realtime_factor if args.realtime_factor > 0 else math.inf,
        response_delay_ms=args.response_delay_ms,
        response_jitter_ms=args.response_jitter_ms,
        seed=args.seed,
        session_expires_s=args.session_expires_s,
        drop_after_ms=args.drop_after_ms,
        drop_after_responses=args.drop_after_responses,
        error_after_responses=args.error_after_responses,
        refuse_status=args.refuse_status,
        tool_rules=tuple(args.tool_rule),
    )


async def _serve(server: EmulatorServer) -> None:
    await server.start()
    log.info("emulator.listening", url=server.url, ga_url=server.ga_url(), preview_url=server.preview_url())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # argparse checks the choices of command-line values only, not of defaults taken from the environment.
    if args.log_level not in LOG_LEVELS or args.log_format not in LOG_FORMATS:
        parser.error(f"LOG_LEVEL must be one of {LOG_LEVELS}, LOG_FORMAT one of {LOG_FORMATS}")
    configure_logging(args.log_level, args.log_format)
    server = EmulatorServer(config_from_args(args), host=args.host, port=args.port)
    asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
