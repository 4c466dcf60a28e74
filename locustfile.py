"""Locust: the same call replay as `python -m gateway.loadtest`, spread over many machines.

Each Locust user places one call per task (scenario mix from the environment) and reports through
Locust's request events, request_type "call":

- name = the scenario: the whole call (response_time = call duration; a failed call is a failure with
  its error kind);
- name = "connect", "setup", "response latency", "barge-in latency", "truncation error" (embedded
  gateways only), "underrun gap": one event per measurement, response_time = the value in ms.

Locust's users are gevent greenlets in a monkey-patched process, where asyncio cannot run, so each
Locust process that runs users starts ONE `python -m gateway.loadtest.worker` child, when its first
user places its first call (the master, which runs no users, starts none). The calls of all its users
are multiplexed over that child's pipes, which drives them on asyncio (shared playout ticker,
pre-encoded frames). The child picks a random run id; every CallSid it makes starts with `CA<run id>`,
so the calls of two Locust processes, or of two runs, never share a CallSid. The log line
"loadtest worker pid N started: CallSids CA<run id>..." names it.

Environment:
  LOADTEST_URL            ws://HOST:PORT/media (or pass --host ws://HOST:PORT/media); a base
                          ws://HOST:PORT takes the provider's route /P/media
  LOADTEST_PROVIDER       whose media stream the calls play: twilio (default), signalwire, telnyx,
                          plivo, vonage, exotel, acs
  LOADTEST_FORMAT         the stream's format as ENCODING/RATE (default: the provider's usual)
  LOADTEST_SCENARIOS      comma-separated NAME[:WEIGHT] (default question_answer)
  LOADTEST_SCENARIO_DIR   where scenario names are found (default: the shipped scenarios)
  LOADTEST_TWILIO_AUTH_TOKEN, LOADTEST_PUBLIC_URL   sign as Twilio does (see the CLI's options)
  LOADTEST_PAUSE_S        each user's pause between two calls (default 1)

Run (one machine): `locust -f locustfile.py --headless -u 50 -r 5 -t 2m --host ws://127.0.0.1:8080/media`.
Distributed: on the master `locust -f locustfile.py --master --headless -u 500 -r 20 -t 5m
--expect-workers 4 --host ws://GATEWAY:8080/media`; on each load machine `locust -f locustfile.py
--worker --master-host MASTER_IP` (with this file and the package installed: `pip install '.[locust]'`).
One Locust worker process per core; each drives its share of the users' calls through its own child.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from typing import Any

import gevent
from gevent.event import AsyncResult
from gevent.lock import Semaphore
from locust import User, constant, events, task

log = logging.getLogger("locustfile")

MEASUREMENTS = {
    "connect_ms": "connect",
    "setup_ms": "setup",
    "response_ms": "response latency",
    "barge_in_ms": "barge-in latency",
    "truncation_error_ms": "truncation error (abs)",
    "underrun_gap_ms": "underrun gap",
}


def _mix() -> list[tuple[str, float]]:
    mix = []
    for spec in os.environ.get("LOADTEST_SCENARIOS", "question_answer").split(","):
        name, _, weight = spec.strip().partition(":")
        mix.append((name, float(weight) if weight else 1.0))
    return mix


class _WorkerProcess:
    """The asyncio call driver for this Locust process: requests out on stdin, results in on stdout.

    Users call `call()` concurrently: each request carries an id and waits on its own `AsyncResult`,
    which the one reader greenlet fills when the answer with that id comes back.
    """

    def __init__(self, url: str) -> None:
        args = [sys.executable, "-m", "gateway.loadtest.worker", "--url", url]
        for name, _ in _mix():
            args += ["--scenario", name]
        if os.environ.get("LOADTEST_SCENARIO_DIR"):
            args += ["--scenario-dir", os.environ["LOADTEST_SCENARIO_DIR"]]
        if os.environ.get("LOADTEST_PROVIDER"):
            args += ["--provider", os.environ["LOADTEST_PROVIDER"]]
        if os.environ.get("LOADTEST_FORMAT"):
            args += ["--format", os.environ["LOADTEST_FORMAT"]]
        if os.environ.get("LOADTEST_TWILIO_AUTH_TOKEN"):
            args += ["--twilio-auth-token", os.environ["LOADTEST_TWILIO_AUTH_TOKEN"]]
        if os.environ.get("LOADTEST_PUBLIC_URL"):
            args += ["--public-url", os.environ["LOADTEST_PUBLIC_URL"]]
        self.process = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.waiting: dict[int, AsyncResult] = {}
        self.next_id = 0
        self.exited = False
        gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                log.warning("loadtest worker pid %d wrote a non-JSON line: %r", self.process.pid, line)
                continue
            if "ready" in answer:
                ready = answer["ready"]
                log.info("loadtest worker pid %d started: CallSids CA%s...", ready["pid"], ready["run_id"])
                continue
            waiter = self.waiting.pop(answer.get("id"), None)
            if waiter is not None:
                waiter.set(answer)
        self.exited = True
        status = self.process.wait()
        for waiter in self.waiting.values():
            waiter.set({"error": f"the worker process exited with status {status}"})
        self.waiting.clear()

    def call(self, scenario: str) -> dict[str, Any]:
        """Place one call through the child and wait for its answer ({"result": ...} or {"error": ...})."""
        if self.exited:
            return {"error": f"the worker process exited with status {self.process.poll()}"}
        self.next_id += 1
        request_id = self.next_id
        waiter = AsyncResult()
        self.waiting[request_id] = waiter
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"id": request_id, "scenario": scenario}) + "\n")
            self.process.stdin.flush()
        except OSError as exc:  # the child is gone; its reader reports the status to the others
            self.waiting.pop(request_id, None)
            return {"error": f"the worker process does not take requests: {exc}"}
        answer: dict[str, Any] = waiter.get()
        return answer

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


_worker: _WorkerProcess | None = None
# Starting the child yields to other greenlets (gevent's Popen), so without this lock the users that
# place their first call meanwhile would each start a child of their own.
_worker_lock = Semaphore()


def _get_worker(url: str) -> _WorkerProcess:
    """This process's one worker child, started by the first caller."""
    global _worker
    with _worker_lock:
        if _worker is None:
            _worker = _WorkerProcess(url)
        return _worker


