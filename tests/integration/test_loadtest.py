"""The load generator over real sockets: the shipped scenarios, concurrently, through an in-process
gateway and emulator (embedded mode), and the CLI as a subprocess.

One run of four calls (question/answer, multi-turn, barge-in, DTMF + hang-up mid-answer) per provider,
four providers at a time (each provider's stream on its own route, through its own wire), feeds the
tests of this module; each test pins one property of one provider's results.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.emulator import EmulatorConfig
from gateway.loadtest.measure import CallResult
from gateway.loadtest.runner import RunConfig, RunResult, embedded_target, media_url, run_load
from gateway.loadtest.script import resolve_scenario
from gateway.loadtest.wires import PROVIDERS, make_wire
from tests.conftest import scaled
from tests.integration.test_cli import free_port

SCENARIOS = ("question_answer", "multi_turn", "barge_in", "dtmf_hangup")
TRUNCATE_TOLERANCE_MS = 40
REPO = Path(__file__).parents[2]
PROVIDERS_AT_ONCE = 4


async def _run_all() -> dict[str, RunResult]:
    """Every provider's four calls, several providers at once, through one gateway and one emulator."""
    mix = tuple((resolve_scenario(name), 1.0) for name in SCENARIOS)
    async with embedded_target(EmulatorConfig(reply_ms=1500), {"LOG_LEVEL": "warning"}) as target:
        configs = [
            RunConfig(
                media_url(target.base, provider),
                mix,
                provider=provider,
                calls=len(SCENARIOS),
                concurrency=len(SCENARIOS),
                keep_audio=True,
                keep_logs=True,
                append_ms=target.append_ms,
            )
            for provider in PROVIDERS
        ]
        results: list[RunResult] = []
        for wave in range(0, len(configs), PROVIDERS_AT_ONCE):  # all 28 at once is too noisy for 40 ms
            batch = configs[wave : wave + PROVIDERS_AT_ONCE]
            results += await asyncio.gather(*(run_load(config, emulator=target.emulator) for config in batch))
    return dict(zip(PROVIDERS, results, strict=True))


@pytest.fixture(scope="module")
def runs() -> dict[str, RunResult]:
    """Four calls per provider, one per shipped scenario (run once for the module)."""
    return asyncio.run(_run_all())


@pytest.fixture(params=PROVIDERS)
def run(request: pytest.FixtureRequest, runs: dict[str, RunResult]) -> RunResult:
    """One provider's four calls."""
    return runs[request.param]


def confirms(run: RunResult) -> bool:
    """Whether the run's provider confirms playback (marks, checkpoints, notifies): all but ACS."""
    return run.config["provider"] != "acs"


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
    """For every mark (checkpoint, notify): the confirmation is no earlier than the moment the audio
    before it finished playing (recomputed from the played spans); every mark is confirmed or flushed,
    except those still queued behind unplayed audio when the caller hung up. ACS is asked for none."""
    checked = 0
    for call in run.results:
        played_to = max((pos + ms for _, pos, ms in call.spans), default=0.0)
        for name, position, received, echoed, flushed in call.mark_log:
            if flushed:
                continue
            if echoed is None:
                assert position > played_to, f"{call.scenario}: mark {name} played but never echoed"
                continue
            span = next(s for s in call.spans if s[1] + s[2] >= position - 1e-6) if position else None
            done = received if span is None else span[0] + max(0.0, position - span[1])
            assert echoed >= max(done, received) - 1e-6, f"{call.scenario}: mark {name} echoed early"
            checked += 1
        assert call.marks_early == 0
        assert call.marks_unanswered == 0
    assert checked > 10 if confirms(run) else checked == 0
    assert run.summary.loop_lag_ms.count > 200  # the shared ticker kept ticking through the run


def test_clear_flushes_pending_marks_at_once(run: RunResult) -> None:
    """The barge-in call's clear drops every pending mark at the moment the clear arrived: confirmed
    then and there where the provider does so (Twilio, SignalWire, Telnyx), never where it does not."""
    call = by_scenario(run, "barge_in")
    assert len(call.clear_log) == 1
    clear_at, flushed_count = call.clear_log[0]
    flushed = [m for m in call.mark_log if m[4]]
    assert flushed_count == len(flushed)
    assert (flushed_count > 0) == confirms(run)
    expected = clear_at if make_wire(run.config["provider"], "x").flush_confirms_pending else None
    assert all(echoed == expected for _, _, _, echoed, _ in flushed)


