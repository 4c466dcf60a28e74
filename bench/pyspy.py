"""Sampling a running process with py-spy (`pip install py-spy`) and ranking its hot spots.

`record(pid, seconds)` runs `py-spy record --format raw` (collapsed stacks: "frame;frame;... count"
per line) without stopping the target (`--nonblocking`, so the profile does not add latency), and
`hot_spots(collapsed)` ranks functions by the share of samples in which they were running (self) and
on the stack at all (total).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

__all__ = ["IDLE_FRAMES", "HotSpot", "Profile", "hot_spots", "py_spy_path", "record"]

_LOCATION = re.compile(r"\s*\(([^()]*?):\d+\)$")
# Leaf frames that mean "waiting for I/O": py-spy samples them too; they are idle time, not work.
IDLE_FRAMES = frozenset(
    {"select (selectors.py)", "EpollSelector.select (selectors.py)", "run_forever (uvloop)"}
)


@dataclass(frozen=True, slots=True)
class HotSpot:
    """A function (`name (file)`) and its share of samples, in percent."""

    function: str
    self_pct: float
    total_pct: float


def py_spy_path() -> str | None:
    """The py-spy executable next to this interpreter, else on PATH, else None."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def _function(frame: str) -> str:
    """`name (path/to/file.py:123)` -> `name (file.py)`: lines merged, so a function is one row."""
    match = _LOCATION.search(frame)
    if match is None:
        return frame.strip()
    return f"{frame[: match.start()].strip()} ({Path(match.group(1)).name})"


@dataclass(frozen=True, slots=True)
class Profile:
    """Hot spots as shares of the busy samples, and the share of all samples spent idle."""

    spots: list[HotSpot]
    idle_pct: float
    samples: int


def hot_spots(collapsed: str, top: int = 20) -> Profile:
    """Rank functions in py-spy's raw (collapsed) output by self samples (ties by total samples),
    leaving out samples idle in the selector (`IDLE_FRAMES`)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = idle = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_function(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if frames[-1] in IDLE_FRAMES:
            idle += count
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            total[name] += count
    everything = samples + idle
    if not samples:
        return Profile([], 100.0 if idle else 0.0, everything)
    ranked = sorted(own, key=lambda name: (own[name], total[name]), reverse=True)[:top]
    spots = [HotSpot(name, 100 * own[name] / samples, 100 * total[name] / samples) for name in ranked]
    return Profile(spots, 100 * idle / everything, everything)


async def record(pid: int, seconds: float, *, rate: int = 200, cpu: int | None = None) -> str:
    """Sample process `pid` for `seconds`; returns the collapsed stacks ("" if py-spy is unavailable).

    `cpu` pins py-spy itself to that core (keep it off the core being measured).
    """
    exe = py_spy_path()
    if exe is None:
        return ""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "profile.txt"
        argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        argv += ["--rate", str(rate), "--format", "raw", "--nonblocking", "--output", str(out)]
        if cpu is not None and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0 or not out.exists():
            print(
                f"py-spy failed ({proc.returncode}): {err.decode(errors='replace')[-300:]}", file=sys.stderr
            )
            return ""
        return out.read_text()
