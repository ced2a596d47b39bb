"""What stage1 costs at boot: the Python modules it loads, run by the interpreter the initrd ships."""

import os
from pathlib import Path

import pytest

from layerboot.build.initrd import PYTHON, collect_payload

# Big or risky packages PID 1 must not drag into the initramfs (each costs time under TCG and image size).
# pyroute2 and ipaddress: the net stage speaks rtnetlink itself (stage1/netlink.py; figures in docs/stage1.md).
FORBIDDEN = ("asyncio", "email", "http", "urllib", "ssl", "_ssl", "_hashlib", "hashlib", "subprocess", "socket",
             "selectors", "threading", "logging", "pyroute2", "ctypes", "argparse", "typing", "layerboot",
             "cryptography", "zipfile", "tarfile", "dataclasses", "inspect", "ipaddress")

needs_python = pytest.mark.skipif(not os.path.exists(PYTHON), reason=f"{PYTHON} (python3-minimal) missing")


@needs_python
def test_stage1_import_set_is_small_and_lean(tmp_path: Path) -> None:
    (tmp_path / "k.pub").write_text("x\n")
    info = collect_payload(tmp_path / "payload", tmp_path / "k.pub")
    modules = set(info["boot_modules"])   # what importing every stage1 module loads (the boot path)
    assert {"stage1.main", "stage1.fetch", "stage1.http", "stage1.dhcp", "stage1.verify"} <= modules
    # The net stage: dracut's syntax, rtnetlink, DHCPv4/v6, IPv6 methods, the record for the booted system.
    assert {"stage1.netcmd", "stage1.net", "stage1.netlink", "stage1.dhcp6", "stage1.net6", "stage1.netstate"} \
        <= modules
    # boot messages to the log server (remotelog.py) over _socket: one stage1 module, no stdlib one (no socket,
    # logging: both in FORBIDDEN below)
    assert "stage1.remotelog" in modules
    for name in FORBIDDEN + ("json", "re"):
        assert not any(m == name or m.startswith(name + ".") for m in modules), f"stage1 imports {name}"
    stdlib = [m for m in modules if not m.startswith("stage1")]
    assert len(stdlib) < 40, sorted(stdlib)
    # Shipped for the rare paths (tracebacks under layerboot.debug, the JSON scanner's error class).
    assert {"traceback", "json.decoder"} <= set(info["modules"])
    assert any("/_json." in so for so in info["libraries"]), "jsonlite needs the _json extension module"
    # OpenSSL's SHA-256 for the layers is shipped (stage1/hashing.py: chosen by bench/README.md's figures), but
    # only imported when layers are hashed, never at import time (_hashlib is in FORBIDDEN above).
    assert any("/_hashlib." in so for so in info["libraries"]) and "_hashlib" in info["modules"]
    # Only shared objects from the stdlib's lib-dynload (nothing pulling in OpenSSL or libffi).
    assert all("/lib-dynload/" in so and "ssl" not in so and "ctypes" not in so for so in info["libraries"])
    # Every module is shipped as a sourceless .pyc; the interpreter finds its prefix through os.pyc.
    lib = tmp_path / "payload" / "usr" / "lib"
    assert (lib / "python3.11" / "os.pyc").is_file()
    assert (lib / "layerboot" / "stage1" / "main.pyc").is_file()
    assert not list((tmp_path / "payload").rglob("*.py"))
    init = (tmp_path / "payload" / "init").read_text()
    assert init.startswith(f"#!{PYTHON} -SIB\n") and "from stage1.main import main" in init


@needs_python
def test_importing_stage1_does_nothing(tmp_path: Path) -> None:
    """Imports have no side effects: no files, no mounts, no network (PID 1 decides when things happen)."""
    from layerboot.run import run

    src = Path(__file__).resolve().parent.parent / "initrd"
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); before = set(os.listdir('.'));"
            "import stage1.main, stage1.fetch, stage1.net, stage1.dhcp, stage1.system, stage1.http, stage1.netcmd,"
            " stage1.netlink, stage1.dhcp6, stage1.net6, stage1.netstate, stage1.hashing, stage1.fsverity;"
            "assert set(os.listdir('.')) == before; print('ok')")
    result = run([PYTHON, "-S", "-I", "-B", "-c", code, src], cwd=tmp_path)
    assert result.text.strip() == "ok"


@needs_python
def test_payload_command_writes_what_other_builders_install(store, tmp_path: Path,  # noqa: ANN001
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from layerboot.tools.cli import main

    target = tmp_path / "payload"
    assert main(["--store", str(store.paths.root), "initrd", "payload", str(target)]) == 0
    assert "compiled modules" in capsys.readouterr().out
    assert (target / "etc/layerboot/signing.pub").read_text() == store.paths.public_key.read_text()
    assert (target / "usr/lib/layerboot/stage1/fetch.pyc").is_file() and (target / "init").is_file()
    assert main(["--store", str(store.paths.root), "initrd", "payload", str(target)]) == 1
    assert "is not empty" in capsys.readouterr().err
