"""Scenario files: the shipped ones load, and mistakes are refused with messages that point at the step."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.loadtest import script as script_module
from gateway.loadtest.recordings import Recording
from gateway.loadtest.script import (
    DEFAULT_SCENARIO_DIR,
    SHIPPED_RECORDINGS,
    Dtmf,
    ExpectEnd,
    HangUp,
    Interrupt,
    Say,
    Scenario,
    ScenarioError,
    Silence,
    WaitForBot,
    load_scenario,
    parse_mix,
    parse_scenario,
    resolve_scenario,
)

RECORDINGS = SHIPPED_RECORDINGS


def parse(text: str, fmt: str = "json") -> Scenario:
    return parse_scenario(text, fmt=fmt, where="t.json", base_dir=RECORDINGS)


def test_shipped_scenarios_load() -> None:
    """Every shipped scenario loads, with the steps its file describes."""
    barge_in = resolve_scenario("barge_in")
    assert [type(step) for step in barge_in.steps] == [Say, Interrupt, WaitForBot]
    interrupt = barge_in.steps[1]
    assert isinstance(interrupt, Interrupt)
    assert interrupt.after_ms == 800
    assert interrupt.recording.name == "stop.wav"
    dtmf = resolve_scenario("dtmf_hangup")  # TOML
    assert [type(step) for step in dtmf.steps] == [Say, Interrupt, HangUp]
    assert dtmf.steps[1] == Interrupt(300, None, digits="123")  # keys over the answer
    assert resolve_scenario("question_answer").timeout_s == 30
    assert resolve_scenario("question_answer").expected_end is None
    hangup = resolve_scenario("tool_hangup")
    assert [type(step) for step in hangup.steps] == [Say, WaitForBot, Dtmf, ExpectEnd]
    assert hangup.expected_end == ExpectEnd("bot_hangup", 15)
    transfer = resolve_scenario("tool_transfer")  # TOML
    assert [type(step) for step in transfer.steps] == [Silence, Dtmf, ExpectEnd]
    assert transfer.steps[1] == Dtmf("0")
    assert transfer.expected_end == ExpectEnd("transferred", 15)
    assert {p.stem for p in DEFAULT_SCENARIO_DIR.iterdir()} >= {"question_answer", "multi_turn"}


def test_shipped_data_is_package_data() -> None:
    """The shipped scenarios and recordings live inside the gateway.loadtest package, beside its modules."""
    package = Path(script_module.__file__).resolve().parent
    assert package / "data" / "scenarios" == DEFAULT_SCENARIO_DIR
    assert package / "data" / "recordings" == SHIPPED_RECORDINGS
    assert {p.name for p in SHIPPED_RECORDINGS.glob("*.wav")} >= {"hello.wav", "stop.wav"}


def test_own_scenario_may_name_a_shipped_recording(tmp_path: Path) -> None:
    """A scenario written elsewhere finds a shipped recording by its bare name (the last place looked)."""
    path = tmp_path / "mine.json"
    path.write_text('{"steps": [{"say": "hello.wav"}, {"wait_for_bot": true}]}')
    scenario = load_scenario(path)
    assert isinstance(scenario.steps[0], Say)
    assert scenario.steps[0].recording.name == "hello.wav"


def test_recordings_are_shared_between_scenarios() -> None:
    """Two scenarios naming the same WAV share one decoded Recording (frames are encoded once)."""
    cache: dict[Path, Recording] = {}
    first = resolve_scenario("question_answer", cache=cache)
    second = resolve_scenario("multi_turn", cache=cache)
    assert isinstance(first.steps[0], Say)
    assert isinstance(second.steps[0], Say)
    assert first.steps[0].recording is second.steps[0].recording


def test_wait_for_bot_options_and_bot_first() -> None:
    """wait_for_bot takes timeout_s and quiet_ms (or `true`); a script starting with it is bot-first."""
    scenario = parse(
        '{"steps": [{"wait_for_bot": {"timeout_s": 3, "quiet_ms": 100}}, {"wait_for_bot": true}]}'
    )
    assert scenario.steps == (WaitForBot(3.0, 100), WaitForBot())
    assert scenario.bot_speaks_first


def test_expect_end_options_in_json_and_toml(tmp_path: Path) -> None:
    """expect_end takes an outcome (bot_hangup, transferred, any) and timeout_s; `true` or `{}` expects any
    end by the bot's tools within 10 s; `any` accepts either tool's end, never another."""
    scenario = parse('{"steps": [{"dtmf": "9"}, {"expect_end": {"outcome": "bot_hangup", "timeout_s": 4}}]}')
    assert scenario.steps[-1] == ExpectEnd("bot_hangup", 4.0)
    assert scenario.expected_end == ExpectEnd("bot_hangup", 4.0)
    assert parse('{"steps": [{"expect_end": true}]}').steps == (ExpectEnd("any", 10.0),)
    path = tmp_path / "t.toml"
    path.write_text('[[steps]]\ndtmf = "0"\n[[steps]]\nexpect_end = { outcome = "transferred" }\n')
    assert load_scenario(path).expected_end == ExpectEnd("transferred", 10.0)
    anything = ExpectEnd()
    assert anything.accepts("bot_hangup")
    assert anything.accepts("transferred")
    assert not anything.accepts("completed")
    assert not ExpectEnd("bot_hangup").accepts("transferred")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"steps": [{"sya": "hello.wav"}]}', "t.json: steps[0]: unknown key 'sya'; a step has one of: say"),
        ('{"steps": [{"say": "nope.wav"}]}', "t.json: steps[0].say: recording 'nope.wav' not found"),
        ('{"steps": [{"dtmf": "12x"}]}', "steps[0].dtmf: must be a string of keys 0-9 * # A-D"),
        ('{"steps": [{"silence_ms": -5}]}', "steps[0].silence_ms: must be a positive number, got -5"),
        ('{"steps": [{"say": "hello.wav", "dtmf": "1"}]}', "steps[0]: a step has exactly one action"),
        ('{"steps": [{"hang_up_after_s": 1}, {"dtmf": "1"}]}', "steps[0]: hang_up_after_s ends the call"),
        ('{"steps": [{"expect_end": {}}, {"dtmf": "1"}]}', "steps[0]: expect_end ends the call: no step"),
        (
            '{"steps": [{"expect_end": {"outcome": "hangup"}}]}',
            "steps[0].expect_end.outcome: must be one of bot_hangup, transferred, any, got 'hangup'",
        ),
        ('{"steps": [{"expect_end": {"timeout_s": 0}}]}', "expect_end.timeout_s: must be a positive number"),
        ('{"steps": [{"expect_end": "bot_hangup"}]}', "steps[0].expect_end: must be an object like"),
        ('{"steps": [{"interrupt_after_ms": 500}]}', "steps[0]: interrupt_after_ms takes exactly: say"),
        (
            '{"steps": [{"interrupt_after_ms": 5, "say": "hello.wav", "dtmf": "1"}]}',
            "steps[0]: interrupt_after_ms takes exactly: say (the recording) or dtmf",
        ),
        ('{"steps": [{"interrupt_after_ms": 5, "dtmf": "x"}]}', "steps[0].dtmf: must be a string of keys"),
        ('{"steps": [{"wait_for_bot": {"timout_s": 1}}]}', "unknown option 'timout_s'"),
        ('{"steps": []}', "t.json: 'steps' must be a non-empty list"),
        ('{"steps": [{"say": "hello.wav"}], "extra": 1}', "unknown top-level key 'extra'"),
        ("{not json", "t.json: not valid JSON"),
    ],
)
def test_invalid_scenarios_are_refused_clearly(text: str, message: str) -> None:
    """Each mistake raises ScenarioError naming the file, the step and the problem."""
    with pytest.raises(ScenarioError) as error:
        parse(text)
    assert message in str(error.value)


def test_toml_scenario_and_unknown_suffix(tmp_path: Path) -> None:
    """A .toml file parses like JSON; any other suffix is refused."""
    path = tmp_path / "t.toml"
    path.write_text(f'[[steps]]\nsay = "{RECORDINGS / "thanks.wav"}"\n[[steps]]\nsilence_ms = 200\n')
    scenario = load_scenario(path)
    assert scenario.name == "t"
    assert len(scenario.steps) == 2
    with pytest.raises(ScenarioError, match=r"ends in \.json or \.toml"):
        load_scenario(tmp_path / "t.yaml")


def test_unknown_scenario_name_lists_known_ones() -> None:
    """A name that is no file lists the scenarios that exist."""
    with pytest.raises(ScenarioError, match=r"no scenario 'nope' .*barge_in"):
        resolve_scenario("nope")


def test_parse_mix_weights() -> None:
    """NAME:WEIGHT gives a weight, NAME alone weighs 1, and a non-positive weight is refused."""
    assert parse_mix(["barge_in:2", "dtmf_hangup", "x.json:0.5"]) == [
        ("barge_in", 2.0),
        ("dtmf_hangup", 1.0),
        ("x.json", 0.5),
    ]
    with pytest.raises(ScenarioError, match="positive"):
        parse_mix(["barge_in:0"])
