"""``layerboot nodes/groups/clusters`` as an admin types them: a hundred nodes in one command, re-addressing a range,
clones, filters, import and export, --json everywhere, and one clear line (no traceback) for every mistake."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layerboot.overlays.profile import Profiles
from layerboot.tools.cli import main
from server_daemon import boot_profile


@pytest.fixture
def root(profiles: Profiles, make_layer, tmp_path: Path) -> str:  # noqa: ANN001
    boot_profile(profiles, make_layer, tmp_path, "p1")
    boot_profile(profiles, make_layer, tmp_path, "p2")
    return str(profiles.paths.root)


def cli(capsys: pytest.CaptureFixture[str], root: str, *args: str) -> tuple[int, str, str]:
    code = main(["--store", root, *args])
    out, err = capsys.readouterr()
    return code, out, err


def data(capsys: pytest.CaptureFixture[str], root: str, *args: str):  # noqa: ANN201
    code, out, err = cli(capsys, root, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def test_a_hundred_nodes_in_one_command_then_re_addressed(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, root, "clusters", "add", "c1", "--domain", "c1.example")[0] == 0
    assert cli(capsys, root, "groups", "add", "compute", "--profile", "p1", "--interface", "eth0", "--gateway",
               "10.0.0.254", "--var", "rack=1")[0] == 0
    code, out, _ = cli(capsys, root, "nodes", "add", "n[001-100]", "--mac", "52:54:00:00:00:fe", "--ip",
                       "10.0.0.1/24", "--cluster", "c1", "--group", "compute")
    assert code == 0 and out.startswith("added 100 nodes: n001 (52:54:00:00:00:fe, 10.0.0.1/24) .. n100 "
                                        "(52:54:00:00:01:61, 10.0.0.100/24)")
    listed = data(capsys, root, "nodes", "list", "--cluster", "c1")["nodes"]
    assert len(listed) == 100 and listed[2]["name"] == "n003" and listed[2]["profile"] == "p1"
    # re-address the second half to another subnet, every second address, in one command
    code, out, _ = cli(capsys, root, "nodes", "set", "n[051-100]", "--ip", "10.5.0.10/16", "--ip-step", "2",
                       "--gateway", "10.5.0.1")
    assert code == 0 and "n100: 52:54:00:00:01:61, 10.5.0.108/16, profile p1" in out
    shown = data(capsys, root, "nodes", "show", "n051")["fleet"]
    assert shown["interfaces"][0]["ipv4"] == "10.5.0.10/16" and shown["sources"]["profile"] == "group compute"
    # a whole group at once, by filter
    assert cli(capsys, root, "nodes", "set", "all", "--in-group", "compute", "--kernel-args", "nosmt")[0] == 0
    assert data(capsys, root, "nodes", "show", "52:54:00:00:00:fe")["fleet"]["kernel_args"] == "nosmt"
    assert len(data(capsys, root, "nodes", "list", "--profile", "p2")["nodes"]) == 0
    assert cli(capsys, root, "groups", "set", "compute", "--profile", "p2")[0] == 0
    assert len(data(capsys, root, "nodes", "list", "--profile", "p2", "--group", "compute")["nodes"]) == 100
    group = data(capsys, root, "groups", "show", "compute")
    assert group["profile"] == "p2" and len(group["members"]) == 100


def test_rename_new_mac_clone_and_a_mac_only_node_named(root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, root, "nodes", "add", "web1", "--mac", "52:54:00:00:10:01", "--ip", "10.0.0.10/24",
               "--profile", "p1")[0] == 0
    assert cli(capsys, root, "nodes", "set", "web1", "--interface", "eth1", "--mac", "52:54:00:00:20:01",
               "--ip", "dhcp")[0] == 0
    assert cli(capsys, root, "nodes", "set", "web1", "--name", "www1", "--interface", "eth0", "--mac",
               "52:54:00:00:10:99")[0] == 0
    node = data(capsys, root, "nodes", "show", "www1")
    assert node["mac"] == "52:54:00:00:10:99" and [i["device"] for i in node["fleet"]["interfaces"]] == ["eth0",
                                                                                                         "eth1"]
    clone = data(capsys, root, "nodes", "clone", "www1", "www2", "--mac", "52:54:00:00:10:02", "--mac",
                 "52:54:00:00:20:02")
    assert clone["interfaces"][0]["ipv4"] == "10.0.0.11/24" and clone["interfaces"][1]["ipv4"] == "dhcp"
    assert clone["machine_id"] != node["fleet"]["machine_id"]
    assert cli(capsys, root, "nodes", "register", "52:54:00:00:30:01", "--profile", "p2")[0] == 0
    code, out, _ = cli(capsys, root, "nodes", "set", "52:54:00:00:30:01", "--name", "old1")
    assert code == 0 and "now named old1" in out
    assert data(capsys, root, "nodes", "show", "old1")["profile"] == "p2"
    assert data(capsys, root, "nodes", "pin", "old1", "1")["pinned_generation"] == 1
    assert data(capsys, root, "nodes", "remove", "www2")["removed"] is True


def test_export_and_import_round_trip_through_files(root: str, capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    cli(capsys, root, "clusters", "add", "c1")
    cli(capsys, root, "nodes", "add", "n[1-3]", "--mac", "52:54:00:00:00:01", "--ip", "10.0.0.1/24", "--profile",
        "p1", "--cluster", "c1", "--var", "role=db")
    for fmt in ("toml", "csv"):
        out = tmp_path / f"fleet.{fmt}"
        assert cli(capsys, root, "nodes", "export", "--format", fmt, "-o", str(out))[0] == 0
        assert oct(out.stat().st_mode & 0o777) == "0o600"
        edited = out.read_text().replace("10.0.0.3/24", "10.0.0.33/24")
        out.write_text(edited)
        summary = data(capsys, root, "nodes", "import", str(out))
        assert summary["updated"] == ["n1", "n2", "n3"] and not summary["added"]
        assert data(capsys, root, "nodes", "show", "n3")["fleet"]["interfaces"][0]["ipv4"] == "10.0.0.33/24"
        out.write_text(edited.replace("10.0.0.33/24", "10.0.0.3/24"))
        cli(capsys, root, "nodes", "import", str(out))
    new = tmp_path / "more.csv"
    new.write_text("name,mac,ipv4,profile,cluster,var:role\nn4,52:54:00:00:00:04,10.0.0.4/24,p1,c1,web\n"
                   "n5,52:54:00:00:00:05,10.0.0.1/24,p1,c1,web\n")
    code, _, err = cli(capsys, root, "nodes", "import", str(new))
    assert code == 1 and "nodes n1 and n5 would both have the address 10.0.0.1" in err and "Traceback" not in err
    assert cli(capsys, root, "nodes", "show", "n4")[0] == 1            # all or nothing


@pytest.mark.parametrize("args, message", [
    (["nodes", "add", "n[1-", "--mac", "52:54:00:00:00:01", "--profile", "p1"], "'[' without ']'"),
    (["nodes", "add", "n[1-300]", "--mac", "52:54:00:00:00:01", "--ip", "10.0.0.1/24", "--profile", "p1"],
     "n255 would be outside 10.0.0.0/24"),
    (["nodes", "add", "n1", "--profile", "p1"], "needs the MAC it boots from"),
    (["nodes", "add", "n1", "--mac", "52:54:00:00:00:01", "--profile", "nope"], "no profile named 'nope'"),
    (["nodes", "add", "n1", "--mac", "52:54:00:00:00:01"], "n1 has no profile"),
    (["nodes", "add", "n1", "--mac", "52:54:00:00:00:01", "--profile", "p1", "--group", "g"],
     "in group g, which does not exist"),
    (["nodes", "set", "n9", "--profile", "p1"], "no node named 'n9'"),
    (["nodes", "import", "/nonexistent.toml"], "cannot read /nonexistent.toml"),
    (["groups", "add", "g", "--interface", "eth0", "--ip", "10.0.0.5/24"], "belongs to one node"),
    (["nodes", "accept", "52:54:00:00:00:09", "--name", "x"], "no machine 52:54:00:00:00:09 is pending"),
    (["nodes", "rules", "add", "--macs", "52:54:00:00:00:09", "--names", "a[1-2]"], "is not FIRST-LAST"),
])
def test_mistakes_are_one_line(root: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    code, _, err = cli(capsys, root, *args)
    assert code == 1 and message in err and "Traceback" not in err, err
