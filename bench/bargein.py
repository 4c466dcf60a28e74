"""Barge-in accuracy and speed, end to end over loopback (numbers, not assertions).

Runs real-time calls through a gateway to the emulator: the caller asks, listens to part of the bot's
answer, and talks over it. For each interruption it records what the simulated phone had really heard
when the clear arrived, the truncate the emulator accepted, the gateway's speech_started -> clear time,
and the caller's first interrupting frame -> clear time (which includes the detector's own attack).

Each provider's own fake leg plays the phone (`--provider`, default twilio; `all` runs each in turn). ACS
confirms nothing, so its fake plays everything a fixed one-way network delay late, and its caller ->
clear time is until the StopAudio took effect (that delay included).

Run: `python -m bench.bargein [--runs N] [--provider P|all]` (each run takes about 3 s of real time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.app import STATE_KEY
from gateway.emulator import EmulatorConfig
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.legs import acs, exotel, vonage
from gateway.loadtest.legs.plivo import FakePlivo
from gateway.loadtest.legs.signalwire import SignalWireCall
from gateway.loadtest.legs.telnyx import FakeTelnyx
from gateway.loadtest.runner import embedded_target
from gateway.loadtest.scenarios import InterruptibleCall, play_interruption
from gateway.logging import configure_logging

__all__ = ["main"]

OUT = Path(__file__).parent / "out" / "bargein.json"
PROVIDERS = ("twilio", "signalwire", "telnyx", "plivo", "vonage", "exotel", "acs")
ACS_NETWORK_DELAY_MS = 60.0  # one way, gateway -> phone, as the ACS integration tests have it


@dataclass(frozen=True, slots=True)
class Heard:
    """One interruption as the provider's fake phone saw it."""

    heard_at_clear_ms: float
    interrupt_to_clear_ms: float
    media_after_clear: int


Settle = Callable[[], Awaitable[None]]  # awaited before the phone hangs up (the truncate may still be due)
# (gateway base URL, interrupt after ms, settle) -> what the phone heard
Interrupt = Callable[[str, float, Settle], Awaitable[Heard]]


async def _mulaw_leg(call: InterruptibleCall, interrupt_after_ms: float, settle: Settle) -> Heard:
    outcome = await play_interruption(call, interrupt_after_ms=interrupt_after_ms)
    await settle()
    return Heard(outcome.heard_at_clear_ms, outcome.interrupt_to_clear_ms, outcome.media_after_clear)


async def _twilio(base: str, after: float, settle: Settle) -> Heard:
    async with TwilioCall(f"{base}/media") as call:
        return await _mulaw_leg(call, after, settle)


async def _signalwire(base: str, after: float, settle: Settle) -> Heard:
    async with SignalWireCall(f"{base}/signalwire/media") as call:
        return await _mulaw_leg(call, after, settle)


async def _telnyx(base: str, after: float, settle: Settle) -> Heard:
    async with FakeTelnyx(f"{base}/telnyx/media") as phone:
        return await _mulaw_leg(phone, after, settle)


async def _plivo(base: str, after: float, settle: Settle) -> Heard:
    async with FakePlivo(f"{base}/plivo/media") as phone:
        return await _mulaw_leg(phone, after, settle)


async def _vonage(base: str, after: float, settle: Settle) -> Heard:
    async with vonage.VonageCall(f"{base}/vonage/media") as call:
        result = await vonage.play_interruption(call, interrupt_after_ms=after)
        await settle()
    return Heard(result.heard_at_clear_ms, result.interrupt_to_clear_ms, result.media_after_clear)


async def _exotel(base: str, after: float, settle: Settle) -> Heard:
    async with exotel.ExotelCall(f"{base}/exotel/media") as call:
        result = await exotel.play_interruption(call, interrupt_after_ms=after)
        await settle()
    return Heard(result.heard_at_clear_ms, result.interrupt_to_clear_ms, result.media_after_clear)


async def _acs(base: str, after: float, settle: Settle) -> Heard:
    async with acs.AcsMediaCall(f"{base}/acs/media", network_delay_ms=ACS_NETWORK_DELAY_MS) as call:
        result = await acs.play_interruption(call, interrupt_after_ms=after)
        await settle()
    return Heard(result.heard_at_stop_ms, result.interrupt_to_stop_ms, result.audio_after_stop)


