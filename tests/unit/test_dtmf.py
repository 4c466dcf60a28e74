"""The key collector (gateway/call/dtmf.py), on a simulated clock."""

from __future__ import annotations

import pytest

from gateway.call.dtmf import DtmfSettings, KeyCollector, keys_message


def test_terminator_ends_the_entry_and_is_part_of_it() -> None:
    """Keys gather until the terminator, which ends the entry and is reported with it."""
    keys = KeyCollector(DtmfSettings())
    assert [keys.press(k, t) for k, t in (("1", 0), ("2", 100), ("3", 200))] == [None, None, None]
    assert keys.pending == "123"
    assert keys.press("#", 300) == "123#"
    assert keys.pending == ""


def test_a_count_or_a_pause_ends_the_entry() -> None:
    """With a key count the entry ends at that many keys; without a terminator, a pause ends it."""
    counted = KeyCollector(DtmfSettings(terminator="", max_keys=4))
    assert [counted.press(k, 0) for k in "123"] == [None] * 3
    assert counted.press("4", 0) == "1234"
    paused = KeyCollector(DtmfSettings(terminator="", pause_ms=2000))
    paused.press("4", 1000)
    paused.press("2", 1500)
    assert paused.poll(3499) is None
    assert paused.poll(3500) == "42"
    assert paused.poll(9000) is None  # nothing pending


def test_non_keys_are_ignored_and_settings_are_checked() -> None:
    """A value that is not a DTMF key is ignored; a terminator that is not a key is refused."""
    keys = KeyCollector(DtmfSettings())
    assert keys.press("x", 0) is None
    assert keys.pending == ""
    with pytest.raises(ValueError, match="terminator"):
        DtmfSettings(terminator="x")
    with pytest.raises(ValueError, match="pause_ms"):
        DtmfSettings(pause_ms=0)


def test_the_message_names_each_key() -> None:
    """Keys are spaced so that the model reads keys, not a number."""
    assert keys_message("123#") == "The caller pressed 1 2 3 #"
    assert keys_message("*0") == "The caller pressed * 0"
