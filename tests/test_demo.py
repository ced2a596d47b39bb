"""The README's first command: `layerboot demo` netboots a QEMU node from a local layerbootd, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from layerboot.tools.cli import main

pytestmark = [pytest.mark.qemu, pytest.mark.root]


def test_demo_netboots_a_node_and_bakes_its_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workdir = tmp_path / "demo"
    assert main(["demo", "--workdir", str(workdir)]) == 0
    out = capsys.readouterr().out
    # First boot: every layer is there, layer 2 shadows layer 1, the whiteout hides the base's /etc/issue.
    assert ("DEMO: booted generation 4 with 4 layers; motd: hello from layer 2; /etc/issue: gone (whiteout)"
            in out)
    # stage1 claimed the node's write secret with the asset key the demo registered (QEMU's UUID and serial).
    assert "layerboot: node secret: claimed with the asset key" in out
    # The node's change was captured, uploaded, baked into generation 5 and seen after the reboot.
    assert "DEMO: booted generation 5 with 5 layers" in out
    assert "DEMO: the change made on the last boot is here: written on the node during generation 4" in out
    assert "in generation 5, and it booted it" in out
    assert "Traceback" not in (workdir / "node-serial.log").read_text()
    # What it printed about where things are is true.
    assert (workdir / "store/manifests/demo/5.json").is_file()
    assert (workdir / "layerbootd.log").is_file()
