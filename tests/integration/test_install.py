"""A real, non-editable install, as deploy/Dockerfile makes it: a wheel built from the files the image
copies, installed into fresh virtualenvs, run from a folder outside the source tree.

Without the `loadtest` extra (the image) the gateway serves, and the load generator says in one line what
to install. With it, a shipped scenario is found in the installed package and its call completes. pip
installs the dependencies from its configured index through its cache; the wheel is built once for the
module and the venvs are made without pip of their own (the test's pip installs into them with
`--python`), which keeps the module to about 20 s on a warm cache.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import scaled
from tests.integration.test_cli import clean_env, free_port

REPO = Path(__file__).parents[2]
SOURCES = ("pyproject.toml", "README.md", "codecs", "gateway")  # what deploy/Dockerfile copies
INSTALL_TIMEOUT_S = 300

pytestmark = pytest.mark.timeout(scaled(INSTALL_TIMEOUT_S + 120))


def _run(command: list[str], cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run with the installed venv's view only: no PYTHONPATH, outside the source tree."""
    env = {k: v for k, v in clean_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=scaled(timeout_s)
    )


def _pip(*args: str, cwd: Path) -> None:
    done = _run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd, INSTALL_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built (with build isolation, as `pip install .` does) from a copy of the
    files the image copies, so nothing else of the working tree can leak in."""
    root = tmp_path_factory.mktemp("build")
    source = root / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    _pip("wheel", "--no-deps", "--wheel-dir", str(root / "wheels"), str(source), cwd=root)
    (built,) = (root / "wheels").glob("voice_gateway-*.whl")
    return built


def _venv(root: Path, requirement: str) -> Path:
    """A fresh venv in `root` with `requirement` installed (the wheel's dependencies from the index)."""
    done = _run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], root)
    assert done.returncode == 0, done.stderr
    python = root / "venv" / "bin" / "python"
    _pip("--python", str(python), "install", "--no-compile", requirement, cwd=root)
    return python


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """The python of a venv holding the wheel as the image has it: without the `loadtest` extra."""
    return _venv(tmp_path_factory.mktemp("bare"), str(wheel))


@pytest.fixture(scope="module")
def with_extra(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """The python of a venv holding the wheel with the `loadtest` extra."""
    return _venv(tmp_path_factory.mktemp("extra"), f"{wheel}[loadtest]")


def _installed(python: Path, module: str, cwd: Path) -> bool:
    done = _run(
        [str(python), "-c", f"import importlib.util as u; print(u.find_spec({module!r}) is not None)"], cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip() == "True"


def test_wheel_carries_the_shipped_scenarios(bare: Path, tmp_path: Path) -> None:
    """The installed package finds its shipped scenarios and recordings inside itself, not in the sources."""
    code = (
        "from gateway.loadtest.script import DEFAULT_SCENARIO_DIR as d, resolve_scenario;"
        "print(d); print(sorted(p.name for p in d.iterdir())); print(resolve_scenario('barge_in').steps[1])"
    )
    done = _run([str(bare), "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    where, names, step = done.stdout.splitlines()
    assert Path(where).is_relative_to(bare.parents[1])  # the venv's site-packages
    assert "question_answer.json" in names
    assert "dtmf_hangup.toml" in names
    assert "stop.wav" in step


def test_gateway_serves_without_the_loadtest_extra(bare: Path, tmp_path: Path) -> None:
    """Without rich and matplotlib installed, `python -m gateway serve` starts, turns ready, and exits 0
    on SIGTERM: the gateway does not need them."""
    assert not _installed(bare, "rich", tmp_path)
    assert not _installed(bare, "matplotlib", tmp_path)
    port = free_port()
    env = clean_env(GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port))
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [str(bare), "-m", "gateway", "serve"], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(int(scaled(400))):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert process.poll() is None, "the gateway exited"
            time.sleep(0.05)
        else:
            raise AssertionError("the gateway did not become ready")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=scaled(30))
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_load_generator_without_the_extra_says_what_to_install(bare: Path, tmp_path: Path) -> None:
    """Without the extra, `python -m gateway.loadtest` exits 2 with one line naming the pip command,
    before starting anything and without a traceback."""
    done = _run(
        [str(bare), "-m", "gateway.loadtest", "--embedded", "--calls", "1", "--no-progress"], tmp_path
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert "pip install 'voice-gateway[loadtest]'" in done.stderr
    assert not (tmp_path / "loadtest-out").exists()


def test_installed_load_generator_completes_a_call(with_extra: Path, tmp_path: Path) -> None:
    """With the extra, an embedded run of one call of a shipped scenario completes from outside the source
    tree: exit 0, and the run's results.json says the call completed."""
    command = [
        str(with_extra), "-m", "gateway.loadtest", "--embedded", "--calls", "1", "--no-progress",
        "--scenario", "question_answer", "--reply-ms", "1000",
    ]  # fmt: skip
    done = _run(command, tmp_path, 120)
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((tmp_path / "loadtest-out" / "latest" / "results.json").read_text())
    assert document["summary"]["completed"] == 1
    assert document["summary"]["failed"] == 0
    (call,) = document["calls"]
    assert call["ok"]
    assert call["scenario"] == "question_answer"
    assert "data:image/png;base64," in (tmp_path / "loadtest-out" / "latest" / "report.html").read_text()
