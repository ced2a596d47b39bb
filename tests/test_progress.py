"""Progress of long steps: plain periodic lines when stderr is not a terminal, a bar when it is."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import pytest

from layerboot.progress import Progress
from layerboot.run import run


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_come_every_interval_and_end_with_a_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYERBOOT_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress("copying thing", total=4 << 20, stream=out, interval=0.2) as step:
        for _ in range(4):
            time.sleep(0.15)
            step.advance(1 << 20)
            step.note("part two")
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3, lines
    assert lines[0].startswith("layerboot: copying thing: ") and "% (" in lines[0] and "MiB of 4.0 MiB" in lines[0]
    assert lines[-2].endswith(": part two")
    assert lines[-1].startswith("layerboot: copying thing: done, 4.0 MiB in ")


def test_a_quick_step_prints_nothing_and_off_prints_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    with Progress("quick", stream=out, interval=5) as step:
        step.advance(10)
    assert out.getvalue() == ""
    monkeypatch.setenv("LAYERBOOT_PROGRESS", "off")
    with Progress("silenced", stream=out, interval=0.05):
        time.sleep(0.2)
    assert out.getvalue() == ""


def test_a_terminal_gets_a_bar_with_the_current_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LAYERBOOT_PROGRESS", raising=False)
    tty = Terminal()
    with Progress("packing", total=100, unit="blocks", stream=tty) as step:
        step.line("[=====    ] 50/100  50%")        # a parse-less step takes lines as the current sub-step
        step.update(50)
        time.sleep(1.2)                               # the ticker redraws while nothing else happens
    text = tty.getvalue()
    assert "packing" in text and "100/100" in text and "[===== ] 50/100 50%" in text
    assert "\r" in text                               # redrawn in place, not one line per update


def test_parsed_command_lines_move_the_bar() -> None:
    out = io.StringIO()
    step = Progress("mksquashfs", unit="blocks", stream=out, interval=60,
                    parse=lambda text: (float(text.split("/")[0]), float(text.split("/")[1])) if "/" in text else None)
    run(["sh", "-c", "printf '1/4\\r2/4\\r'; echo Creating filesystem; printf '4/4\\n'"], lines=step.line)
    assert (step.done, step.total, step.current) == (4, 4, "Creating filesystem")
    step.close()


@pytest.mark.root
def test_layer_import_is_never_silent_for_long(tmp_path: Path) -> None:
    """A real import whose mksquashfs runs several intervals: its progress lines keep coming on stderr, with
    the blocks mksquashfs reports, while stdout carries only the digest."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3):
        (tree / f"blob{i}").write_bytes(os.urandom(16 << 20))
    store = tmp_path / "store"
    run([sys.executable, "-m", "layerboot", "--store", store, "store", "init"])
    started = time.monotonic()
    result = run([sys.executable, "-m", "layerboot", "--store", store, "layer", "import", tree, "--all-root"],
                 env={"LAYERBOOT_PROGRESS": "plain", "LAYERBOOT_PROGRESS_INTERVAL": "0.25",
                      "PYTHONPATH": os.pathsep.join(sys.path)})
    elapsed = time.monotonic() - started
    lines = result.stderr.decode().splitlines()
    packing = [line for line in lines if line.startswith("layerboot: packing tree with mksquashfs: ")]
    assert len(result.stdout.decode().split()) == 1
    assert len(packing) >= 2, lines
    assert any(" blocks of " in line for line in packing), packing
    assert packing[-1].startswith("layerboot: packing tree with mksquashfs: done")
    assert elapsed / (len(lines) + 1) < 1.5, "a line at least every few intervals"