@events.quitting.add_listener
def _stop_worker(**_kwargs: Any) -> None:
    if _worker is not None:
        _worker.stop()


class TwilioCaller(User):
    """One caller: places a call per task, scenario drawn from LOADTEST_SCENARIOS by weight."""

    wait_time = constant(float(os.environ.get("LOADTEST_PAUSE_S", "1")))

    @task
    def call(self) -> None:
        url = os.environ.get("LOADTEST_URL") or self.host
        if not url:
            raise RuntimeError("set LOADTEST_URL or --host to the gateway's ws://HOST:PORT/media")
        names, weights = zip(*_mix(), strict=True)
        scenario = random.choices(names, weights)[0]
        started = time.perf_counter()
        answer = _get_worker(url).call(scenario)
        elapsed_ms = (time.perf_counter() - started) * 1000
        result = answer.get("result")
        fire = self.environment.events.request.fire
        if result is None:
            fire(
                request_type="call",
                name=scenario,
                response_time=elapsed_ms,
                response_length=0,
                exception=RuntimeError(answer.get("error", "no result")),
            )
            return
        failure = None if result["ok"] else RuntimeError(f"{result['error']}: {result['error_detail']}")
        fire(
            request_type="call",
            name=scenario,
            response_time=elapsed_ms,
            response_length=result["frames_sent"],
            exception=failure,
        )
        for key, name in MEASUREMENTS.items():
            for value in result.get(key, []):
                fire(
                    request_type="call",
                    name=name,
                    response_time=abs(value),
                    response_length=0,
                    exception=None,
                )
