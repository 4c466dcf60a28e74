"""Command line: `python -m gateway.loadtest --url ws://HOST:PORT/media [options]`, or `--embedded`.

Replays recorded calls against a gateway as a provider would (`--provider`: Twilio by default, or any
provider the gateway serves, on its `/P/media` route), or as a SIP trunk would (`--sip HOST:PORT`, or
`--sip` with `--embedded`: INVITE, RTP, BYE; `gateway.loadtest.sip_call`), and reports what callers
experienced. Each run writes into its own folder, `--output`/<UTC start>-<run id>/ (summary.txt,
results.json, report.html), and points `--output`/latest at it. Exit status: 0 when every call
completed, 1 when some failed, 2 on bad usage (options, scenario files, recordings) or when the
`loadtest` extra (rich, matplotlib) is not installed.

The bot's tools (`--embedded`): the emulator calls a tool when a user turn matches one of its
`--tool-rule`s (`WHEN=TOOL[:ARGUMENTS-JSON][!]`, e.g. `pressed 9=end_call`), and the gateway offers the
tools named by `--bot-tools` (BOT_TOOLS), transferring to `--transfer-to` (TRANSFER_TO). When a scenario
of the mix ends with `expect_end` (tool_hangup, tool_transfer) and no rule is given, the rules are
DEFAULT_TOOL_RULES (key 9 ends the call, key 0 transfers it to DEFAULT_TRANSFER_TO). With rules, the
gateway offers the built-in tools they name and takes each key as an entry of its own
(DTMF_MAX_DIGITS=1), unless the options or `--gateway-env` say otherwise. A transfer over a provider's
stream goes through the provider's REST API, which an embedded gateway has not: a scenario expecting a
transfer runs embedded over SIP only (`--sip`), where the gateway REFERs the simulated phone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import math
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from gateway.call.tools import BUILTIN_TOOLS, TRANSFER_CALL
from gateway.config import load_settings
from gateway.emulator import EmulatorConfig
from gateway.emulator.session import ToolRule
from gateway.loadtest.recordings import Recording, RecordingError
from gateway.loadtest.report import new_run_folder, point_latest, render_text, write_outputs
from gateway.loadtest.runner import (
    LiveStats,
    RunConfig,
    RunResult,
    embedded_target,
    media_url,
    new_run_id,
    run_load,
)
from gateway.loadtest.script import DEFAULT_SCENARIO_DIR, Scenario, ScenarioError, parse_mix, resolve_scenario
from gateway.loadtest.sip_call import parse_target
from gateway.loadtest.wires import PROVIDERS, parse_format

__all__ = [
    "DEFAULT_TOOL_RULES",
    "DEFAULT_TRANSFER_TO",
    "EXTRA_MODULES",
    "FAULTS",
    "build_parser",
    "gateway_env",
    "main",
    "missing_extra",
    "tool_rules",
]

FAULTS = (
    "drop_after_ms",
    "drop_after_responses",
    "drop_close_code",
    "error_after_responses",
    "refuse_status",
    "created_delay_ms",
)
EXIT_OK, EXIT_FAILED_CALLS, EXIT_USAGE = 0, 1, 2
EXTRA_MODULES = ("rich", "matplotlib")  # the `loadtest` extra: live progress, the report's plots
DEFAULT_TRANSFER_TO = "+15550100"
DEFAULT_TOOL_RULES = (
    "pressed 9=end_call",
    f'pressed 0=transfer_call:{{"destination": "{DEFAULT_TRANSFER_TO}"}}',
)
TOOL_OPTIONS = ("tool_rule", "bot_tools", "transfer_to")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.loadtest",
        description="Replay recorded calls against a gateway as a telephony provider would; measure and "
        "report.",
    )
    target = parser.add_argument_group("target")
    target.add_argument(
        "--url",
        help="the gateway's media WebSocket (ws://127.0.0.1:8080/media), or its base (ws://127.0.0.1:8080) "
        "to use the provider's route /P/media",
    )
    target.add_argument(
        "--provider",
        choices=PROVIDERS,
        default="twilio",
        help="whose media stream each call plays (default twilio)",
    )
    target.add_argument(
        "--format",
        metavar="ENCODING/RATE",
        help="the stream's audio format, e.g. l16/16000 or alaw/8000 (default: the provider's usual)",
    )
    target.add_argument(
        "--sip",
        nargs="?",
        const="embedded",
        metavar="HOST:PORT",
        help="place the calls over SIP/RTP to the gateway's SIP listener (UDP); with --embedded, no address",
    )
    target.add_argument(
        "--playout-delay-ms",
        type=float,
        default=40.0,
        help="SIP: the simulated phone's jitter buffer, what it holds before playing (default 40, the "
        "gateway's SIP_JITTER_MS default)",
    )
    target.add_argument(
        "--twilio-auth-token", help="sign /twiml and /media as Twilio does (the gateway's token)"
    )
    target.add_argument("--public-url", help="the https:// base Twilio would use (default: from --url)")
    load = parser.add_argument_group("load")
    load.add_argument("--calls", type=int, help="calls in total (default 10; unlimited with --duration)")
    load.add_argument("--concurrency", type=int, default=10, help="calls at once (default 10)")
    load.add_argument("--ramp-up", type=float, default=0.0, metavar="SECONDS", help="spread the first wave")
    load.add_argument("--duration", type=float, metavar="SECONDS", help="stop starting calls after this")
    load.add_argument(
        "--scenario",
        action="append",
        metavar="NAME[:WEIGHT]",
        help="a scenario name (in --scenario-dir) or file, with an optional weight; repeatable "
        "(default: question_answer)",
    )
    load.add_argument("--scenario-dir", type=Path, default=DEFAULT_SCENARIO_DIR, help="where names are found")
    load.add_argument("--seed", type=int, default=0, help="the embedded emulator's randomness")
    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        type=Path,
        default=Path("loadtest-out"),
        help="where each run gets its own folder, <UTC start>-<run id>/, and `latest` points at the last "
        "(default loadtest-out/)",
    )
    out.add_argument("--no-progress", action="store_true", help="no live progress display")
    out.add_argument("--log-level", default="warning", help="log level of the embedded gateway and emulator")
    emb = parser.add_argument_group("embedded (an in-process emulator and gateway on loopback)")
    emb.add_argument(
        "--embedded", action="store_true", help="start an emulator and a gateway in this process"
    )
    emb.add_argument("--reply-ms", type=int, default=2500, help="length of each bot reply")
    emb.add_argument("--response-delay-ms", type=int, default=0, help="delay before a response's audio")
    emb.add_argument("--response-jitter-ms", type=int, default=0, help="random extra delay, up to this")
    emb.add_argument("--realtime-factor", type=float, default=4.0, help="bot audio speed (0: all at once)")
    emb.add_argument("--delta-ms", type=int, nargs=2, default=(40, 240), metavar=("MIN", "MAX"))
    emb.add_argument(
        "--fault", action="append", default=[], metavar="NAME=VALUE", help=f"one of {', '.join(FAULTS)}"
    )
    emb.add_argument("--greeting", help="BOT_GREETING for the embedded gateway (the bot speaks first)")
    emb.add_argument(
        "--gateway-env", action="append", default=[], metavar="KEY=VALUE", help="gateway setting"
    )
    emb.add_argument(
        "--tool-rule",
        action="append",
        default=[],
        metavar="WHEN=TOOL[:ARGS-JSON][!]",
        help="the emulator calls TOOL (with ARGS, after its spoken reply; none with !) in its first response "
        "to a user turn containing WHEN, e.g. 'pressed 9=end_call' (a key is 'The caller pressed 9'); "
        "repeatable. Default, when a scenario ends with expect_end (tool_hangup, tool_transfer): "
        + " and ".join(repr(rule) for rule in DEFAULT_TOOL_RULES),
    )
    emb.add_argument(
        "--bot-tools",
        metavar="NAMES",
        help="BOT_TOOLS of the embedded gateway (default with rules: the built-in tools they name); with "
        "rules, DTMF_MAX_DIGITS=1 too, so that a single key is a turn",
    )
    emb.add_argument(
        "--transfer-to",
        metavar="NUMBERS",
        help=f"TRANSFER_TO of the embedded gateway (default {DEFAULT_TRANSFER_TO} when transfer_call is "
        "offered). A transfer needs --sip: over a provider's stream it goes through the provider's REST "
        "API, which an embedded run has not",
    )
    return parser


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = value
    return out


def tool_rules(args: argparse.Namespace, mix: Sequence[tuple[Scenario, float]]) -> tuple[ToolRule, ...]:
    """The embedded emulator's scripted tool calls: `--tool-rule`, else DEFAULT_TOOL_RULES when a
    scenario of the mix waits for the gateway to end the call (ValueError for a malformed rule)."""
    specs = args.tool_rule or (DEFAULT_TOOL_RULES if any(s.expected_end for s, _ in mix) else ())
    rules = []
    for spec in specs:
        try:
            rules.append(ToolRule.parse(spec))
        except ValueError as exc:  # says which option held the rule
            raise ValueError(f"--tool-rule {spec!r}: {exc}") from None
    return tuple(rules)


def gateway_env(args: argparse.Namespace, rules: Sequence[ToolRule]) -> dict[str, str]:
    """The embedded gateway's settings: `--gateway-env`, then the tools: `--bot-tools` and
    `--transfer-to` where given, else what the rules need (see the module docstring)."""
    env = _pairs(args.gateway_env, "--gateway-env")
    env.setdefault("LOG_LEVEL", args.log_level)
    if args.greeting:
        env["BOT_GREETING"] = args.greeting
    if args.twilio_auth_token:
        env["TWILIO_AUTH_TOKEN"] = args.twilio_auth_token
    named = ",".join(dict.fromkeys(rule.tool for rule in rules if rule.tool in BUILTIN_TOOLS))
    if args.bot_tools:
        env["BOT_TOOLS"] = args.bot_tools
    elif named:
        env.setdefault("BOT_TOOLS", named)
    if args.transfer_to:
        env["TRANSFER_TO"] = args.transfer_to
    elif TRANSFER_CALL in env.get("BOT_TOOLS", "").replace(" ", "").split(","):
        env.setdefault("TRANSFER_TO", DEFAULT_TRANSFER_TO)
    if rules:
        env.setdefault("DTMF_MAX_DIGITS", "1")
    return env


def _check_transfers(args: argparse.Namespace, mix: Sequence[tuple[Scenario, float]]) -> None:
    """An embedded run over a provider's stream cannot transfer (no REST API): refuse such a scenario."""
    if not args.embedded or args.sip:
        return
    for scenario, _ in mix:
        end = scenario.expected_end
        if end is not None and end.outcome == "transferred":
            raise ValueError(
                f"scenario {scenario.name} expects a transfer: over a provider's media stream the gateway "
                "transfers through the provider's REST API, which an embedded run has not; run it over "
                "SIP (--embedded --sip), where the gateway REFERs the simulated phone"
            )


