"""locustfile.py under a real headless Locust: one worker child per Locust process, whatever the users.

Locust is the optional `[locust]` extra: without it installed these tests skip. Locust is never imported
here (importing it monkey-patches this process for gevent); it runs as `python -m locust`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from gateway.emulator import EmulatorConfig
from gateway.loadtest.runner import embedded_target
from gateway.realtime.upstream import CLIENT_REQUEST_ID_HEADER
from tests.conftest import scaled

REPO = Path(__file__).parents[2]
USERS = 2

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("locust") is None, reason="locust is not installed (pip install '.[locust]')"
)


@pytest.mark.parametrize("provider", ["twilio", "vonage"])
async def test_users_share_one_worker_process(tmp_path: Path, provider: str) -> None:
    """Two users placing a call each at the same moment go through ONE worker child, whose run id
    starts the CallSid of both calls, and both calls complete: as Twilio, and as another provider
    (Vonage: binary audio frames) on its own route under the base URL."""
    async with embedded_target(EmulatorConfig(reply_ms=1000), {"LOG_LEVEL": "warning"}) as target:
        env = {
            **os.environ,
            "LOADTEST_PROVIDER": provider,
            "LOADTEST_SCENARIOS": "question_answer",
            "LOADTEST_PAUSE_S": "3600",  # one call per user: the run ends while every user pauses
        }
        # Both users start at once (-r 100), so both ask for the worker while the first is starting it;
        # at the time limit each finishes the call it is in (--stop-timeout).
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "locust", "-f", str(REPO / "locustfile.py"), "--headless",
            "-u", str(USERS), "-r", "100", "-t", f"{max(2, round(scaled(2)))}s",
            "--stop-timeout", str(round(scaled(60))), "--host", target.base,
            "--json-file", str(tmp_path / "stats"), "--only-summary",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, stderr = await asyncio.wait_for(process.communicate(), scaled(120))
        log = stdout.decode() + stderr.decode()
        assert process.returncode == 0, log
        started = re.findall(r"loadtest worker pid (\d+) started: CallSids CA([0-9a-f]+)\.\.\.", log)
        assert len(started) == 1, log
        (_, run_id) = started[0]
        sessions = target.emulator.sessions
        assert len(sessions) == USERS
        for session in sessions:
            assert uuid.UUID(session.headers[CLIENT_REQUEST_ID_HEADER]).hex.startswith(run_id)
    stats = {entry["name"]: entry for entry in json.loads((tmp_path / "stats.json").read_text())}
    assert stats["question_answer"]["num_requests"] == USERS
    assert stats["question_answer"]["num_failures"] == 0
