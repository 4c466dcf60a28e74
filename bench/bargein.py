"""Barge-in accuracy and speed, end to end over loopback (numbers, not assertions).

Runs real-time calls through a gateway to the emulator: the caller asks, listens to part of the bot's
answer, and talks over it. For each interruption it records what the simulated phone had really heard
when the clear arrived, the truncate the emulator accepted, the gateway's speech_started -> clear time,
and the caller's first interrupting frame -> clear time (which includes the detector's own attack).

Run: `python -m bench.bargein [--runs N]` (each run takes about 3 s of real time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.app import STATE_KEY
from gateway.emulator import EmulatorConfig
from gateway.loadtest.client import TwilioCall
from gateway.loadtest.runner import embedded_target
from gateway.loadtest.scenarios import play_interruption
from gateway.logging import configure_logging

__all__ = ["main"]

OUT = Path(__file__).parent / "out" / "bargein.json"


def _histogram_sum_count(app: web.Application) -> tuple[float, float]:
    family = next(iter(app[STATE_KEY].metrics.barge_in_latency.collect()))
    values = {s.name.rsplit("_", 1)[-1]: s.value for s in family.samples if not s.name.endswith("_bucket")}
    return values["sum"], values["count"]


async def _run_mode(mode: str, runs: int) -> list[dict[str, float]]:
    config = EmulatorConfig(reply_ms=5000, realtime_factor=1.5)
    results: list[dict[str, float]] = []
    env = {"BARGE_IN": mode}
    async with embedded_target(config, env) as target:
        app, emulator = target.app, target.emulator
        for run in range(runs):
            interrupt_after = 600 + run * 1800 / max(1, runs - 1)
            before = _histogram_sum_count(app)
            async with TwilioCall(target.url) as call:
                outcome = await play_interruption(call, interrupt_after_ms=interrupt_after)
                session = emulator.sessions[-1]
                for _ in range(200):
                    if session.truncations:
                        break
                    await asyncio.sleep(0.01)
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


async def _main(runs: int) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for mode in ("server", "local"):
        rows = await _run_mode(mode, runs)
        report[mode] = rows
        print(f"BARGE_IN={mode}: {len(rows)} interruptions, 600..2400 ms into the bot's answer")
        for key in ("speech_started_to_clear_ms", "interrupt_to_clear_ms", "truncate_error_ms"):
            print(f"  {key:<28} {_summary(rows, key)}")
        print(f"  {'bot media after clear':<28} {sum(int(r['media_after_clear']) for r in rows)}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Run the barge-in benchmark and print the summary; the rows go to bench/out/bargein.json."""
    parser = argparse.ArgumentParser(prog="python -m bench.bargein", description=__doc__)
    parser.add_argument("--runs", type=int, default=8, help="interruptions per mode")
    args = parser.parse_args(argv)
    configure_logging("warning")
    report = asyncio.run(_main(args.runs))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print(f"rows written to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
