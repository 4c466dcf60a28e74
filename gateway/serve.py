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
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import multiprocess

from gateway.app import STATE_KEY, create_app, drain
from gateway.config import Settings
from gateway.realtime.health import Health

__all__ = ["EXIT_CONFIG", "WORKER_ENV", "listen", "run", "serve"]

log = structlog.get_logger(__name__)

WORKER_ENV = "GATEWAY_WORKER_INDEX"  # set in each worker's environment by the supervisor
SIGNALS = (signal.SIGTERM, signal.SIGINT)


EXIT_CONFIG = 2  # what a configuration error exits with, at start-up


def listen(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """Bind and listen before anything else starts, so a taken port is one clear error (OSError)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


async def serve(settings: Settings) -> int:
    """Serve until a signal, then drain and shut down cleanly; returns the exit code (2: the port is taken
    or the realtime service refused the configured credentials at start-up)."""
    worker = os.environ.get(WORKER_ENV)
    # Signals are taken before the port is bound: a stop during start-up is a clean one, and a connection
    # the kernel queued on this socket meanwhile is served by the drain, not reset by a default kill.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        stop.set()

    for signum in SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        sock = listen(settings.host, settings.port, reuse_port=worker is not None)
    except OSError as exc:
        reason = "the port is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        log.error("cannot_listen", host=settings.host, port=settings.port, reason=reason)
        for signum in SIGNALS:
            loop.remove_signal_handler(signum)
        return EXIT_CONFIG
    port = sock.getsockname()[1]
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=10)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info("listening", host=settings.host, port=port, worker=worker)
    try:
        if not await _started(app, stop, port):
            return EXIT_CONFIG
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
    return 0


async def _started(app: web.Application, stop: asyncio.Event, port: int) -> bool:
    """Wait for start-up's verdict on the realtime backend (or a signal); False if it is fatal.

    Meanwhile the port answers: /healthz 200, /readyz 503 while the first handshake is retried.
    """
    state = app[STATE_KEY]
    assert state.first_verdict is not None
    assert state.upstream is not None
    verdict: asyncio.Future[object] = asyncio.ensure_future(state.first_verdict)
    signalled: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({verdict, signalled}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        signalled.cancel()
    if not state.first_verdict.done():
        return True  # a signal came first: drain (nothing to drain) and stop
    if state.first_verdict.result() is Health.FATAL:
        log.error("gateway_not_started", reason="the realtime service refused the configured credentials")
        return False
    log.info("gateway_ready", port=port, upstream=state.upstream.describe())
    return True


def run(settings: Settings) -> int:
    """Run the gateway (or its workers) to the end; returns the process exit code."""
    if settings.workers == 1 or WORKER_ENV in os.environ:
        return asyncio.run(serve(settings))
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

    def reload(signum: int, _frame: object) -> None:  # SIGHUP: every worker re-reads BOTS_FILE
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    for signum in SIGNALS:
        signal.signal(signum, forward)
    signal.signal(signal.SIGHUP, reload)
    while any(worker.poll() is None for worker in workers):
        if not stopping and any(worker.poll() is not None for worker in workers):
            # A worker died on its own: stop the rest, so the orchestrator restarts the whole instance.
            log.error("worker_died", exit_codes=[w.poll() for w in workers])
            forward(signal.SIGTERM, None)
        time.sleep(0.2)
    codes = [worker.wait() for worker in workers]
    if stopping:
        # A worker still importing or binding when the signal came had no handler yet and died of it; it
        # carried no call (handlers go in before the port is served), so that is a clean stop.
        codes = [0 if code in (-signal.SIGTERM, -signal.SIGINT) else code for code in codes]
    for worker in workers:
        multiprocess.mark_process_dead(worker.pid, str(metrics_dir))  # type: ignore[no-untyped-call]
    log.info("workers_stopped", exit_codes=codes)
    if own_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return max(codes, key=abs)
