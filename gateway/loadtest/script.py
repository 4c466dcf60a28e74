"""Scenario files: what one simulated caller says and does, as a list of steps (JSON or TOML).

```json
{
  "name": "barge_in",
  "description": "ask, then talk over the answer",
  "timeout_s": 30,
  "steps": [
    {"say": "hello.wav"},
    {"interrupt_after_ms": 800, "say": "stop.wav"},
    {"wait_for_bot": {"timeout_s": 10}}
  ]
}
```

Steps (one action each; the caller streams 20 ms frames continuously, silence while listening):

- `{"say": "FILE.wav"}`: stream the recording at real time.
- `{"wait_for_bot": {"timeout_s": 10, "quiet_ms": 300}}`: silence until bot audio starts, then until it
  has all played and nothing new came for `quiet_ms` (the bot's turn played out).
- `{"interrupt_after_ms": N, "say": "FILE.wav", "timeout_s": 10}`: listen until N ms of the bot have
  been heard (on the simulated phone's playback clock), then talk over it.
- `{"dtmf": "123"}`: press keys, one digit every 100 ms (silence keeps streaming).
- `{"interrupt_after_ms": N, "dtmf": "123"}`: listen until N ms of the bot have been heard, then press
  the keys over it.
- `{"silence_ms": 500}`: stay silent.
- `{"hang_up_after_s": 2}`: stay silent that long, then hang up; steps may not follow it. The end of the
  script hangs up too (`stop`, then close).
- `{"expect_end": {"outcome": "bot_hangup", "timeout_s": 10}}`: stay silent until the gateway ends the
  call; the call passes when it ended that way: `bot_hangup` (the bot's end_call), `transferred` (its
  transfer_call), or `any` of the two. It fails (`end_missing`) when the call is still up after
  `timeout_s`, and (`wrong_end:OUTCOME`) when it ended otherwise. Steps may not follow it. A provider's
  stream tells the outcome by the gateway's close reason; a SIP call by the gateway's BYE, which follows
  the REFER the phone accepted when the call was transferred (`gateway.loadtest.sip_uac`).

Recording paths are relative to the scenario file, or to a `recordings/` folder beside it or beside
its folder, or name one of the shipped recordings (`SHIPPED_RECORDINGS`). The shipped scenarios and
recordings are package data (`gateway/loadtest/data/`), so they come with any install, editable or
not. `timeout_s` (default 60) bounds the whole call. The first step being `wait_for_bot` means the bot
speaks first (a gateway with `BOT_GREETING`): the call's setup time is then measured.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.loadtest.recordings import Recording, RecordingError, load_recording

__all__ = [
    "DEFAULT_SCENARIO_DIR",
    "DTMF_DIGITS",
    "END_OUTCOMES",
    "SHIPPED_RECORDINGS",
    "TOOL_ENDS",
    "Dtmf",
    "ExpectEnd",
    "HangUp",
    "Interrupt",
    "Say",
    "Scenario",
    "ScenarioError",
    "Silence",
    "Step",
    "WaitForBot",
    "load_scenario",
    "parse_mix",
    "parse_scenario",
    "resolve_scenario",
]

# Package data beside this module: found the same way in a source checkout, an editable and a wheel install.
DEFAULT_SCENARIO_DIR = Path(__file__).resolve().parent / "data" / "scenarios"
SHIPPED_RECORDINGS = DEFAULT_SCENARIO_DIR.parent / "recordings"
DTMF_DIGITS = frozenset("0123456789*#ABCD")
DEFAULT_CALL_TIMEOUT_S = 60.0
DEFAULT_STEP_TIMEOUT_S = 10.0
DEFAULT_QUIET_MS = 300
STEP_KEYS = (
    "say",
    "wait_for_bot",
    "interrupt_after_ms",
    "dtmf",
    "silence_ms",
    "hang_up_after_s",
    "expect_end",
)
TOOL_ENDS = ("bot_hangup", "transferred")  # how the bot's tools end a call (the gateway's outcome labels)
ANY_END = "any"
END_OUTCOMES = (*TOOL_ENDS, ANY_END)


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the file, the step and the problem."""


@dataclass(frozen=True, slots=True)
class Say:
    """Stream a recording at real time."""

    recording: Recording


