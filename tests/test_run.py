import ast
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
    out = run(["sh", "-c", "cat; env"]).text
    assert "SECRET_FROM_CALLER" not in out
    assert "LC_ALL=C.UTF-8" in out


def test_only_the_runner_imports_subprocess() -> None:
    offenders = []
    for path in REPO.glob("**/*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in ("tests", "bench", ".git") or rel == Path("layerboot/run.py"):
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