def test_barge_in_truncation_within_tolerance(run: RunResult) -> None:
    """The emulator's accepted truncate is within 40 ms of what the phone really played of the item."""
    call = by_scenario(run, "barge_in")
    assert len(call.barge_in_ms) == 1
    assert len(call.truncation_error_ms) == 1
    assert abs(call.truncation_error_ms[0]) <= TRUNCATE_TOLERANCE_MS
    keys = by_scenario(run, "dtmf_hangup")  # its keys, pressed over the bot's answer, interrupt it too
    assert len(keys.truncation_error_ms) == 1
    assert abs(keys.truncation_error_ms[0]) <= TRUNCATE_TOLERANCE_MS
    assert run.summary.metrics["truncation_error_ms"].count == 2


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
    """`python -m gateway.loadtest --embedded --calls 3 --no-progress` exits 0 and writes the summary,
    results.json and report.html into the run's own folder, which `latest` points at. Two of the calls
    are tool_hangup's: with the default rule the bot ends each after key 9, and the report counts two bot
    hang-ups (the third call, question_answer, the caller hangs up)."""
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "gateway.loadtest", "--embedded", "--calls", "3", "--no-progress",
        "--scenario", "tool_hangup:2", "--scenario", "question_answer", "--reply-ms", "1000",
        "--output", str(out),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=scaled(60), cwd=REPO, env=os.environ
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (folder,) = [p for p in out.iterdir() if p.name != "latest"]
    assert (out / "latest").resolve() == folder.resolve()
    assert {p.name for p in folder.iterdir()} == {"summary.txt", "results.json", "report.html"}
    document = json.loads((folder / "results.json").read_text())
    assert document["summary"]["completed"] == 3
    assert document["summary"]["outcomes"] == {
        "bot_hangup": 2,
        "transferred": 0,
        "caller_hangup": 1,
        "failed": 0,
    }
    hangups = [call for call in document["calls"] if call["scenario"] == "tool_hangup"]
    assert [(call["outcome"], call["dtmf_sent"]) for call in hangups] == [("bot_hangup", "9")] * 2
    # The key's way to the model and its 1 s goodbye, played out at the phone in real time.
    assert all(1000 <= call["key_to_end_ms"][0] < scaled(3000) for call in hangups)
    assert document["run"]["mode"] == "embedded"
    assert folder.name.endswith("-" + document["run"]["id"])
    assert "data:image/png;base64," in (folder / "report.html").read_text()
    assert "calls: 3 (3 completed, 0 failed)" in done.stdout
    assert "ended: 2 bot hang-ups, 0 transfers, 1 caller hang-up, 0 failed" in done.stdout
    assert f"wrote {folder / 'summary.txt'}" in done.stdout


def test_cli_bad_usage_exits_2(tmp_path: Path) -> None:
    """An unknown scenario is bad usage: exit code 2 and a message naming it, before any call starts."""
    command = [sys.executable, "-m", "gateway.loadtest", "--embedded", "--scenario", "nope", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(30), cwd=tmp_path)
    assert done.returncode == 2
    assert "no scenario 'nope'" in done.stderr


def test_cli_runs_never_overwrite_or_share_call_sids(tmp_path: Path) -> None:
    """Two CLI runs with the same seed into the same --output (against a port nobody listens on, so
    every call fails at once) each get their own folder, and their CallSids are disjoint."""
    out = tmp_path / "out"
    url = f"ws://127.0.0.1:{free_port()}/media"
    command = [
        sys.executable, "-m", "gateway.loadtest", "--url", url, "--calls", "3", "--no-progress",
        "--seed", "1", "--output", str(out),
    ]  # fmt: skip
    documents = []
    for _ in range(2):
        done = subprocess.run(command, capture_output=True, text=True, timeout=scaled(60), cwd=tmp_path)
        assert done.returncode == 1, done.stdout + done.stderr  # every call failed: connect_failed
        document = json.loads((out / "latest" / "results.json").read_text())
        assert document["summary"]["errors"] == {"connect_failed": 3}
        assert document["run"]["target"] == url
        assert document["run"]["mode"] == "external"
        documents.append(document)
    assert len([p for p in out.iterdir() if p.name != "latest"]) == 2
    first, second = ({call["call_sid"] for call in d["calls"]} for d in documents)
    assert len(first) == len(second) == 3
    assert first.isdisjoint(second)
    for document in documents:
        assert all(call["call_sid"].startswith("CA" + document["run"]["id"]) for call in document["calls"])


def _ask_worker(url: str, calls: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start `python -m gateway.loadtest.worker`, place `calls` calls, close its stdin; (hello, answers)."""
    requests = "".join(json.dumps({"id": i, "scenario": "question_answer"}) + "\n" for i in range(calls))
    done = subprocess.run(
        [sys.executable, "-m", "gateway.loadtest.worker", "--url", url, "--scenario", "question_answer"],
        input=requests,
        capture_output=True,
        text=True,
        timeout=scaled(60),
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    hello, *answers = (json.loads(line) for line in done.stdout.splitlines())
    return hello["ready"], answers


def test_worker_processes_never_share_call_sids() -> None:
    """Two Locust worker children (as two Locust processes start them) announce different run ids, and
    every CallSid each makes starts with its own run id."""
    url = f"ws://127.0.0.1:{free_port()}/media"
    sids: list[set[str]] = []
    for _ in range(2):
        ready, answers = _ask_worker(url, 3)
        assert sorted(a["id"] for a in answers) == [0, 1, 2]
        assert {a["result"]["error"] for a in answers} == {"connect_failed"}
        mine = {a["result"]["call_sid"] for a in answers}
        assert all(sid.startswith("CA" + ready["run_id"]) for sid in mine)
        sids.append(mine)
    assert len(sids[0]) == len(sids[1]) == 3
    assert sids[0].isdisjoint(sids[1])
