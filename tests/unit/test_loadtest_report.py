"""Report generation into a temporary directory: results.json's keys, an HTML page with its plots inside,
what was run at the top of every output, and one folder per run."""

from __future__ import annotations

import base64
import io
import json
import re
import struct
from pathlib import Path

from gateway.loadtest.measure import CallResult, aggregate
from gateway.loadtest.report import (
    LATEST,
    PLOT_DPI,
    PLOT_WIDTH_IN,
    new_run_folder,
    point_latest,
    render_text,
    write_outputs,
)
from gateway.loadtest.runner import RunResult

STARTED_AT = 1_700_000_000.0  # 2023-11-14T22:13:20Z


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
            outcome=("caller_hangup", "bot_hangup", "transferred")[i % 3],
            key_to_end_ms=(1200.0 + i,) if i % 3 else (),
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
    config = {"url": "ws://x/media", "calls": 6}
    return RunResult(config, calls, summary, (0.5, 1.0, 2.0), STARTED_AT, "0a1b2c3d4e5f", embedded=True)


def test_outputs_written_with_schema_and_images(tmp_path: Path) -> None:
    """results.json has config, summary (with percentiles and errors) and every call; report.html embeds
    its plots as base64 PNG images and lists the failed call."""
    paths = write_outputs(run_result(), tmp_path / "out")
    document = json.loads(paths["json"].read_text())
    assert set(document) >= {"schema_version", "run", "config", "summary", "calls", "started_at"}
    summary = document["summary"]
    assert set(summary["metrics"]) == {
        "connect_ms",
        "setup_ms",
        "response_ms",
        "barge_in_ms",
        "truncation_error_ms",
        "underrun_gap_ms",
        "rtp_gap_deviation_ms",
        "key_to_end_ms",
    }
    assert set(summary["metrics"]["response_ms"]) == {"count", "mean", "p50", "p95", "p99", "max", "min"}
    assert summary["errors"] == {"timeout": 1}
    assert len(document["calls"]) == 6
    assert document["calls"][1]["barge_in_ms"] == [21.0]
    assert summary["outcomes"] == {"bot_hangup": 2, "transferred": 2, "caller_hangup": 1, "failed": 1}
    assert [call["outcome"] for call in document["calls"][:3]] == [
        "caller_hangup",
        "bot_hangup",
        "transferred",
    ]
    page = paths["html"].read_text()
    assert page.count('src="data:image/png;base64,iVBORw0KGgo') >= 5  # 4 histograms/CDFs, active, over time
    assert "CA3" in page
    assert "timeout" in page
    assert "<td>2 bot hang-ups, 2 transfers, 1 caller hang-up, 1 failed</td>" in page
    assert "<th>ended</th>" in page  # the failed calls' table says how each ended


def test_text_table_lists_percentiles() -> None:
    """The plain-text table has one row per measurement with its count and percentiles."""
    out = io.StringIO()
    render_text(run_result(), out, use_rich=False)
    text = out.getvalue()
    assert re.search(r"^response latency +12 +522\.5 +534\.5", text, re.MULTILINE)
    assert "calls: 6 (5 completed, 1 failed)" in text
    assert "errors: timeout x1" in text
    assert "ended: 2 bot hang-ups, 2 transfers, 1 caller hang-up, 1 failed" in text
    assert re.search(r"^key press to end +4 +1,20[0-9]\.[0-9]", text, re.MULTILINE)


def test_every_output_starts_with_what_was_run(tmp_path: Path) -> None:
    """summary.txt, results.json and report.html each carry the run id, UTC date, target URL and mode,
    the text and the page before anything else."""
    paths = write_outputs(run_result(), tmp_path)
    facts = ["run: 0a1b2c3d4e5f", "date: 2023-11-14T22:13:20Z", "target: ws://x/media", "mode: embedded"]
    lines = paths["summary"].read_text().splitlines()
    assert [line.startswith(fact) for line, fact in zip(lines, facts, strict=False)] == [True] * 4
    document = json.loads(paths["json"].read_text())
    assert document["run"] == {
        "id": "0a1b2c3d4e5f",
        "date": "2023-11-14T22:13:20Z",
        "target": "ws://x/media",
        "mode": "embedded",
    }
    page = paths["html"].read_text()
    first_table = page[page.index("<table") : page.index("</table>")]
    for name, value in (f.split(": ", 1) for f in facts):
        assert f'<th scope="row">{name}</th><td>{value}' in first_table
    assert page.index("</table>") < page.index("<h2>")


def test_html_tables_have_no_empty_header_and_plots_fill_the_width(tmp_path: Path) -> None:
    """No table has an empty header cell; every plot is one PNG as wide as the others, shown at 100% of
    the page's width (height following)."""
    page = write_outputs(run_result(), tmp_path)["html"].read_text()
    assert re.search(r"<th[^>]*>\s*</th>", page) is None
    for head in re.findall(r"<thead>(.*?)</thead>", page):
        assert head.count("<th>") == len(re.findall(r"<th>[^<]+</th>", head))
    assert re.search(r"img \{[^}]*width: 100%;[^}]*height: auto;", page)
    assert 'name="viewport"' in page
    widths = {
        struct.unpack(">I", base64.b64decode(png)[16:20])[0]
        for png in re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    }
    assert widths == {int(PLOT_WIDTH_IN * PLOT_DPI)}


def test_each_run_gets_its_own_folder_and_latest_follows(tmp_path: Path) -> None:
    """Two runs starting in the same second write into two folders, nothing is overwritten, and
    `latest` points at the newer one."""
    result = run_result()
    first = new_run_folder(tmp_path, result)
    write_outputs(result, first)
    assert point_latest(tmp_path, first) == tmp_path / LATEST
    second = new_run_folder(tmp_path, result)
    point_latest(tmp_path, second)
    assert first.name == "20231114T221320Z-0a1b2c3d4e5f"
    assert second != first
    assert second.parent == tmp_path
    assert {p.name for p in first.iterdir()} == {"summary.txt", "results.json", "report.html"}
    assert (tmp_path / LATEST).resolve() == second.resolve()
    assert (tmp_path / LATEST).readlink() == Path(second.name)  # relative: the folder can be moved whole
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name, LATEST])
