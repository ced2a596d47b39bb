import ast
import os
import time
from pathlib import Path

import pytest

from layerboot.errors import CommandError, LayerbootError
from layerboot.run import run

REPO = Path(__file__).resolve().parents[1]


def test_failure_names_command_status_and_stderr_tail() -> None:
    with pytest.raises(CommandError) as err:
        run(["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
    text = str(err.value)
    assert text.startswith("command sh exited with status 3")
    assert "the real reason" in text
    assert err.value.returncode == 3


def test_signal_and_timeout_are_reported() -> None:
    with pytest.raises(CommandError, match="killed by signal 9"):
        run(["sh", "-c", "kill -9 $$"])
    with pytest.raises(CommandError, match="timed out"):
        run(["sleep", "5"], timeout=0.2)


def test_missing_command_is_a_clear_error() -> None:
    with pytest.raises(LayerbootError, match="not found"):
        run(["layerboot-no-such-tool"])


def test_stdin_is_devnull_and_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_FROM_CALLER", "leak")
    for name in [n for n in os.environ if n == "LANG" or n.startswith("LC_")]:
        monkeypatch.delenv(name)
    out = run(["sh", "-c", "cat; env"]).text
    assert "SECRET_FROM_CALLER" not in out
    assert "LANG=C.UTF-8" in out.splitlines()      # a known locale when the caller sets none


def test_proxies_build_date_and_locale_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user sets on purpose reaches the commands: apt/debootstrap/curl behind a proxy, reproducible
    builds, the user's language."""
    wanted = {"http_proxy": "http://proxy.example:3128", "HTTPS_PROXY": "http://proxy.example:3128",
              "no_proxy": "localhost,10.0.0.0/8", "SOURCE_DATE_EPOCH": "1700000000", "LANG": "de_DE.UTF-8",
              "LC_TIME": "en_GB.UTF-8", "TZ": "Europe/Berlin"}
    for name, value in wanted.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", "/not/for/children")
    env = dict(line.split("=", 1) for line in run(["env"]).text.splitlines())
    assert {k: env.get(k) for k in wanted} == wanted
    assert "PYTHONPATH" not in env
    assert run(["env"], env={"SOURCE_DATE_EPOCH": None}).text.count("SOURCE_DATE_EPOCH") == 0   # removable


def test_streamed_lines_arrive_while_the_command_runs() -> None:
    seen: list[tuple[float, str]] = []
    started = time.monotonic()
    result = run(["sh", "-c", "echo one; printf 'bar 10%%\\rbar 50%%\\r'; echo two >&2; sleep 0.5; echo three"],
                 lines=lambda text: seen.append((time.monotonic() - started, text)))
    assert [text for _, text in seen if text != "two"] == ["one", "bar 10%", "bar 50%", "three"]
    assert "two" in [text for _, text in seen]
    assert seen[0][0] < 0.4 and seen[-1][0] >= 0.5        # "one" came before the command ended
    assert result.text == "one\nbar 10%\rbar 50%\rthree\n" and result.stderr == b"two\n"
    with pytest.raises(CommandError, match="exited with status 4: oops"):
        run(["sh", "-c", "echo oops >&2; exit 4"], lines=lambda text: None)


def test_only_the_runner_imports_subprocess() -> None:
    offenders = []
    for path in REPO.glob("**/*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "bench", ".git", ".venv") or rel == Path("layerboot/run.py"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if "subprocess" in names:
                offenders.append(str(rel))
    assert offenders == []
