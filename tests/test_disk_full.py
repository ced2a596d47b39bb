"""A full or failing store disk loses nothing and says so in one line (real ext4 on loop devices).

The store lives on a small ext4 that the tests fill with a filler file (and, for EIO, on a loop device whose
backing file is cut short under the upload being baked). Each scenario checks what a user sees: the CLI's
one line and exit status 1, the upload's state/attempts/last error in ``layerboot uploads list``, and that
the same upload bakes once space is freed or the disk is healed.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from conftest import write_tree
from layerboot.overlays.keys import generate_key
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.run import run
from layerboot.server.uploads import UploadRecords
from layerboot.tools.cli import main
from server_daemon import MAC, Daemon, boot_profile, write_config
from smallfs import BrokenTail, fill, small_ext4
from test_server_uploads import layer_upload

pytestmark = pytest.mark.root


@dataclass
class Mounted:
    device: str
    mountpoint: Path
    image: Path
    paths: Paths
    store: Store
    profiles: Profiles


def _store_on(mountpoint: Path, device: str, image: Path, tmp_path: Path) -> Mounted:
    paths = Paths(mountpoint / "store")
    store = Store(paths)
    store.init()
    generate_key(paths.signing_key, paths.public_key)
    counter = iter(range(100))

    def make_layer(files: dict[str, str], *, kind: str = "overlay", base: str | None = None) -> str:
        tree = write_tree(tmp_path / f"tree{next(counter)}", files)
        return store.import_tree(tree, kind=kind, base=base, all_root=True).digest

    profiles = Profiles(store)
    boot_profile(profiles, make_layer, tmp_path, "p1")
    return Mounted(device, mountpoint, image, paths, store, profiles)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    image = tmp_path / "store.img"
    with small_ext4(image, tmp_path / "mnt", mb=96) as device:
        yield _store_on(tmp_path / "mnt", device, image, tmp_path)


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, list[str]]:
    code = main(["--store", str(root), *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


def random_squashfs(tmp_path: Path, mb: int) -> Path:
    tree = tmp_path / f"random{mb}"
    tree.mkdir()
    (tree / "data").write_bytes(os.urandom(mb * 10**6))
    image = tmp_path / f"random{mb}.squashfs"
    run(["mksquashfs", tree, image, "-quiet", "-no-progress", "-noappend", "-comp", "zstd"])
    return image


def test_cli_on_a_full_store_prints_one_line_names_the_disk_and_leaves_nothing(
        mounted: Mounted, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, where = mounted.paths.root, f"{mounted.device} mounted at {mounted.mountpoint}"
    before = set(mounted.store.objects.digests())
    image = random_squashfs(tmp_path, 12)
    filler = fill(mounted.mountpoint, leave=3 * 10**6)

    # an existing image: refused before a byte is copied
    code, lines = cli(capsys, root, "layer", "import", str(image))
    assert code == 1 and len(lines) == 2, lines
    assert lines[0].startswith(f"layerboot: error: no space left on {where} for importing {image}")
    assert "(needed ~12 MB, free" in lines[0] and lines[1].startswith("layerboot: hint: free space on")

    # a tree: mksquashfs runs out of space half-way; the message names the disk, not mksquashfs
    tree = write_tree(tmp_path / "bigtree", {})
    (tree / "data").write_bytes(os.urandom(12 * 10**6))
    code, lines = cli(capsys, root, "layer", "import", str(tree))
    assert code == 1 and len(lines) == 2, lines
    assert lines[0].startswith(f"layerboot: error: no space left on {where} for packing {tree}"), lines

    # not a byte free: a profile change (atomic writes) and the node database (SQLite) fail in one line too
    fill(mounted.mountpoint, leave=0, name="filler2")
    generation = mounted.profiles.current("p1").number
    code, lines = cli(capsys, root, "profile", "set", "p1", "--cmdline", "console=ttyS0 quiet=1")
    assert code == 1 and len(lines) == 2 and f"on {where}" in lines[0], lines
    code, lines = cli(capsys, root, "nodes", "register", MAC, "--profile", "p1")
    assert code == 1 and len(lines) == 2 and f"on {where}" in lines[0], lines

    # nothing half-written anywhere: no new object, no temp file, no scratch, no new generation
    assert set(mounted.store.objects.digests()) == before and not list(mounted.paths.tmp.iterdir())
    assert mounted.profiles.current("p1").number == generation
    filler.unlink()
    (mounted.mountpoint / "filler2").unlink()
    assert cli(capsys, root, "store", "fsck")[0] == 0
    assert cli(capsys, root, "layer", "import", str(image))[0] == 0


@dataclass
class Queue:
    mounted: Mounted
    daemon: Daemon
    token: str

    def put(self, name: str, data: bytes) -> str:
        reply = self.daemon.request("PUT", f"/nodes/{MAC}/uploads/{name}", body=data, token=self.token,
                                    headers={"Accept": "application/json"})
        assert reply.status == 202, reply.text
        return reply.json()["id"]

    def records(self) -> UploadRecords:
        return UploadRecords(self.daemon.registry().db, self.mounted.paths)

    def wait(self, upload_id: str, check, what: str, timeout: float = 60):  # noqa: ANN001, ANN201
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            upload = self.records().get(upload_id)
            if check(upload):
                return upload
            time.sleep(0.1)
        raise AssertionError(f"{what}: {self.records().get(upload_id)}\n{self.daemon.log.read_text()[-3000:]}")


@pytest.fixture
def queue(mounted: Mounted, tmp_path: Path) -> Iterator[Queue]:
    config = write_config(tmp_path / "layerboot.toml", mounted.paths, upload_policy="auto", retry_initial=1,
                          retry_max=2)
    daemon = Daemon(mounted.paths, config, tmp_path / "layerbootd.log")
    _, token = daemon.registry().register(MAC, "p1")
    daemon.start()
    yield Queue(mounted, daemon, token)
    daemon.stop()


def uploads_list(capsys: pytest.CaptureFixture[str], root: Path) -> str:
    assert main(["--store", str(root), "uploads", "list"]) == 0
    return capsys.readouterr().out


def test_an_upload_waits_out_a_full_store_and_bakes_when_space_is_freed(
        queue: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    mounted, root = queue.mounted, queue.mounted.paths.root
    generation = mounted.profiles.current("p1").number
    data = layer_upload({"etc/big": os.urandom(12 * 10**6), "etc/small": b"kept\n"})
    filler = fill(mounted.mountpoint, leave=len(data) + 6 * 10**6)   # room for the upload, not for its layer
    upload_id = queue.put("full.tar.zst", data)
    waiting = queue.wait(upload_id, lambda u: u.state == "retry" and u.attempts >= 2, "never retried")
    assert f"no space left on {mounted.device} mounted at {mounted.mountpoint} for baking" in waiting.last_error
    assert "(needed ~" in waiting.last_error and Path(waiting.path).is_file()
    listing = uploads_list(capsys, root)
    row = next(line for line in listing.splitlines() if line.startswith(upload_id))
    assert " retry " in row and "no space left on" in row and "T" in row.split()[7]   # NEXT TRY is a time
    assert set(listing.splitlines()[0].split()) >= {"ATTEMPTS", "NEXT", "TRY", "MESSAGE"}
    assert mounted.profiles.current("p1").number == generation
    filler.unlink()
    baked = queue.wait(upload_id, lambda u: u.state in ("baked", "failed"), "never baked")
    assert baked.state == "baked" and baked.generation == generation + 1, baked
    assert not Path(baked.path).exists() and not list(mounted.paths.tmp.iterdir())
    assert "retrying in" in queue.daemon.log.read_text()


def zstd_long(files: dict[str, bytes]) -> bytes:
    """A tar.zst whose files repeat themselves: zstd with an 8 MB window makes it small, squashfs cannot."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=23)
    return zstandard.ZstdCompressor(compression_params=params).compress(out.getvalue())