@dataclass(frozen=True, slots=True)
class WaitForBot:
    """Listen until the bot's turn has started and then played out."""

    timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    quiet_ms: int = DEFAULT_QUIET_MS


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Listen until `after_ms` of the bot has been heard, then say the recording over it (or, with
    `digits`, press those keys over it, one every 100 ms)."""

    after_ms: float
    recording: Recording | None
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S
    digits: str = ""


@dataclass(frozen=True, slots=True)
class Dtmf:
    """Press these keys, one every 100 ms."""

    digits: str


@dataclass(frozen=True, slots=True)
class Silence:
    """Stay silent this long."""

    ms: int


@dataclass(frozen=True, slots=True)
class HangUp:
    """Stay silent `after_s` seconds, then hang up."""

    after_s: float


@dataclass(frozen=True, slots=True)
class ExpectEnd:
    """Stay silent until the gateway ends the call, within `timeout_s`; it should end as `outcome`
    (`bot_hangup`, `transferred`, or `any` of the two)."""

    outcome: str = ANY_END
    timeout_s: float = DEFAULT_STEP_TIMEOUT_S

    def accepts(self, outcome: str) -> bool:
        """Whether the call ending as `outcome` (the gateway's label) is the end this step expects."""
        return outcome == self.outcome or (self.outcome == ANY_END and outcome in TOOL_ENDS)


Step = Say | WaitForBot | Interrupt | Dtmf | Silence | HangUp | ExpectEnd


@dataclass(frozen=True, slots=True)
class Scenario:
    """A caller script: its steps, a bound on the whole call, and where it came from."""

    name: str
    steps: tuple[Step, ...]
    description: str = ""
    timeout_s: float = DEFAULT_CALL_TIMEOUT_S
    source: str = ""

    @property
    def bot_speaks_first(self) -> bool:
        """Whether the script starts by listening for the bot (a greeting)."""
        return isinstance(self.steps[0], WaitForBot)

    @property
    def expected_end(self) -> ExpectEnd | None:
        """The end the script waits for (its last step), or None: the caller hangs up."""
        last = self.steps[-1]
        return last if isinstance(last, ExpectEnd) else None


class _Parser:
    """Turns one decoded scenario document into a `Scenario`, with error messages that point at the step."""

    def __init__(self, where: str, search: Sequence[Path], cache: dict[Path, Recording]) -> None:
        self.where = where
        self.search = search
        self.cache = cache

    def fail(self, at: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.where}: {at}: {problem}")

    def number(self, value: object, at: str, *, positive: bool = True) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0) or (not positive and value < 0):  # type: ignore[operator]
            kind = "a positive number" if positive else "a number >= 0"
            raise self.fail(at, f"must be {kind}, got {value!r}")
        return float(value)  # type: ignore[arg-type]

    def recording(self, value: object, at: str) -> Recording:
        if not isinstance(value, str) or not value:
            raise self.fail(at, f"must be a WAV file name, got {value!r}")
        for folder in self.search:
            path = (folder / value).resolve()
            if path.is_file():
                if path not in self.cache:
                    try:
                        self.cache[path] = load_recording(path)
                    except RecordingError as exc:
                        raise self.fail(at, str(exc)) from None
                return self.cache[path]
        looked = ", ".join(str(folder) for folder in self.search)
        raise self.fail(at, f"recording {value!r} not found (looked in {looked})")

    def options(self, value: object, at: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(at, f'must be an object like {{"timeout_s": 10}}, got {value!r}')
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(at, f"unknown option {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
        return value

    def step(self, raw: object, at: str) -> Step:
        if not isinstance(raw, dict) or not raw:
            raise self.fail(at, f"a step must be a non-empty object, got {raw!r}")
        unknown = sorted(set(raw) - {*STEP_KEYS, "timeout_s"})
        if unknown:
            raise self.fail(at, f"unknown key {unknown[0]!r}; a step has one of: {', '.join(STEP_KEYS)}")
        if "interrupt_after_ms" in raw:
            return self.interrupt(raw, at)
        if "timeout_s" in raw:
            raise self.fail(
                at, "timeout_s goes in an interrupt_after_ms step, or inside wait_for_bot or expect_end"
            )
        actions = [key for key in STEP_KEYS if key in raw]
        if len(actions) != 1:
            raise self.fail(at, f"a step has exactly one action, got {', '.join(sorted(raw))}")
        key = actions[0]
        value, here = raw[key], f"{at}.{key}"
        if key == "say":
            return Say(self.recording(value, here))
        if key == "wait_for_bot":
            options = self.options({} if value is True else value, here, {"timeout_s", "quiet_ms"})
            timeout = self.number(options.get("timeout_s", DEFAULT_STEP_TIMEOUT_S), f"{here}.timeout_s")
            quiet = self.number(options.get("quiet_ms", DEFAULT_QUIET_MS), f"{here}.quiet_ms")
            return WaitForBot(timeout, int(quiet))
        if key == "dtmf":
            return Dtmf(self.digits(value, here))
        if key == "silence_ms":
            return Silence(int(self.number(value, here)))
        if key == "expect_end":
            return self.expect_end(value, here)
        return HangUp(self.number(value, here, positive=False))

    def digits(self, value: object, at: str) -> str:
        if not isinstance(value, str) or not value or not set(value) <= DTMF_DIGITS:
            raise self.fail(at, f"must be a string of keys 0-9 * # A-D, got {value!r}")
        return value

    def expect_end(self, value: object, at: str) -> ExpectEnd:
        options = self.options({} if value is True else value, at, {"outcome", "timeout_s"})
        outcome = options.get("outcome", ANY_END)
        if outcome not in END_OUTCOMES:
            raise self.fail(f"{at}.outcome", f"must be one of {', '.join(END_OUTCOMES)}, got {outcome!r}")
        timeout = self.number(options.get("timeout_s", DEFAULT_STEP_TIMEOUT_S), f"{at}.timeout_s")
        return ExpectEnd(str(outcome), timeout)

    def interrupt(self, raw: Mapping[str, object], at: str) -> Interrupt:
        extra = sorted(set(raw) - {"interrupt_after_ms", "say", "dtmf", "timeout_s"})
        if extra or ("say" in raw) == ("dtmf" in raw):
            raise self.fail(
                at,
                "interrupt_after_ms takes exactly: say (the recording) or dtmf (keys), and optional "
                "timeout_s",
            )
        after = self.number(raw["interrupt_after_ms"], f"{at}.interrupt_after_ms", positive=False)
        timeout = self.number(raw.get("timeout_s", DEFAULT_STEP_TIMEOUT_S), f"{at}.timeout_s")
        if "dtmf" in raw:
            return Interrupt(after, None, timeout, self.digits(raw["dtmf"], f"{at}.dtmf"))
        return Interrupt(after, self.recording(raw["say"], f"{at}.say"), timeout)

    def scenario(self, doc: object, default_name: str) -> Scenario:
        if not isinstance(doc, dict):
            raise ScenarioError(f"{self.where}: the document must be an object with a 'steps' list")
        unknown = sorted(set(doc) - {"name", "description", "timeout_s", "steps"})
        if unknown:
            raise ScenarioError(f"{self.where}: unknown top-level key {unknown[0]!r}")
        raw_steps = doc.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise ScenarioError(f"{self.where}: 'steps' must be a non-empty list")
        steps = tuple(self.step(raw, f"steps[{i}]") for i, raw in enumerate(raw_steps))
        for i, step in enumerate(steps[:-1]):
            if isinstance(step, HangUp | ExpectEnd):
                key = "hang_up_after_s" if isinstance(step, HangUp) else "expect_end"
                raise self.fail(f"steps[{i}]", f"{key} ends the call: no step may follow it")
        name = doc.get("name", default_name)
        if not isinstance(name, str) or not name:
            raise ScenarioError(f"{self.where}: 'name' must be a non-empty string")
        description = doc.get("description", "")
        timeout = self.number(doc.get("timeout_s", DEFAULT_CALL_TIMEOUT_S), "timeout_s")
        return Scenario(name, steps, str(description), timeout, self.where)


def parse_scenario(
    text: str,
    *,
    fmt: str = "json",
    where: str = "<scenario>",
    base_dir: Path | None = None,
    cache: dict[Path, Recording] | None = None,
) -> Scenario:
    """Parse a scenario document (`fmt` "json" or "toml"); recordings are looked up from `base_dir`."""
    try:
        doc: object = json.loads(text) if fmt == "json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"{where}: not valid {fmt.upper()}: {exc}") from None
    base = base_dir if base_dir is not None else Path.cwd()
    search = list(dict.fromkeys([base, base / "recordings", base.parent / "recordings", SHIPPED_RECORDINGS]))
    default_name = Path(where).stem if where != "<scenario>" else "scenario"
    return _Parser(where, search, cache if cache is not None else {}).scenario(doc, default_name)


def load_scenario(path: str | Path, cache: dict[Path, Recording] | None = None) -> Scenario:
    """Read a `.json` or `.toml` scenario file; `cache` shares recordings between scenarios."""
    path = Path(path)
    if path.suffix not in (".json", ".toml"):
        raise ScenarioError(f"{path}: a scenario file ends in .json or .toml")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read ({exc.strerror})") from None
    fmt = path.suffix[1:]
    return parse_scenario(text, fmt=fmt, where=str(path), base_dir=path.parent, cache=cache)


def resolve_scenario(
    name_or_path: str, directory: Path = DEFAULT_SCENARIO_DIR, cache: dict[Path, Recording] | None = None
) -> Scenario:
    """A scenario file given by path, or by name (`barge_in` -> `directory/barge_in.json` or `.toml`)."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".toml") or path.is_file():
        return load_scenario(path, cache)
    for suffix in (".json", ".toml"):
        candidate = directory / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return load_scenario(candidate, cache)
    known = sorted(p.stem for p in directory.glob("*.json")) + sorted(
        p.stem for p in directory.glob("*.toml")
    )
    raise ScenarioError(f"no scenario {name_or_path!r} in {directory} (known: {', '.join(known) or 'none'})")


def parse_mix(specs: Sequence[str]) -> list[tuple[str, float]]:
    """`["barge_in:2", "dtmf"]` -> `[("barge_in", 2.0), ("dtmf", 1.0)]`; a weight must be positive."""
    mix: list[tuple[str, float]] = []
    for spec in specs:
        name, sep, weight_text = spec.rpartition(":")
        if not sep or not _is_number(weight_text):
            name, weight = spec, 1.0
        else:
            weight = float(weight_text)
            if not weight > 0 or not math.isfinite(weight):
                raise ScenarioError(f"scenario {spec!r}: the weight after ':' must be a positive number")
        if not name:
            raise ScenarioError(f"scenario {spec!r}: no name before the weight")
        mix.append((name, weight))
    return mix


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
