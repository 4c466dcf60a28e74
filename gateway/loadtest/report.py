"""Load-test output: a summary table on the terminal, results.json, and a self-contained report.html.

The HTML page carries its plots (matplotlib, Agg backend) as base64 PNG `<img>`s: latency histograms
and CDFs, active calls over time, latency over time. It can be mailed or attached to a ticket as one
file. `rich` draws the terminal table when installed; otherwise a plain-text table is printed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.loadtest.measure import METRICS, Stats, Summary, active_calls_timeline
from gateway.loadtest.runner import RunResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SCHEMA_VERSION", "render_text", "results_document", "write_html", "write_json", "write_outputs"]

SCHEMA_VERSION = 1
LAG_WARNING_MS = 10.0  # loop-lag p99 above this: the generator itself is the bottleneck


def results_document(result: RunResult) -> dict[str, Any]:
    """results.json's content: config, aggregate summary, per-call results."""
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.started_at)),
        "config": result.config,
        "summary": dataclasses.asdict(result.summary),
        "calls": [call.as_dict() for call in result.results],
    }


def write_json(result: RunResult, path: Path) -> Path:
    """Write results.json."""
    path.write_text(json.dumps(results_document(result), indent=2) + "\n", encoding="utf-8")
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _rows(summary: Summary) -> list[tuple[str, Stats]]:
    rows = [(label, summary.metrics[key]) for key, label in METRICS.items()]
    rows.append(("generator loop lag", summary.loop_lag_ms))
    return rows


def _facts(summary: Summary) -> list[tuple[str, str]]:
    facts = [
        ("calls", f"{summary.calls} ({summary.completed} completed, {summary.failed} failed)"),
        ("duration", f"{summary.duration_s:.1f} s, at most {summary.max_active} calls at once"),
        ("scenarios", ", ".join(f"{name} x{n}" for name, n in summary.scenarios.items()) or "-"),
        ("errors", ", ".join(f"{kind} x{n}" for kind, n in summary.errors.items()) or "none"),
        ("underruns", str(summary.underruns)),
        ("marks", f"{summary.marks} ({summary.marks_early} early, {summary.marks_unanswered} unanswered)"),
    ]
    if summary.caller_frames_lost is not None:
        facts.append(("caller frames lost", str(summary.caller_frames_lost)))
    if summary.bot_audio_lost_ms is not None:
        facts.append(("bot audio lost", f"{summary.bot_audio_lost_ms:.1f} ms"))
    p99 = summary.loop_lag_ms.p99
    if p99 is not None and p99 > LAG_WARNING_MS:
        facts.append(("WARNING", f"generator loop lag p99 {p99:.1f} ms: the generator is overloaded"))
    return facts


def render_text(result: RunResult, out: TextIO, *, use_rich: bool = True) -> None:
    """Print the summary table (with rich when installed and `use_rich`)."""
    summary = result.summary
    if use_rich:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            pass
        else:
            table = Table(title="load test (ms)", title_justify="left")
            for column in ("measurement", "count", "p50", "p95", "p99", "max"):
                table.add_column(column, justify="left" if column == "measurement" else "right")
            for label, s in _rows(summary):
                table.add_row(label, str(s.count), _fmt(s.p50), _fmt(s.p95), _fmt(s.p99), _fmt(s.max))
            console = Console(file=out, width=100)
            console.print(table)
            for name, value in _facts(summary):
                console.print(f"[bold]{name}[/bold]: {value}", highlight=False)
            return
    out.write(f"{'measurement (ms)':<22}{'count':>7}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}\n")
    for label, s in _rows(summary):
        cells = "".join(f"{_fmt(v):>10}" for v in (s.p50, s.p95, s.p99, s.max))
        out.write(f"{label:<22}{s.count:>7}{cells}\n")
    for name, value in _facts(summary):
        out.write(f"{name}: {value}\n")


# --- HTML -------------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(result: RunResult) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    calls = result.results
    plots: list[tuple[str, str]] = []
    for key, label in METRICS.items():
        values = sorted(v for call in calls for v in getattr(call, key))
        if not values:
            continue
        fig = Figure(figsize=(9, 3.2))
        hist, cdf = fig.subplots(1, 2)
        hist.hist(values, bins=min(40, max(5, len(values) // 2)), color="#4477aa")
        hist.set_xlabel(f"{label} (ms)")
        hist.set_ylabel("count")
        cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], drawstyle="steps-post")
        cdf.set_xlabel(f"{label} (ms)")
        cdf.set_ylabel("fraction of samples")
        cdf.grid(alpha=0.3)
        plots.append((f"{label}: histogram and CDF", _png(fig)))
    timeline = active_calls_timeline(calls)
    if timeline:
        fig = Figure(figsize=(9, 3))
        ax = fig.subplots()
        ax.step([t for t, _ in timeline], [n for _, n in timeline], where="post")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("active calls")
        ax.grid(alpha=0.3)
        plots.append(("active calls over time", _png(fig)))
    series = [
        (label, [t for c in calls for t in getattr(c, at)], [v for c in calls for v in getattr(c, key)])
        for key, at, label in (
            ("response_ms", "response_at_s", "response latency"),
            ("barge_in_ms", "barge_in_at_s", "barge-in latency"),
        )
    ]
    if any(xs for _, xs, _ in series):
        fig = Figure(figsize=(9, 3))
        ax = fig.subplots()
        for label, xs, ys in series:
            if xs:
                ax.scatter(xs, ys, s=10, label=label)
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("ms")
        ax.legend()
        ax.grid(alpha=0.3)
        plots.append(("latency over time", _png(fig)))
    return plots


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_html(result: RunResult, path: Path) -> Path:
    """Write report.html: tables and plots in one file (plots need matplotlib)."""
    summary = result.summary
    stats_rows = [
        (label, str(s.count), _fmt(s.p50), _fmt(s.p95), _fmt(s.p99), _fmt(s.max))
        for label, s in _rows(summary)
    ]
    failed = [
        (str(c.index), c.scenario, c.call_sid, c.error or "", c.error_detail)
        for c in result.results
        if not c.ok
    ]
    try:
        plots = _plots(result)
        images = "".join(
            f'<h3>{html.escape(title)}</h3><img alt="{html.escape(title)}" src="data:image/png;base64,{png}">'
            for title, png in plots
        )
    except ImportError:
        images = "<p>(install matplotlib for plots)</p>"
    config = html.escape(json.dumps(result.config, indent=2))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>voice-gateway load test</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>voice-gateway load test</h1>
{_table(("", ""), _facts(summary))}
<h2>Measurements (ms)</h2>
{_table(("measurement", "count", "p50", "p95", "p99", "max"), stats_rows)}
<h2>Plots</h2>
{images}
<h2>Failed calls</h2>
{_table(("#", "scenario", "CallSid", "error", "detail"), failed) if failed else "<p>none</p>"}
<h2>Configuration</h2>
<pre>{config}</pre>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Write results.json and report.html into `out_dir` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "json": write_json(result, out_dir / "results.json"),
        "html": write_html(result, out_dir / "report.html"),
    }
