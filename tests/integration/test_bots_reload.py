"""BOTS_FILE reloads on a real SIGHUP: a good file swaps the bots in, a bad one keeps them (and says why)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import structlog

from gateway.config import load_settings
from gateway.profiles import ProfileStore
from tests.conftest import scaled

SALES = '[[bot]]\nname = "sales"\nnumbers = ["+15551230001"]\nvoice = "cedar"\n'
SUPPORT = '[[bot]]\nname = "support"\nnumbers = ["+15551230002"]\nvoice = "marin"\n'


async def until(condition: Callable[[], bool]) -> None:
    """Wait until `condition` holds (the signal's handler runs on a later turn of the loop)."""
    for _ in range(int(scaled(5) / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("SIGHUP was not handled in time")


async def test_sighup_reloads_the_bots_file(tmp_path: Path) -> None:
    """SIGHUP to this process re-reads the file: new bots for new calls, the selected profile of a call in
    progress untouched; after a bad edit the old bots stay and a warning names the bot and key."""
    path = tmp_path / "bots.toml"
    path.write_text(SALES, encoding="utf-8")
    store = ProfileStore.load(path, load_settings({}))
    in_call = store.select({"To": "+15551230001"})
    loop = asyncio.get_running_loop()
    store.install_sighup(loop)
    try:
        with structlog.testing.capture_logs() as logs:
            path.write_text(SALES.replace("cedar", "alloy") + SUPPORT, encoding="utf-8")
            os.kill(os.getpid(), signal.SIGHUP)
            await until(lambda: len(store.book.bots) == 2)
            good = store.book
            path.write_text(SALES + SUPPORT.replace('"marin"', "7"), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGHUP)
            await until(lambda: any(entry["event"] == "bots_file_reload_failed" for entry in logs))
    finally:
        store.remove_sighup(loop)
    assert store.book is good
    assert store.select({"To": "+15551230002"}).name == "support"
    assert store.select({"To": "+15551230001"}).voice == "alloy"
    assert (in_call.name, in_call.voice) == ("sales", "cedar")
    reloaded, failed = (entry for entry in logs if entry["event"].startswith("bots_file_reload"))
    assert (reloaded["event"], reloaded["bots"]) == ("bots_file_reloaded", 2)
    assert failed["log_level"] == "warning"
    assert failed["reason"] == f"BOTS_FILE {path}: bot 'support': voice: expected a string, got int 7"
    assert failed["kept_bots"] == 2
