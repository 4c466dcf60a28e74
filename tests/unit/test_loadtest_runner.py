"""CallSids of a load run: Twilio's shape, unique within a run, and never shared between two runs."""

from __future__ import annotations

import re

import pytest

from gateway.loadtest.runner import RunConfig, call_sid, new_run_id
from gateway.loadtest.script import resolve_scenario
from gateway.realtime.upstream import client_request_id

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
