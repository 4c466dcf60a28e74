"""The call core's tool calls on the simulated call of test_core: outputs wait for the service to be free,
`end_call` waits until the caller has heard the goodbye out, a barge-in cancels it. The emulator calls
the tools (its scripted `ToolRule`s) the way the service does."""

from __future__ import annotations

import json

from gateway.call.core import CallConfig, Heard, ToolCalled, ToolCancelled
from gateway.call.dtmf import DtmfSettings
from gateway.call.tools import GOODBYE_INSTRUCTIONS, GOODBYE_OUTPUT, ToolBox
from gateway.emulator.session import EmulatorConfig, ToolRule
from gateway.loadtest.scenarios import silence_ulaw, speech_ulaw
from tests.unit.test_core import FRAME_MS, SimCall

TOOLS = (
    *ToolBox(enabled=("end_call",)).definitions(),
    {"type": "function", "name": "lookup", "description": "", "parameters": {"type": "object"}},
)
ONE_KEY = CallConfig(dtmf=DtmfSettings(max_keys=1))


def _call(*rules: ToolRule, reply_ms: int = 1000) -> SimCall:
    return SimCall(
        config=ONE_KEY,
        emulator=EmulatorConfig(reply_ms=reply_ms, realtime_factor=4.0, tool_rules=rules),
        tools=TOOLS,
    )


def _press(call: SimCall, key: str) -> None:
    call.core.receive_dtmf(key, int(call.now))
    call._flush()


def _run(call: SimCall, ms: int, *, on_tool: str = "defer") -> list[float]:
    """Frames of silence for `ms`, acting as the bridge does on each tool call; returns when (sim ms)
    each `Heard` came, with what the phone had left to play then."""
    heard: list[float] = []
    for _ in range(ms // FRAME_MS):
        before = len(call.notes)
        call.speak(silence_ulaw(FRAME_MS))
        for note in call.notes[before:]:
            if isinstance(note, ToolCalled):
                if on_tool == "defer":
                    goodbye = (GOODBYE_OUTPUT, GOODBYE_INSTRUCTIONS)
                    call.core.act_when_heard(note.call.call_id, int(call.now), goodbye=goodbye)
                else:
                    call.core.tool_result(note.call.call_id, '{"balance": 42}', int(call.now))
                call._flush()
            elif isinstance(note, Heard):
                heard.append(call.phone.queued_ms_at(call.now))
    return heard


def _outputs(call: SimCall) -> list[str]:
    return [o.output for o in call.session.tool_outputs]


def test_end_call_acts_once_the_goodbye_has_played_out() -> None:
    """The model says goodbye, then calls end_call: `Heard` comes only once the phone has played every
    byte of the goodbye, and no output is sent (the call is ending)."""
    call = _call(ToolRule("pressed 9", "end_call"))
    _press(call, "9")
    assert _run(call, 3000) == [0.0]
    assert call.phone.played_ms == 1000
    assert [r.tool.tool if r.tool else None for r in call.session.responses] == ["end_call"]
    assert _outputs(call) == []
    assert call.session.errors == []


def test_end_call_without_a_goodbye_asks_for_one_first() -> None:
    """end_call in a response that said nothing: the output and a spoken goodbye are asked for, and the
    call ends after that one has played."""
    call = _call(ToolRule("pressed 9", "end_call", speak=False))
    _press(call, "9")
    assert _run(call, 3000) == [0.0]
    assert _outputs(call) == [GOODBYE_OUTPUT]
    assert len(call.session.responses) == 2
    assert call.phone.played_ms == 1000  # the second response's goodbye
    assert call.session.errors == []


def test_a_barge_in_during_the_goodbye_cancels_the_hang_up() -> None:
    """The caller talks over the goodbye (the call to end_call has come; the phone still plays): the
    hang-up is cancelled, the model is told why, the call goes on."""
    call = _call(ToolRule("pressed 9", "end_call"), reply_ms=3000)
    _press(call, "9")
    while not any(isinstance(n, ToolCalled) for n in call.notes):
        _run(call, FRAME_MS)
    assert call.phone.queued_ms_at(call.now) > 1000
    call.speak(speech_ulaw(800) + silence_ulaw(700))
    assert _run(call, 4000) == []
    assert any(isinstance(n, ToolCancelled) for n in call.notes)
    [output] = _outputs(call)
    assert json.loads(output)["status"] == "cancelled"
    assert call.session.errors == []


def test_an_output_waits_for_the_response_to_end_before_asking_for_the_next() -> None:
    """A tool answered while its response still speaks: the output goes at once, the response.create
    after the response is done (the service refuses a second active response)."""
    call = _call(ToolRule("pressed 1", "lookup"))
    _press(call, "1")
    _run(call, 3000, on_tool="answer")
    assert _outputs(call) == ['{"balance": 42}']
    assert len(call.session.responses) == 2
    first, second = call.session.responses
    assert second.created_ms >= call.session.items[first.item_id].deltas[-1][0]
    assert call.session.errors == []


def test_a_replaced_session_forgets_the_calls_it_made() -> None:
    """After a reconnect the old session's call ids mean nothing to the new one: a late output is
    dropped, not sent."""
    call = _call(ToolRule("pressed 1", "lookup"))
    _press(call, "1")
    pending: list[str] = []
    for _ in range(50):
        before = len(call.notes)
        call.speak(silence_ulaw(FRAME_MS))
        pending += [n.call.call_id for n in call.notes[before:] if isinstance(n, ToolCalled)]
        if pending:
            break
    call.core.session_replaced(0, int(call.now))
    assert not call.core.tool_result(pending[0], "{}", int(call.now))
    assert call.core.realtime_to_send() == []