def emulator_config(args: argparse.Namespace, rules: Sequence[ToolRule] = ()) -> EmulatorConfig:
    """The embedded emulator's configuration from the options (and its tool rules)."""
    faults: dict[str, int] = {}
    for key, value in _pairs(args.fault, "--fault").items():
        if key not in FAULTS:
            raise ValueError(f"--fault {key}: unknown fault (one of {', '.join(FAULTS)})")
        if not value.isdigit():
            raise ValueError(f"--fault {key}={value}: the value must be a whole number")
        faults[key] = int(value)
    factor = args.realtime_factor if args.realtime_factor > 0 else math.inf
    return EmulatorConfig(
        reply_ms=args.reply_ms,
        delta_ms=(args.delta_ms[0], args.delta_ms[1]),
        realtime_factor=factor,
        response_delay_ms=args.response_delay_ms,
        response_jitter_ms=args.response_jitter_ms,
        seed=args.seed,
        tool_rules=tuple(rules),
        **faults,  # type: ignore[arg-type]
    )


def _mix(args: argparse.Namespace) -> tuple[tuple[Scenario, float], ...]:
    cache: dict[Path, Recording] = {}
    specs = parse_mix(args.scenario or ["question_answer"])
    return tuple((resolve_scenario(name, args.scenario_dir, cache), weight) for name, weight in specs)


