"""The upload scanner on the tarfile of Pythons with the 2025 tarfile fixes (3.12.11+, 3.13.4+, Debian 12's
patched 3.11.2), which read headers through TarInfo._frombuf: found by the fresh Debian 12 install test, where
every upload was refused as truncated."""

from __future__ import annotations

import io
import tarfile

import pytest

from layerboot.overlays.tarscan import BakeLimits, UploadRejected, scan_tar

LIMITS = BakeLimits(max_bytes=1 << 20, max_files=100, special_files="reject")


def _archive(*, end: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("etc/hello")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    data = buffer.getvalue()
    return data if end else data[:1024]


@pytest.fixture(params=["as installed", "with _frombuf"])
def tarfile_flavour(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "with _frombuf" and "_frombuf" not in vars(tarfile.TarInfo):
        original = tarfile.TarInfo.frombuf.__func__            # type: ignore[attr-defined]

        def _frombuf(cls, buf, encoding, errors, *, dircheck=True):  # noqa: ANN001, ANN202
            return original(cls, buf, encoding, errors)

        def fromtarfile(cls, tarfile_):  # noqa: ANN001, ANN202 - the patched structure: frombuf is not called
            obj = cls._frombuf(tarfile_.fileobj.read(tarfile.BLOCKSIZE), tarfile_.encoding, tarfile_.errors)
            obj.offset = tarfile_.fileobj.tell() - tarfile.BLOCKSIZE
            return obj._proc_member(tarfile_)

        monkeypatch.setattr(tarfile.TarInfo, "_frombuf", classmethod(_frombuf), raising=False)
        monkeypatch.setattr(tarfile.TarInfo, "fromtarfile", classmethod(fromtarfile))
    return request.param


def test_end_of_archive_is_found_whichever_header_hook_tarfile_uses(tarfile_flavour: str) -> None:
    members = [(m.path, m.kind, d.read() if d else b"") for m, d in scan_tar(io.BytesIO(_archive()), LIMITS)]
    assert members == [("etc/hello", "file", b"hi\n")]
    with pytest.raises(UploadRejected, match="truncated"):
        list(scan_tar(io.BytesIO(_archive(end=False)), LIMITS))
