"""Soak: hundreds of calls over several minutes with faults injected, then a search for anything leaked.

`python -m bench.soak` (or `make soak`) runs an in-process gateway bridged to the emulator, which
injects faults into every session: 429 on the first handshakes, an `error` event after two responses,
a socket drop 8 s into every session (the gateway must reconnect and replay), response delay and
jitter. Next to the scripted callers (every shipped scenario, barge-in included), a hostile client
keeps opening streams that send garbage, oversized or binary frames, or never start.

Leaks are judged against a baseline taken after warm-up: asyncio tasks, open file descriptors (sockets),
realtime sessions still open at the emulator, calls the gateway still counts, and resident memory
sampled every 5 s (its growth after warm-up, and the slope over the second half of the run). The exit
status is 1 if anything leaked or any scripted call failed for a reason other than an injected fault.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from gateway.app import STATE_KEY
from gateway.emulator import EmulatorConfig
from gateway.loadtest.runner import RunConfig, embedded_target, run_load
from gateway.loadtest.script import resolve_scenario
from gateway.logging import configure_logging

__all__ = ["main"]

OUT = Path(__file__).parent / "out" / "soak.json"
SCENARIOS = (("question_answer", 3.0), ("multi_turn", 2.0), ("barge_in", 2.0), ("dtmf_hangup", 1.0))
HOSTILE = (
    "{not json",
    "x" * (70 * 1024),
    b"\x00\x01\x02",
    json.dumps({"event": "media", "media": {"payload": "/w=="}}),
    None,  # connects and never starts
)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _hostile(url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    """Keep sending the gateway what Twilio never would, one stream at a time."""
    index = 0
    while not stop.is_set():
        message = HOSTILE[index % len(HOSTILE)]
        index += 1
        try:
            async with connect(url, open_timeout=5, close_timeout=2) as ws:
                await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
                if message is not None:
                    await ws.send(message)
                await asyncio.wait_for(ws.wait_closed(), 15)
            counts[f"closed {ws.close_code}"] = counts.get(f"closed {ws.close_code}", 0) + 1
        except (WebSocketException, OSError, TimeoutError) as exc:
            counts[type(exc).__name__] = counts.get(type(exc).__name__, 0) + 1
        await asyncio.sleep(0.5)


async def _sample(samples: list[tuple[float, float]], stop: asyncio.Event, t0: float) -> None:
    while not stop.is_set():
        samples.append((round(time.monotonic() - t0, 1), round(_rss_mb(), 1)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)


async def _soak(calls: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    emulator_config = EmulatorConfig(
        record_audio=False,
        record_client_events=False,
        refuse_status=429,
        refuse_count=10,
        error_after_responses=2,
        drop_after_ms=8_000,
        response_delay_ms=200,
        response_jitter_ms=400,
    )
    env = {"UPSTREAM_MAX_RECONNECTS": "10", "START_TIMEOUT_S": "2", "TRANSCRIPTION_MODEL": "whisper-1"}
    async with embedded_target(emulator_config, env) as target:
        state = target.app[STATE_KEY]
        mix = tuple((resolve_scenario(name), weight) for name, weight in SCENARIOS)
        stop = asyncio.Event()
        samples: list[tuple[float, float]] = []
        hostile: dict[str, int] = {}
        t0 = time.monotonic()
        sampler = asyncio.create_task(_sample(samples, stop, t0))
        # Warm-up: a few calls, so lazy imports, caches and pools exist before the baseline.
        await run_load(RunConfig(target.url, mix, calls=6, concurrency=6))
        await asyncio.sleep(1)
        base = {"tasks": len(asyncio.all_tasks()), "fds": _open_fds(), "rss_mb": _rss_mb()}
        attacker = asyncio.create_task(_hostile(target.url, stop, hostile))
        config = RunConfig(
            target.url, mix, calls=calls, concurrency=concurrency, ramp_up_s=10, duration_s=duration_s
        )
        result = await run_load(config, emulator=target.emulator)
        stop.set()
        await asyncio.wait({attacker, sampler})
        for _ in range(100):  # let the last closes finish
            if not state.calls and all(s.closed for s in target.emulator.sessions):
                break
            await asyncio.sleep(0.1)
        after = {"tasks": len(asyncio.all_tasks()), "fds": _open_fds(), "rss_mb": _rss_mb()}
        metrics = state.metrics
        outcomes = {
            s.labels["outcome"]: s.value
            for s in metrics.calls.collect()[0].samples
            if s.name.endswith("_total")
        }
        half = [rss for t, rss in samples if t >= samples[-1][0] / 2] if samples else []
        slope = _slope([(t, rss) for t, rss in samples if t >= samples[-1][0] / 2]) if len(half) > 2 else 0.0
        return {
            "calls": result.summary.calls,
            "completed": result.summary.completed,
            "failed": result.summary.failed,
            "errors": result.summary.errors,
            "duration_s": result.summary.duration_s,
            "gateway_outcomes": outcomes,
            "reconnects": {
                s.labels["reason"]: s.value
                for s in metrics.upstream_reconnects.collect()[0].samples
                if s.name.endswith("_total")
            },
            "hostile_streams": hostile,
            "emulator_sessions": len(target.emulator.sessions),
            "emulator_sessions_open": sum(1 for s in target.emulator.sessions if not s.closed),
            "gateway_calls_open": len(state.calls),
            "gateway_active_calls_gauge": metrics.active_calls._value.get(),
            "baseline": base,
            "after": after,
            "leaked_tasks": after["tasks"] - base["tasks"],
            "leaked_fds": after["fds"] - base["fds"],
            "rss_growth_mb": round(after["rss_mb"] - base["rss_mb"], 1),
            "rss_slope_mb_per_min_second_half": round(slope * 60, 2),
            "rss_samples": samples,
        }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (MB per second)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def _verdict(report: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("leaked_tasks", "leaked_fds", "emulator_sessions_open", "gateway_calls_open"):
        if report[key] > 0:
            problems.append(f"{key} = {report[key]}")
    if report["gateway_active_calls_gauge"] != 0:
        problems.append("gateway_active_calls did not return to 0")
    if report["failed"]:
        problems.append(f"{report['failed']} scripted calls failed: {report['errors']}")
    if report["rss_slope_mb_per_min_second_half"] > 2.0:
        problems.append(f"memory still growing: {report['rss_slope_mb_per_min_second_half']} MB/min")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the figures, write bench/out/soak.json; exit 1 on any leak."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=40)
    parser.add_argument("--minutes", type=float, default=4.0, help="stop starting calls after this long")
    args = parser.parse_args(argv)
    configure_logging("error")
    report = asyncio.run(_soak(args.calls, args.concurrency, args.minutes * 60))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    shown = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(shown, indent=2))
    rss = [mb for _, mb in report["rss_samples"]]
    if rss:
        print(f"rss MB: min {min(rss)}, max {max(rss)}, last {rss[-1]} over {report['rss_samples'][-1][0]} s")
    problems = _verdict(report)
    print("verdict:", "no leaks" if not problems else "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
