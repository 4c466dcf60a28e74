"""Load-test output: a summary table on the terminal, and in the run's own folder summary.txt,
results.json and a self-contained report.html.

Each of them starts with what was run: the run id (the prefix of every CallSid of the run), the UTC
date, the target URL and the mode (embedded: an in-process gateway and emulator; or an external
gateway); and each counts how the calls ended (bot hang-ups, transfers, caller hang-ups, failures;
results.json has each call's `outcome` too). `new_run_folder()` gives every run a fresh folder, so a run
never overwrites another; `point_latest()` points `latest` beside it at the newest. The HTML page
carries its plots (matplotlib, Agg backend) as base64 PNG `<img>`s that fill the page's width: latency
histograms and CDFs, active calls over time, latency over time. It can be mailed or attached to a ticket
as one file. `rich` draws the terminal table when installed; otherwise a plain-text table is printed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import html
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from gateway.loadtest.measure import METRICS, Stats, Summary, active_calls_timeline
from gateway.loadtest.runner import RunResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "LATEST",
    "SCHEMA_VERSION",
    "new_run_folder",
    "point_latest",
    "render_text",
    "results_document",
    "run_facts",
    "write_html",
    "write_json",
    "write_outputs",
    "write_summary",
]

SCHEMA_VERSION = 1
LAG_WARNING_MS = 10.0  # loop-lag p99 above this: the generator itself is the bottleneck
LATEST = "latest"  # the symlink, beside the run folders, to the newest one
# Plots are drawn this wide (inches x dpi = 1440 px) and shown at the page's width: crisp on a wide screen.
PLOT_WIDTH_IN, PLOT_DPI = 12.0, 120


def _utc(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_s))


def run_facts(result: RunResult) -> list[tuple[str, str]]:
    """What was run, for the top of every output: run id, UTC date, target URL, mode."""
    mode = "embedded (in-process gateway and emulator)" if result.embedded else "external gateway"
    return [
        ("run", result.run_id or "-"),
        ("date", _utc(result.started_at)),
        ("target", str(result.config.get("url", "-"))),
        ("mode", mode),
    ]


def results_document(result: RunResult) -> dict[str, Any]:
    """results.json's content: what was run, config, aggregate summary, per-call results."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run": {
            "id": result.run_id,
            "date": _utc(result.started_at),
            "target": result.config.get("url"),
            "mode": "embedded" if result.embedded else "external",
        },
        "generated_at": _utc(time.time()),
        "started_at": _utc(result.started_at),
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


OUTCOME_NAMES = {
    "bot_hangup": ("bot hang-up", "bot hang-ups"),
    "transferred": ("transfer", "transfers"),
    "caller_hangup": ("caller hang-up", "caller hang-ups"),
    "failed": ("failed", "failed"),
}


def _outcomes(outcomes: dict[str, int]) -> str:
    """`2 bot hang-ups, 1 transfer, 0 caller hang-ups, 0 failed` (other ends by their label)."""
    parts = []
    for key, n in outcomes.items():
        one, many = OUTCOME_NAMES.get(key, (key, key))
        parts.append(f"{n} {one if n == 1 else many}")
    return ", ".join(parts) or "-"


