"""The protocol cores stay sans-I/O: no asyncio, aiohttp or websockets, directly or via our own imports."""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import pytest

import telcodec

CORES = [
    "gateway.call.record",
    "gateway.telephony.twilio",
    "gateway.telephony.twilio_wire",
    "gateway.telephony.signature",
    "gateway.telephony.twiml",
    "gateway.telephony.events",
    "gateway.realtime.session",
    "gateway.realtime.codec",
    "gateway.realtime.endpoint",
    "gateway.realtime.events",
    "gateway.telephony.streamtoken",
    "gateway.telephony.provider",
    "gateway.telephony.vonage",
    "gateway.telephony.acs",
    "gateway.telephony.signalwire",
    "gateway.telephony.exotel",
    "gateway.telephony.telnyx",
    "gateway.telephony.plivo",
    "gateway.telephony.dialect",
    "gateway.call.playback",
    "gateway.call.bargein",
    "gateway.call.localvad",
    "gateway.call.core",
    "gateway.call.audio",
    "gateway.call.timeline",
    "gateway.call.outcome",
    "gateway.call.ratelimit",
    "gateway.realtime.health",
    "gateway.realtime.transcript",
    "gateway.emulator.session",
    "gateway.emulator.vad",
    "gateway.emulator.voice",
    "gateway.loadtest.playout",
    "gateway.sip.rtp",
    "gateway.sip.message",
    "gateway.call.dtmf",
    "gateway.sip.sdp",
    "gateway.sip.digest",
    "gateway.sip.ua",
    "gateway.sip.register",
    "gateway.sip.settings",
    "gateway.sip.throttle",
    "gateway.stats",
    "telcodec",
    # The codec core is pure computation throughout: every module of it is checked.
    *(info.name for info in pkgutil.iter_modules(telcodec.__path__, "telcodec.")),
]
# Cores take time as an argument, so a clock module is as foreign to them as a socket.
FORBIDDEN = {"asyncio", "aiohttp", "websockets", "trio", "anyio", "socket", "time"}
# Our own modules a core may import: other cores and the error tree.
ALLOWED_INTERNAL = {
    *CORES,
    "gateway",
    "gateway.errors",
    "gateway.telephony",
    "gateway.realtime",
    "gateway.call",
    "gateway.emulator",
    "gateway.loadtest",
    "gateway.sip",
}


def _imports(module: str) -> set[str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None
    assert spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("module", CORES)
def test_core_imports_no_io_library(module: str) -> None:
    """The module's AST imports none of the I/O libraries, at any depth of its dotted names."""
    roots = {name.split(".")[0] for name in _imports(module)}
    assert roots.isdisjoint(FORBIDDEN), sorted(roots & FORBIDDEN)


def _is_module(name: str) -> bool:
    """True if `name` is an importable module (not a name imported from one)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("module", CORES)
def test_core_imports_only_other_cores(module: str) -> None:
    """Its gateway imports are other cores or the error tree, so no I/O can arrive transitively."""
    internal = {name for name in _imports(module) if name.split(".")[0] in ("gateway", "telcodec")}
    modules = {name for name in internal if _is_module(name)}
    assert modules <= ALLOWED_INTERNAL, sorted(modules - ALLOWED_INTERNAL)


def test_the_check_sees_imports() -> None:
    """The AST walk does find imports (it reports the auth module's asyncio), so the checks above can fail."""
    assert "asyncio" in _imports("gateway.realtime.auth")


# The layers below the app take plain values: only the app (and its wiring, gateway.backend) knows the
# settings, and that an embedded emulator can stand in for a realtime service.
LAYERS = ("gateway.call", "gateway.realtime", "gateway.telephony", "gateway.sip")
APP_ONLY = ("gateway.config", "gateway.app", "gateway.backend", "gateway.serve", "gateway.emulator")


def _layer_modules() -> list[str]:
    found = []
    for package in LAYERS:
        spec = importlib.util.find_spec(package)
        assert spec is not None
        assert spec.submodule_search_locations is not None
        found += [info.name for info in pkgutil.iter_modules(spec.submodule_search_locations, package + ".")]
    return found


@pytest.mark.parametrize("module", _layer_modules())
def test_layers_import_no_settings_app_or_emulator(module: str) -> None:
    """Nothing under call/, realtime/, telephony/ or sip/ imports the settings, the app or the emulator."""
    bad = {name for name in _imports(module) if name.startswith(APP_ONLY)}
    assert not bad, sorted(bad)


def test_the_layer_check_sees_the_app_imports() -> None:
    """The same AST walk finds the settings import of the wiring module, so the check above can fail."""
    assert "gateway.config" in _imports("gateway.backend")
    assert len(_layer_modules()) > 20
