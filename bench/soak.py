"""Soak: hundreds of calls over several minutes with faults injected, then a search for anything leaked.

`python -m bench.soak` (or `make soak`) runs the gateway as its own process (`python -m gateway serve`)
bridged to the emulator, which injects faults into every session: 429 on the first handshakes, an
`error` event after two responses, a socket drop 8 s into every session (the gateway must reconnect,
replay and answer), response delay and jitter. Next to the scripted callers (every shipped scenario,
barge-in included), a hostile client keeps opening streams that send garbage, oversized or binary
frames, or never start.

Leaks are judged from the gateway's own /metrics, at idle (no call running) after warm-up and again at
the end: `gateway_asyncio_tasks`, `process_open_fds` (sockets), `process_resident_memory_bytes` (also
sampled every 5 s under load, for its growth and slope), `gateway_active_calls`; and at the emulator,
realtime sessions left open. The exit status is 1 if anything leaked, memory kept growing, a scripted
call failed, or the gateway did not exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from bench.capacity import GatewayProcess
from gateway.emulator import EmulatorConfig, EmulatorServer
from gateway.loadtest.runner import RunConfig, run_load
from gateway.loadtest.script import resolve_scenario
from gateway.logging import configure_logging

__all__ = ["main"]

OUT = Path(__file__).parent / "out" / "soak.json"
SCENARIOS = (("question_answer", 3.0), ("multi_turn", 2.0), ("barge_in", 2.0), ("dtmf_hangup", 1.0))
HOSTILE: tuple[str | bytes | None, ...] = (
    "{not json",
    "x" * (70 * 1024),
    b"\x00\x01\x02",
    json.dumps({"event": "media", "media": {"payload": "/w=="}}),
    None,  # connects and never starts
)
WATCHED = (
    "gateway_asyncio_tasks",
    "process_open_fds",
    "process_resident_memory_bytes",
    "gateway_active_calls",
)


async def _scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """The watched gauges and the call outcomes from the gateway's /metrics."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in WATCHED:
                found[sample.name] = sample.value
            elif sample.name in ("gateway_calls_total", "gateway_upstream_reconnects_total"):
                label = sample.labels.get("outcome") or sample.labels.get("reason", "")
                found[f"{sample.name}:{label}"] = sample.value
    return found


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
            key = f"closed {ws.close_code}"
        except (WebSocketException, OSError, TimeoutError) as exc:
            key = type(exc).__name__
        counts[key] = counts.get(key, 0) + 1
        await asyncio.sleep(0.5)


async def _sample(
    http: aiohttp.ClientSession, port: int, stop: asyncio.Event, rows: list[dict[str, float]]
) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        row = await _scrape(http, port)
        rows.append({"t": round(time.monotonic() - t0, 1), **{k: row.get(k, 0.0) for k in WATCHED}})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 5)


async def _idle(http: aiohttp.ClientSession, port: int, emulator: EmulatorServer) -> dict[str, float]:
    """Wait until no call runs (and every upstream session is closed), then scrape."""
    for _ in range(300):
        row = await _scrape(http, port)
        if row.get("gateway_active_calls", 1) == 0 and all(s.closed for s in emulator.sessions):
            await asyncio.sleep(1)  # let closing tasks finish
            return await _scrape(http, port)
        await asyncio.sleep(0.1)
    return await _scrape(http, port)


async def _soak(concurrency: int, duration_s: float) -> dict[str, Any]:
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
    async with EmulatorServer(emulator_config) as emulator, aiohttp.ClientSession() as http:
        env = {
            "REALTIME_URL": emulator.ga_url(),
            "LOG_LEVEL": "error",
            "UPSTREAM_MAX_RECONNECTS": "10",
            "START_TIMEOUT_S": "2",
            "TRANSCRIPTION_MODEL": "whisper-1",
        }
        gateway = GatewayProcess(env, pin=False)
        await gateway.start(http)
        try:
            return await _drive(http, emulator, gateway, concurrency, duration_s)
        finally:
            await gateway.stop()