def test_tar2sqfs_running_out_of_space_is_reported_as_the_full_disk(
        queue: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    mounted = queue.mounted
    chunk = os.urandom(2 * 10**6)
    data = zstd_long({"etc/repeated": chunk * 16})   # 32 MB of file data in ~2 MB of upload
    assert len(data) < 3 * 10**6
    filler = fill(mounted.mountpoint, leave=20 * 10**6)   # the estimate (~10 MB) fits, the 32 MB image does not
    upload_id = queue.put("repeats.tar.zst", data)
    waiting = queue.wait(upload_id, lambda u: u.state == "retry", "never retried")
    assert waiting.last_error.startswith(f"no space left on {mounted.device} mounted at {mounted.mountpoint} "
                                         "for baking"), waiting.last_error
    assert "(needed more than" in waiting.last_error
    assert "command tar2sqfs" not in waiting.last_error and "I/O error" not in waiting.last_error
    filler.unlink()
    assert queue.wait(upload_id, lambda u: u.state in ("baked", "failed"), "never baked").state == "baked"


def test_a_read_error_under_a_queued_upload_is_retried_not_refused(tmp_path: Path, mounted: Mounted,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """incoming/ on its own disk; the upload's blocks become unreadable (EIO) after it was acknowledged."""
    with small_ext4(tmp_path / "incoming.img", mounted.paths.incoming, mb=32) as incoming_device:
        config = write_config(tmp_path / "layerboot.toml", mounted.paths, upload_policy="auto", retry_initial=1,
                              retry_max=2)
        daemon = Daemon(mounted.paths, config, tmp_path / "layerbootd.log")
        _, token = daemon.registry().register(MAC, "p1")
        daemon.start()
        try:
            queue = Queue(mounted, daemon, token)
            filler = fill(mounted.mountpoint, leave=8 * 10**6)   # first keep it waiting: no room for a bake
            upload_id = queue.put("eio.tar.zst", layer_upload({"etc/eio": os.urandom(6 * 10**6)}))
            upload = queue.wait(upload_id, lambda u: u.state == "retry", "never retried")
            broken = BrokenTail(tmp_path / "incoming.img", Path(upload.path))
            filler.unlink()
            upload = queue.wait(upload_id, lambda u: "I/O error" in u.last_error, "no I/O error seen")
            assert upload.state in ("retry", "baking", "received")
            assert f"I/O error on {incoming_device} mounted at {mounted.paths.incoming}" in upload.last_error
            assert "reading" in upload.last_error and upload.id in upload.last_error
            broken.heal()
            done = queue.wait(upload_id, lambda u: u.state in ("baked", "failed"), "never baked")
            assert done.state == "baked", done
        finally:
            daemon.stop()


def test_an_upload_that_does_not_fit_is_a_507_naming_the_disk_and_leaves_nothing(queue: Queue) -> None:
    mounted, daemon = queue.mounted, queue.daemon
    filler = fill(mounted.mountpoint, leave=10 * 10**6)
    where = f"no space left on {mounted.device} mounted at {mounted.mountpoint}"
    data = os.urandom(12 * 10**6)
    declared = daemon.request("PUT", f"/nodes/{MAC}/uploads/big.tar.zst", body=data, token=queue.token,
                              headers={"Accept": "application/json"})
    assert declared.status == 507 and declared.json()["error"].startswith(f"{where} for an upload from {MAC}")
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)   # no Content-Length: runs out
    conn.request("PUT", f"/nodes/{MAC}/uploads/chunked.tar.zst", body=iter([data[i:i + 10**6]
                                                                           for i in range(0, len(data), 10**6)]),
                 headers={"Authorization": f"Bearer {queue.token}", "Accept": "application/json"},
                 encode_chunked=True)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 507 and body["error"].startswith(where), body
    [cut] = queue.records().list()
    assert cut.state == "failed" and cut.message.startswith(f"not received: {where}")
    assert not list((mounted.paths.incoming / ".queue").iterdir())
    assert "Traceback" not in daemon.log.read_text()
    filler.unlink()
