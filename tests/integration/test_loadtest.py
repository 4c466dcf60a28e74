"""The load generator over real sockets: the shipped scenarios, concurrently, through an in-process
gateway and emulator (embedded mode), and the CLI as a subprocess.

One run of four calls (question/answer, multi-turn, barge-in, DTMF + hang-up mid-answer) feeds the
tests of this module; each pins one property of the results.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.emulator import EmulatorConfig
from gateway.loadtest.measure import CallResult
from gateway.loadtest.runner import RunConfig, RunResult, embedded_target, run_load
from gateway.loadtest.script import resolve_scenario
from tests.conftest import scaled

SCENARIOS = ("question_answer", "multi_turn", "barge_in", "dtmf_hangup")
TRUNCATE_TOLERANCE_MS = 40
REPO = Path(__file__).parents[2]


async def _run() -> RunResult:
    mix = tuple((resolve_scenario(name), 1.0) for name in SCENARIOS)
    async with embedded_target(EmulatorConfig(reply_ms=1500), {"LOG_LEVEL": "warning"}) as target:
        config = RunConfig(
            target.url,
            mix,
            calls=len(SCENARIOS),
            concurrency=len(SCENARIOS),
            keep_audio=True,
            keep_logs=True,
            append_ms=target.append_ms,
        )
        return await run_load(config, emulator=target.emulator)


@pytest.fixture(scope="module")
def run() -> RunResult:
    """Four calls, one per shipped scenario, all at once (run once for the module)."""
    return asyncio.run(_run())


def by_scenario(run: RunResult, name: str) -> CallResult:
    return next(r for r in run.results if r.scenario == name)


def test_every_call_completes_without_errors(run: RunResult) -> None:
    """All four scenarios run at once and complete: no error of any kind, each had bot audio."""
    assert sorted(r.scenario for r in run.results) == sorted(SCENARIOS)
    assert [(r.scenario, r.error, r.error_detail) for r in run.results if not r.ok] == []
    assert run.summary.errors == {}
    assert all(r.bot_audio_received_ms > 0 for r in run.results)
    assert len(by_scenario(run, "multi_turn").response_ms) == 2
    assert by_scenario(run, "dtmf_hangup").dtmf_sent == "123"


def test_marks_echoed_only_after_their_audio_played(run: RunResult) -> None:
    """For every mark: the echo is no earlier than the moment the audio before it finished playing
    (recomputed from the played spans); every mark is echoed or flushed, except those still queued
    behind unplayed audio when the caller hung up."""
    checked = 0
    for call in run.results:
        played_to = max((pos + ms for _, pos, ms in call.spans), default=0.0)
        for name, position, received, echoed, flushed in call.mark_log:
            if echoed is None:
                assert position > played_to, f"{call.scenario}: mark {name} played but never echoed"
                continue
            if flushed:
                continue
            span = next(s for s in call.spans if s[1] + s[2] >= position - 1e-6) if position else None
            done = received if span is None else span[0] + max(0.0, position - span[1])
            assert echoed >= max(done, received) - 1e-6, f"{call.scenario}: mark {name} echoed early"
            checked += 1
        assert call.marks_early == 0
        assert call.marks_unanswered == 0
    assert checked > 50
    assert run.summary.loop_lag_ms.count > 200  # the shared ticker kept ticking through the run


def test_clear_flushes_pending_marks_at_once(run: RunResult) -> None:
    """The barge-in call's clear echoes every pending mark at the moment the clear arrived."""
    call = by_scenario(run, "barge_in")
    assert len(call.clear_log) == 1
    clear_at, flushed_count = call.clear_log[0]
    flushed = [m for m in call.mark_log if m[4]]
    assert flushed_count == len(flushed) > 0
    assert all(echoed == clear_at for _, _, _, echoed, _ in flushed)


def test_barge_in_truncation_within_tolerance(run: RunResult) -> None:
    """The emulator's accepted truncate is within 40 ms of what the phone really played of the item."""
    call = by_scenario(run, "barge_in")
    assert len(call.barge_in_ms) == 1
    assert len(call.truncation_error_ms) == 1
    assert abs(call.truncation_error_ms[0]) <= TRUNCATE_TOLERANCE_MS
    assert run.summary.metrics["truncation_error_ms"].count == 1


def test_no_frames_lost_in_either_direction(run: RunResult) -> None:
    """Every caller frame reached the emulator and every byte of every uninterrupted reply the phone."""
    for call in run.results:
        assert call.caller_frames_lost == 0, call.scenario
        assert call.bot_audio_lost_ms == 0, call.scenario
        assert call.caller_audio_received_ms is not None
        assert call.caller_audio_received_ms > 0
    assert run.summary.caller_frames_lost == 0
    assert run.summary.bot_audio_lost_ms == 0


def test_cli_embedded_run_writes_outputs(tmp_path: Path) -> None:
    """`python -m gateway.loadtest --embedded --calls 2 --no-progress` exits 0 and writes the summary,
    results.json and report.html."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "gateway.loadtest", "--embedded", "--calls", "2", "--no-progress",
        "--scenario", "question_answer", "--scenario", "dtmf_hangup", "--reply-ms", "1000",
        "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=scaled(60), cwd=REPO, env=os.environ
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {p.name for p in out.iterdir()} == {"summary.txt", "results.json", "report.html"}
    document = json.loads((out / "results.json").read_text())
    assert document["summary"]["completed"] == 2
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "calls: 2 (2 completed, 0 failed)" in done.stdout


def test_cli_bad_usage_exits_2(tmp_path: Path) -> None:
    """An unknown scenario is bad usage: exit code 2 and a message naming it, before any call starts."""
    command = [sys.executable, "-m", "gateway.loadtest", "--embedded", "--scenario", "nope", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30), cwd=tmp_path)
    assert done.returncode == 2
    assert "no scenario 'nope'" in done.stderr
