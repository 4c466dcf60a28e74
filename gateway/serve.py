"""Running the gateway: one process, or a supervisor with several workers on one port.

One process serves until SIGTERM (or SIGINT), then drains: `/readyz` turns 503 at once, new streams are
refused, active calls go on for up to GATEWAY_DRAIN_TIMEOUT_S, then the rest are closed and the process
exits 0. A second signal skips the wait.

With GATEWAY_WORKERS=N > 1 the supervisor starts N worker processes that each bind the same port with
SO_REUSEPORT (the kernel spreads connections over them), forwards SIGTERM/SIGINT to them, and exits
when they have, with the worst exit code. Metrics use prometheus-client's multiprocess mode: every
worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR (a fresh directory the supervisor
creates unless one is given), and whichever worker answers `/metrics` sums them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import multiprocess

from gateway.app import create_app, drain
from gateway.config import Settings

__all__ = ["WORKER_ENV", "run", "serve"]

log = structlog.get_logger(__name__)

WORKER_ENV = "GATEWAY_WORKER_INDEX"  # set in each worker's environment by the supervisor
SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(settings: Settings) -> None:
    """Serve until a signal, then drain and shut down cleanly."""
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    reuse_port = WORKER_ENV in os.environ
    site = web.TCPSite(runner, settings.host, settings.port, reuse_port=reuse_port or None)
    await site.start()
    log.info("listening", host=settings.host, port=settings.port, worker=os.environ.get(WORKER_ENV))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        stop.set()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
        log.info("shutdown_requested", signal=signal.Signals(signals_seen[0]).name)
        stop.clear()
        drain_task = asyncio.create_task(drain(app, settings.drain_timeout_s))
        second = asyncio.create_task(stop.wait())
        await asyncio.wait({drain_task, second}, return_when=asyncio.FIRST_COMPLETED)
        second.cancel()
        if not drain_task.done():
            log.warning("drain_cut_short", reason="second signal")
            drain_task.cancel()
    finally:
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        await runner.cleanup()
        log.info("stopped")


def run(settings: Settings) -> int:
    """Run the gateway (or its workers) to the end; returns the process exit code."""
    if settings.workers == 1 or WORKER_ENV in os.environ:
        asyncio.run(serve(settings))
        return 0
    return _supervise(settings)


def _supervise(settings: Settings) -> int:
    """Start the workers, forward signals, reap them, clean the metrics directory."""
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    metrics_dir = Path(
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="gateway-metrics-")
    )
    for stale in metrics_dir.glob("*.db"):  # samples of an earlier run would be summed in
        stale.unlink()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    workers = [
        subprocess.Popen([sys.executable, "-m", "gateway", "serve"], env={**env, WORKER_ENV: str(index)})
        for index in range(settings.workers)
    ]
    log.info(
        "workers_started", workers=len(workers), pids=[w.pid for w in workers], metrics_dir=str(metrics_dir)
    )

    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in SIGNALS:
        signal.signal(signum, forward)
    while any(worker.poll() is None for worker in workers):
        if not stopping and any(worker.poll() is not None for worker in workers):
            # A worker died on its own: stop the rest, so the orchestrator restarts the whole instance.
            log.error("worker_died", exit_codes=[w.poll() for w in workers])
            forward(signal.SIGTERM, None)
        time.sleep(0.2)
    codes = [worker.wait() for worker in workers]
    for worker in workers:
        multiprocess.mark_process_dead(worker.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
    log.info("workers_stopped", exit_codes=codes)
    if own_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return max(codes, key=abs)
