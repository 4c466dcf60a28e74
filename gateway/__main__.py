"""Command line: `python -m gateway serve` (the gateway) and `python -m gateway emulator` (the emulator)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

__all__ = ["main"]


def _serve(argv: list[str]) -> int:
    from gateway.config import describe_settings, load_settings
    from gateway.errors import ConfigError
    from gateway.logging import configure_logging
    from gateway.serve import run

    parser = argparse.ArgumentParser(
        prog="python -m gateway serve",
        description="Run the voice gateway. Every setting comes from an environment variable.",
        epilog=describe_settings(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    # SIGHUP only ever reloads BOTS_FILE (the app takes it over once it runs with one): before that, and
    # without one, it is ignored rather than ending the process (a worker the supervisor forwards it to).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = load_settings(os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        return run(settings)
    except ConfigError as exc:  # a setting only start-up can judge (a provider key that does not load)
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2


def _emulator(argv: list[str]) -> int:
    from gateway.emulator.__main__ import main as emulator_main

    return emulator_main(argv)


USAGE = """usage: python -m gateway COMMAND [--help]

commands:
  serve      run the gateway (settings from environment variables; `serve --help` lists them)
  emulator   run the realtime-API emulator on its own (`emulator --help` for its options)

other entry points:
  python -m gateway.loadtest   replay recorded calls against a gateway (needs the [loadtest] extra)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    args = sys.argv[1:] if argv is None else argv
    commands = {"serve": _serve, "emulator": _emulator}
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if not args or args[0] not in commands:
        print(USAGE, end="", file=sys.stderr)
        if args:
            print(f"unknown command: {args[0]}", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