def _sip_target(args: argparse.Namespace) -> tuple[str, int] | None:
    """The SIP target of an external run (a placeholder when embedded: the gateway's is known later)."""
    if not args.sip:
        return None
    return ("127.0.0.1", 5060) if args.sip == "embedded" else parse_target(args.sip)


def missing_extra() -> list[str]:
    """The modules of the `loadtest` extra that are not installed (found without importing them)."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def _run_config(
    args: argparse.Namespace, url: str, append_ms: int, sip: tuple[str, int] | None = None
) -> RunConfig:
    calls = args.calls if args.calls is not None or args.duration is not None else 10
    return RunConfig(
        url=media_url(url, args.provider),
        provider="sip" if args.sip else args.provider,
        sip_target=sip,
        playout_delay_ms=args.playout_delay_ms,
        media_format=parse_format(args.format),
        mix=_mix(args),
        calls=calls,
        concurrency=args.concurrency,
        ramp_up_s=args.ramp_up,
        duration_s=args.duration,
        seed=args.seed,
        run_id=args.run_id,
        auth_token=args.twilio_auth_token,
        public_url=args.public_url,
        keep_audio=args.embedded,  # bot audio lost is checked byte for byte against the emulator's
        append_ms=append_ms,
    )


@contextlib.asynccontextmanager
async def _progress(live: LiveStats, enabled: bool) -> AsyncIterator[None]:
    """A rich live line (started/active/done/failed, response p50/p95) while the run goes on."""
    if not enabled:
        yield
        return
    from rich.live import Live
    from rich.text import Text

    def line() -> Text:
        pct = live.response_percentiles()
        latency = "-" if pct is None else f"{pct[0]:.0f} / {pct[1]:.0f} ms"
        return Text(
            f"calls started {live.started}  active {live.active}  done {live.done}  "
            f"failed {live.failed}  response p50/p95 {latency}"
        )

    with Live(line(), refresh_per_second=4, transient=False) as display:

        async def refresh() -> None:
            while True:
                display.update(line())
                await asyncio.sleep(0.25)

        task = asyncio.create_task(refresh())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            display.update(line())


async def _run(args: argparse.Namespace, show_progress: bool) -> RunResult:
    live = LiveStats()
    if args.embedded:
        rules = tool_rules(args, _mix(args))
        env = gateway_env(args, rules)
        config_emulator = emulator_config(args, rules)
        async with embedded_target(config_emulator, env, sip=bool(args.sip)) as target:
            config = _run_config(args, target.base, target.append_ms, target.sip)
            async with _progress(live, show_progress):
                return await run_load(config, emulator=target.emulator, live=live)
    config = _run_config(args, args.url or "ws://127.0.0.1/media", 20, _sip_target(args))
    async with _progress(live, show_progress):
        return await run_load(config, live=live)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the load test; returns the exit status (0 all calls completed, 1 some failed, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.embedded and not args.url and not args.sip:
        parser.error("give --url ws://HOST:PORT/media, --sip HOST:PORT, or --embedded")
    if args.embedded and args.url:
        parser.error("--url and --embedded exclude each other")
    if args.sip == "embedded" and not args.embedded:
        parser.error("--sip needs HOST:PORT, or --embedded")
    if args.sip and (args.url or args.provider != "twilio" or args.format or args.twilio_auth_token):
        parser.error("--sip places SIP calls: no --url, --provider, --format or --twilio-auth-token")
    if not args.embedded and any(getattr(args, name) for name in TOOL_OPTIONS):
        parser.error("--tool-rule, --bot-tools and --transfer-to set up the embedded emulator and gateway")
    if missing := missing_extra():
        print(
            f"{parser.prog}: error: {' and '.join(missing)} not installed; "
            "install the load generator with: pip install 'voice-gateway[loadtest]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    args.run_id = new_run_id()
    from gateway.logging import configure_logging

    configure_logging(args.log_level, "console")
    show_progress = not args.no_progress and sys.stdout.isatty()
    try:  # every usage problem is found before anything starts
        _run_config(args, args.url or "ws://127.0.0.1/media", 20, _sip_target(args))
        if args.embedded:
            mix = _mix(args)
            _check_transfers(args, mix)
            rules = tool_rules(args, mix)
            emulator_config(args, rules)
            load_settings({**gateway_env(args, rules), "REALTIME_URL": "ws://127.0.0.1/"})
    except (ScenarioError, RecordingError, ValueError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = asyncio.run(_run(args, show_progress))
    render_text(result, sys.stdout, use_rich=sys.stdout.isatty())
    folder = new_run_folder(args.output, result)
    paths = write_outputs(result, folder)
    latest = point_latest(args.output, folder)
    print(f"wrote {paths['summary']}, {paths['json']}, {paths['html']}")
    if latest is not None:
        print(f"{latest} -> {folder.name}")
    return EXIT_OK if result.summary.failed == 0 else EXIT_FAILED_CALLS


if __name__ == "__main__":
    raise SystemExit(main())