def _facts(summary: Summary) -> list[tuple[str, str]]:
    facts = [
        ("calls", f"{summary.calls} ({summary.completed} completed, {summary.failed} failed)"),
        ("ended", _outcomes(summary.outcomes)),
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
    if summary.rtp_lost is not None:
        facts.append(("RTP from the gateway", f"{summary.rtp_lost} lost, {summary.rtp_reordered} reordered"))
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
            for name, value in run_facts(result):
                console.print(f"[bold]{name}[/bold]: {value}", highlight=False)
            console.print(table)
            for name, value in _facts(summary):
                console.print(f"[bold]{name}[/bold]: {value}", highlight=False)
            return
    for name, value in run_facts(result):
        out.write(f"{name}: {value}\n")
    out.write(f"{'measurement (ms)':<22}{'count':>7}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}\n")
    for label, s in _rows(summary):
        cells = "".join(f"{_fmt(v):>10}" for v in (s.p50, s.p95, s.p99, s.max))
        out.write(f"{label:<22}{s.count:>7}{cells}\n")
    for name, value in _facts(summary):
        out.write(f"{name}: {value}\n")


# --- HTML -------------------------------------------------------------------------------------------


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PLOT_DPI)  # no tight bbox: every plot is the same width
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(result: RunResult) -> list[tuple[str, str]]:
    """(title, base64 PNG) for each plot."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    calls = result.results
    plots: list[tuple[str, str]] = []
    for key, label in METRICS.items():
        values = sorted(v for call in calls for v in getattr(call, key))
        if not values:
            continue
        fig = Figure(figsize=(PLOT_WIDTH_IN, 3.6), layout="constrained")
        hist, cdf = fig.subplots(1, 2)
        hist.hist(values, bins=min(40, max(5, len(values) // 2)), color="#4477aa")
        hist.set_xlabel(f"{label} (ms)")
        hist.set_ylabel("count")
        hist.yaxis.set_major_locator(MaxNLocator(integer=True))
        cdf.plot(values, [(i + 1) / len(values) for i in range(len(values))], drawstyle="steps-post")
        cdf.set_xlabel(f"{label} (ms)")
        cdf.set_ylabel("fraction of samples")
        cdf.grid(alpha=0.3)
        plots.append((f"{label}: histogram and CDF", _png(fig)))
    timeline = active_calls_timeline(calls)
    if timeline:
        fig = Figure(figsize=(PLOT_WIDTH_IN, 3.2), layout="constrained")
        ax = fig.subplots()
        ax.step([t for t, _ in timeline], [n for _, n in timeline], where="post")
        ax.set_xlabel("time since start (s)")
        ax.set_ylabel("active calls")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
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
        fig = Figure(figsize=(PLOT_WIDTH_IN, 3.2), layout="constrained")
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


def _facts_table(facts: Sequence[tuple[str, str]], css_class: str) -> str:
    """Name/value rows, the name as a row header: no header row (it would be empty)."""
    body = "".join(
        f'<tr><th scope="row">{html.escape(name)}</th><td>{html.escape(value)}</td></tr>'
        for name, value in facts
    )
    return f'<table class="{css_class}"><tbody>{body}</tbody></table>'


def write_html(result: RunResult, path: Path) -> Path:
    """Write report.html: tables and plots in one file (plots need matplotlib)."""
    summary = result.summary
    stats_rows = [
        (label, str(s.count), _fmt(s.p50), _fmt(s.p95), _fmt(s.p99), _fmt(s.max))
        for label, s in _rows(summary)
    ]
    failed = [
        (str(c.index), c.scenario, c.call_sid, c.outcome, c.error or "", c.error_detail)
        for c in result.results
        if not c.ok
    ]
    try:
        plots = _plots(result)
        images = "".join(
            f"<figure><figcaption>{html.escape(title)}</figcaption>"
            f'<img alt="{html.escape(title)}" src="data:image/png;base64,{png}"></figure>'
            for title, png in plots
        )
    except ImportError:
        images = "<p>(no plots: matplotlib is missing; pip install 'voice-gateway[loadtest]')</p>"
    config = html.escape(json.dumps(result.config, indent=2))
    date = _utc(result.started_at)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>voice-gateway load test {html.escape(date)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
td:first-child, th:first-child, table.facts td, table.run td {{ text-align: left; }}
th[scope="row"] {{ font-weight: 600; background: #f4f4f4; }}
table.run {{ font-size: 1.1em; }}
figure {{ margin: 1.5em 0; }}
figcaption {{ font-weight: 600; margin-bottom: 0.3em; }}
img {{ display: block; width: 100%; height: auto; }}
</style></head><body>
<h1>voice-gateway load test</h1>
{_facts_table(run_facts(result), "run")}
<h2>Summary</h2>
{_facts_table(_facts(summary), "facts")}
<h2>Measurements (ms)</h2>
{_table(("measurement", "count", "p50", "p95", "p99", "max"), stats_rows)}
<h2>Plots</h2>
{images}
<h2>Failed calls</h2>
{_table(("#", "scenario", "CallSid", "ended", "error", "detail"), failed) if failed else "<p>none</p>"}
<h2>Configuration</h2>
<pre>{config}</pre>
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path


def write_summary(result: RunResult, path: Path) -> Path:
    """Write summary.txt: the plain-text table that the terminal shows."""
    text = io.StringIO()
    render_text(result, text, use_rich=False)
    path.write_text(text.getvalue(), encoding="utf-8")
    return path


def write_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Write summary.txt, results.json and report.html into `out_dir` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {
        "summary": write_summary(result, out_dir / "summary.txt"),
        "json": write_json(result, out_dir / "results.json"),
        "html": write_html(result, out_dir / "report.html"),
    }


def new_run_folder(parent: Path, result: RunResult) -> Path:
    """Create and return this run's own folder in `parent`: `<UTC start>-<run id>`, never an existing one."""
    parent.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(result.started_at))
    if result.run_id:
        stem += f"-{result.run_id}"
    for n in range(1000):
        folder = parent / (stem if n == 0 else f"{stem}.{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{parent / stem}: taken, and so are its numbered alternatives")


def point_latest(parent: Path, folder: Path) -> Path | None:
    """Point `parent/latest` at `folder` (a relative symlink, swapped atomically); None where symlinks
    cannot be made (or `latest` is something else): the run folder stands on its own."""
    link = parent / LATEST
    temporary = parent / f".{LATEST}.{os.getpid()}"
    try:
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(folder.name, target_is_directory=True)
        os.replace(temporary, link)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return None
    return link