async def _drive(
    http: aiohttp.ClientSession,
    emulator: EmulatorServer,
    gateway: GatewayProcess,
    concurrency: int,
    duration_s: float,
) -> dict[str, Any]:
    port = gateway.port
    url = f"ws://127.0.0.1:{port}/media"
    mix = tuple((resolve_scenario(name), weight) for name, weight in SCENARIOS)
    # Warm-up: a few calls, so lazy imports, caches and pools exist before the baseline.
    await run_load(RunConfig(url, mix, calls=6, concurrency=6))
    base = await _idle(http, port, emulator)
    stop = asyncio.Event()
    rows: list[dict[str, float]] = []
    hostile: dict[str, int] = {}
    background = {
        asyncio.create_task(_hostile(url, stop, hostile)),
        asyncio.create_task(_sample(http, port, stop, rows)),
    }
    config = RunConfig(url, mix, calls=None, concurrency=concurrency, ramp_up_s=10, duration_s=duration_s)
    result = await run_load(config, emulator=emulator)
    stop.set()
    await asyncio.wait(background)
    after = await _idle(http, port, emulator)
    await gateway.stop()  # SIGTERM; a gateway that does not exit within 5 s is killed (exit code -9)
    assert gateway.proc is not None
    exit_code = gateway.proc.returncode
    rss = [(row["t"], row["process_resident_memory_bytes"] / 2**20) for row in rows]
    second_half = [(t, mb) for t, mb in rss if rss and t >= rss[-1][0] / 2]
    return {
        "calls": result.summary.calls,
        "completed": result.summary.completed,
        "failed": result.summary.failed,
        "errors": result.summary.errors,
        "duration_s": result.summary.duration_s,
        "gateway_outcomes": {
            k.split(":", 1)[1]: v for k, v in after.items() if k.startswith("gateway_calls")
        },
        "reconnects": {k.split(":", 1)[1]: v for k, v in after.items() if k.startswith("gateway_upstream")},
        "hostile_streams": hostile,
        "emulator_sessions": len(emulator.sessions),
        "emulator_sessions_open": sum(1 for s in emulator.sessions if not s.closed),
        "gateway_exit_code": exit_code,
        "idle_baseline": {k: base.get(k) for k in WATCHED},
        "idle_after": {k: after.get(k) for k in WATCHED},
        "leaked_tasks": after.get("gateway_asyncio_tasks", 0) - base.get("gateway_asyncio_tasks", 0),
        "leaked_fds": after.get("process_open_fds", 0) - base.get("process_open_fds", 0),
        "rss_growth_mb": round(
            (after.get("process_resident_memory_bytes", 0) - base.get("process_resident_memory_bytes", 0))
            / 2**20,
            1,
        ),
        "rss_max_mb": round(max((mb for _, mb in rss), default=0.0), 1),
        "rss_slope_mb_per_min_second_half": round(_slope(second_half) * 60, 2)
        if len(second_half) > 2
        else 0.0,
        "samples": rows,
    }


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (MB per second)."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def _verdict(report: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("leaked_tasks", "leaked_fds", "emulator_sessions_open"):
        if report[key] > 0:
            problems.append(f"{key} = {report[key]}")
    if report["idle_after"]["gateway_active_calls"] != 0:
        problems.append("gateway_active_calls did not return to 0")
    if report["gateway_exit_code"] != 0:
        problems.append(f"the gateway exited {report['gateway_exit_code']} on SIGTERM")
    if report["failed"]:
        problems.append(f"{report['failed']} scripted calls failed: {report['errors']}")
    if report["rss_slope_mb_per_min_second_half"] > 2.0:
        problems.append(f"memory still growing: {report['rss_slope_mb_per_min_second_half']} MB/min")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print the figures, write bench/out/soak.json; exit 1 on any leak."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--minutes", type=float, default=4.0, help="keep starting calls for this long")
    args = parser.parse_args(argv)
    configure_logging("error")
    report = asyncio.run(_soak(args.concurrency, args.minutes * 60))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    shown = {k: v for k, v in report.items() if k != "samples"}
    print(json.dumps(shown, indent=2))
    for row in report["samples"][:: max(1, len(report["samples"]) // 12)]:
        print(
            f"t={row['t']:6.1f}s  calls={row['gateway_active_calls']:4.0f}  "
            f"rss={row['process_resident_memory_bytes'] / 2**20:6.1f} MB  "
            f"fds={row['process_open_fds']:4.0f}  tasks={row['gateway_asyncio_tasks']:4.0f}"
        )
    problems = _verdict(report)
    print("verdict:", "no leaks" if not problems else "; ".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