LEGS: dict[str, Interrupt] = {
    "twilio": _twilio,
    "signalwire": _signalwire,
    "telnyx": _telnyx,
    "plivo": _plivo,
    "vonage": _vonage,
    "exotel": _exotel,
    "acs": _acs,
}


def _histogram_sum_count(app: web.Application) -> tuple[float, float]:
    family = next(iter(app[STATE_KEY].metrics.barge_in_latency.collect()))
    values = {s.name.rsplit("_", 1)[-1]: s.value for s in family.samples if not s.name.endswith("_bucket")}
    return values["sum"], values["count"]


async def _run_mode(mode: str, runs: int, provider: str = "twilio") -> list[dict[str, float]]:
    config = EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    results: list[dict[str, float]] = []
    env = {"BARGE_IN": mode}
    async with embedded_target(config, env) as target:
        app, emulator = target.app, target.emulator
        base = target.url.removesuffix("/media")
        for run in range(runs):
            interrupt_after = 600 + run * 1800 / max(1, runs - 1)
            before = _histogram_sum_count(app)

            async def settle() -> None:
                session = emulator.sessions[-1]
                for _ in range(200):
                    if session.truncations:
                        break
                    await asyncio.sleep(0.01)

            outcome = await LEGS[provider](base, interrupt_after, settle)
            session = emulator.sessions[-1]
            after = _histogram_sum_count(app)
            truncate = session.truncations[0].audio_end_ms if session.truncations else float("nan")
            results.append(
                {
                    "interrupt_after_ms": interrupt_after,
                    "heard_at_clear_ms": outcome.heard_at_clear_ms,
                    "truncate_ms": truncate,
                    "truncate_error_ms": truncate - outcome.heard_at_clear_ms,
                    "speech_started_to_clear_ms": (after[0] - before[0]) * 1000,
                    "interrupt_to_clear_ms": outcome.interrupt_to_clear_ms,
                    "media_after_clear": outcome.media_after_clear,
                }
            )
    return results


def _summary(rows: list[dict[str, float]], key: str) -> str:
    values = [row[key] for row in rows]
    worst = max(values, key=abs)
    return f"mean {statistics.fmean(values):7.2f}  worst {worst:7.2f}"


async def _main(runs: int, provider: str = "twilio") -> dict[str, Any]:
    report: dict[str, Any] = {}
    for mode in ("server", "local"):
        rows = await _run_mode(mode, runs, provider)
        report[mode] = rows
        print(f"BARGE_IN={mode}: {len(rows)} interruptions, 600..2400 ms into the bot's answer")
        for key in ("speech_started_to_clear_ms", "interrupt_to_clear_ms", "truncate_error_ms"):
            print(f"  {key:<28} {_summary(rows, key)}")
        print(f"  {'bot media after clear':<28} {sum(int(r['media_after_clear']) for r in rows)}")
    return report


def _out(provider: str) -> Path:
    """Twilio's rows keep their old file; each other provider's get their own."""
    return OUT if provider == "twilio" else OUT.with_name(f"bargein-{provider}.json")


def main(argv: list[str] | None = None) -> int:
    """Run the barge-in benchmark and print the summary; the rows go to bench/out/bargein[-P].json."""
    parser = argparse.ArgumentParser(prog="python -m bench.bargein", description=__doc__)
    parser.add_argument("--runs", type=int, default=8, help="interruptions per mode")
    parser.add_argument("--provider", choices=(*PROVIDERS, "all"), default="twilio", help="whose fake leg")
    args = parser.parse_args(argv)
    configure_logging("warning")
    providers = PROVIDERS if args.provider == "all" else (args.provider,)
    for provider in providers:
        if provider != "twilio" or args.provider == "all":
            delay = f", network delay {ACS_NETWORK_DELAY_MS:g} ms one way" if provider == "acs" else ""
            print(f"--provider {provider}{delay}")
        report = asyncio.run(_main(args.runs, provider))
        out = _out(provider)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"rows written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
