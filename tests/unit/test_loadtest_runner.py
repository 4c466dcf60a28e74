"""CallSids of a load run: Twilio's shape, unique within a run, and never shared between two runs; the
embedded run's tool settings."""

from __future__ import annotations

import re

import pytest

from gateway.emulator.session import ToolRule
from gateway.loadtest.__main__ import build_parser, gateway_env, tool_rules
from gateway.loadtest.runner import RunConfig, call_sid, media_url, new_run_id
from gateway.loadtest.script import resolve_scenario
from gateway.realtime.upstream import client_request_id
from telcodec import WireFormat

MIX = ((resolve_scenario("question_answer"), 1.0),)


def test_call_sid_has_twilios_shape_and_the_run_id_first() -> None:
    """A CallSid is "CA" and 32 lowercase hex digits, the run id first, then the call's index."""
    sid = call_sid("0123456789ab", 26)
    assert re.fullmatch(r"CA[0-9a-f]{32}", sid)
    assert sid == "CA0123456789ab" + "0" * 18 + "1a"
    assert client_request_id(sid).replace("-", "") == sid[2:]  # the gateway's upstream id keeps it whole


def test_two_runs_with_the_same_seed_share_no_call_sid() -> None:
    """Each RunConfig draws a fresh run id, so two runs of 1,000 calls with equal seeds have disjoint SIDs."""
    first, second = RunConfig("ws://x/media", MIX, seed=7), RunConfig("ws://x/media", MIX, seed=7)
    assert first.run_id != second.run_id
    assert re.fullmatch(r"[0-9a-f]{12}", first.run_id)
    sids = [{call_sid(config.run_id, i) for i in range(1000)} for config in (first, second)]
    assert len(sids[0]) == len(sids[1]) == 1000
    assert sids[0].isdisjoint(sids[1])
    assert len({new_run_id() for _ in range(1000)}) == 1000


def test_run_id_must_be_short_lowercase_hex() -> None:
    """A given run id must fit in a CallSid as hex; anything else is refused when the config is made."""
    assert RunConfig("ws://x/media", MIX, run_id="abc").run_id == "abc"
    for bad in ("", "ABC", "xyz", "0" * 17):
        with pytest.raises(ValueError, match="run_id"):
            RunConfig("ws://x/media", MIX, run_id=bad)


def test_media_url_is_the_providers_route_under_a_base() -> None:
    """A base URL gets the provider's media route; a URL with a path is taken as it is."""
    assert media_url("ws://gw:8080", "twilio") == "ws://gw:8080/media"
    assert media_url("ws://gw:8080/", "vonage") == "ws://gw:8080/vonage/media"
    assert media_url("wss://gw/custom/path", "acs") == "wss://gw/custom/path"
    with pytest.raises(ValueError, match="unknown provider"):
        media_url("ws://gw", "nope")


def test_run_config_refuses_what_a_provider_cannot_do() -> None:
    """A format the provider does not stream, or a Twilio signature on another provider's stream."""
    mix = ((resolve_scenario("question_answer"), 1.0),)
    with pytest.raises(ValueError, match="streams"):
        RunConfig("ws://gw/telnyx/media", mix, provider="telnyx", media_format=WireFormat.of("l16", 16000))
    with pytest.raises(ValueError, match="Twilio's"):
        RunConfig("ws://gw/plivo/media", mix, provider="plivo", auth_token="secret")


def test_embedded_tool_defaults_follow_the_scenarios() -> None:
    """A mix with a scenario expecting the bot to end the call gets the default rules (9 hangs up, 0
    transfers), the built-in tools they name, a transfer destination and single-key entries; explicit
    options win, and a mix without expect_end gets no rules and no tools."""
    args = build_parser().parse_args(["--embedded", "--scenario", "tool_hangup"])
    mix = ((resolve_scenario("tool_hangup"), 1.0),)
    rules = tool_rules(args, mix)
    assert rules == (
        ToolRule("pressed 9", "end_call"),
        ToolRule("pressed 0", "transfer_call", '{"destination": "+15550100"}'),
    )
    env = gateway_env(args, rules)
    assert (env["BOT_TOOLS"], env["TRANSFER_TO"], env["DTMF_MAX_DIGITS"]) == (
        "end_call,transfer_call",
        "+15550100",
        "1",
    )
    mine = build_parser().parse_args(
        ["--embedded", "--tool-rule", "pressed 5=end_call!", "--bot-tools", "end_call",
         "--gateway-env", "DTMF_MAX_DIGITS=2"]
    )  # fmt: skip
    rules = tool_rules(mine, mix)
    assert rules == (ToolRule("pressed 5", "end_call", speak=False),)
    env = gateway_env(mine, rules)
    assert (env["BOT_TOOLS"], env["DTMF_MAX_DIGITS"], "TRANSFER_TO" in env) == ("end_call", "2", False)
    plain = ((resolve_scenario("question_answer"), 1.0),)
    assert tool_rules(args, plain) == ()
    assert {"BOT_TOOLS", "TRANSFER_TO", "DTMF_MAX_DIGITS"}.isdisjoint(gateway_env(args, ()))
    with pytest.raises(ValueError, match="--tool-rule 'nope'"):
        tool_rules(build_parser().parse_args(["--tool-rule", "nope"]), mix)
