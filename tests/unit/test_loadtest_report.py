"""Report generation into a temporary directory: results.json's keys, an HTML page with its plots inside."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from gateway.loadtest.measure import CallResult, aggregate
from gateway.loadtest.report import render_text, write_outputs
from gateway.loadtest.runner import RunResult


def run_result() -> RunResult:
    calls = tuple(
        CallResult(
            index=i,
            scenario="barge_in" if i % 2 else "question_answer",
            call_sid=f"CA{i}",
            started_s=i * 0.5,
            ended_s=i * 0.5 + 4,
            ok=i != 3,
            error="timeout" if i == 3 else None,
            connect_ms=(3.0 + i,),
            response_ms=(510.0 + i, 530.0 + i),
            response_at_s=(i + 1.0, i + 3.0),
            barge_in_ms=(20.0 + i,) if i % 2 else (),
            barge_in_at_s=(i + 2.0,) if i % 2 else (),
            truncation_error_ms=(-4.0,) if i % 2 else (),
        )
        for i in range(6)
    )
    summary = aggregate(calls, 7.0, [0.5, 1.0, 2.0])
    return RunResult({"url": "ws://x/media", "calls": 6}, calls, summary, (0.5, 1.0, 2.0), 0.0)


def test_outputs_written_with_schema_and_images(tmp_path: Path) -> None:
    """results.json has config, summary (with percentiles and errors) and every call; report.html embeds
    its plots as base64 PNG images and lists the failed call."""
    paths = write_outputs(run_result(), tmp_path / "out")
    document = json.loads(paths["json"].read_text())
    assert set(document) >= {"schema_version", "config", "summary", "calls", "started_at"}
    summary = document["summary"]
    assert set(summary["metrics"]) == {
        "connect_ms",
        "setup_ms",
        "response_ms",
        "barge_in_ms",
        "truncation_error_ms",
        "underrun_gap_ms",
    }
    assert set(summary["metrics"]["response_ms"]) == {"count", "mean", "p50", "p95", "p99", "max", "min"}
    assert summary["errors"] == {"timeout": 1}
    assert len(document["calls"]) == 6
    assert document["calls"][1]["barge_in_ms"] == [21.0]
    page = paths["html"].read_text()
    assert page.count('src="data:image/png;base64,iVBORw0KGgo') >= 5  # 4 histograms/CDFs, active, over time
    assert "CA3" in page
    assert "timeout" in page


def test_text_table_lists_percentiles() -> None:
    """The plain-text table has one row per measurement with its count and percentiles."""
    out = io.StringIO()
    render_text(run_result(), out, use_rich=False)
    text = out.getvalue()
    assert re.search(r"^response latency +12 +522\.5 +534\.5", text, re.MULTILINE)
    assert "calls: 6 (5 completed, 1 failed)" in text
    assert "errors: timeout x1" in text
