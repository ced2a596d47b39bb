"""Background jobs of the console and the API: base imports (a live ISO, a debootstrap suite, an OCI image).

A job is a row of the ``jobs`` table (migration 6): ``queued`` -> ``running`` -> ``done`` | ``failed``, with
its parameters, a one-line ``progress`` (the newest log line the import wrote, e.g. ``packing ... with
mksquashfs``), its ``result`` (the digests it stored) or its one-line ``error``. The table is shared by every
replica, so a job shows wherever one looks; the work runs in a worker thread of the daemon that accepted it
(one import at a time: they are CPU- and disk-bound), which records itself as the job's ``owner``. A daemon
that starts marks the jobs its dead predecessors on this host left ``running`` as failed.

Importers: ``iso`` (build/iso.py, a live ISO from ``console.import_dir``), ``debootstrap``
(build/debootstrap.py, from the host's Debian mirror) and ``oci`` (an OCI archive ``*.tar`` or an OCI layout
directory from ``console.import_dir``, flattened into one base). **OCI hook**: ``layerboot base import-oci``
(``layerboot.build.oci.importer.import_oci(store, source, ref=..., description=...)``) is not part of this
branch; where it is installed, :func:`oci_available` finds it and the console offers the choice (until then
it is shown disabled). The images come from a local directory, not a registry: layerbootd fetches nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError, NotFoundError
from layerboot.safetext import printable
from layerboot.server.monitor.model import iso

log = logging.getLogger("layerboot.server.jobs")

KINDS = ("iso", "debootstrap", "oci")
STATES = ("queued", "running", "done", "failed")
SUITE_RE = re.compile(r"[a-z][a-z0-9-]{1,30}")
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]{0,99}")
REF_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}")     # an image's name in an archive or layout
OCI_IMPORTER = "layerboot.build.oci.importer"
PROGRESS_EVERY = 0.5          # seconds between two writes of a job's progress line
KEPT = 200                    # finished jobs kept


def oci_available() -> bool:
    """True where ``layerboot base import-oci`` (its importer module) is installed: the OCI hook."""
    try:
        return importlib.util.find_spec(OCI_IMPORTER) is not None
    except ModuleNotFoundError:       # its parent package is missing too
        return False


def import_dir(config: Any, paths: Any) -> Path:
    return Path(config.console_import_dir) if config.console_import_dir else paths.imports


def _entries(config: Any, paths: Any) -> list[Path]:
    directory = import_dir(config, paths)
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.iterdir()) if not p.name.startswith(".")]


def isos(config: Any, paths: Any) -> list[dict[str, Any]]:
    """The live ISO images the console offers (name, size): ``*.iso`` files in ``console.import_dir``."""
    return [{"name": p.name, "size": p.stat().st_size} for p in _entries(config, paths)
            if p.is_file() and p.name.lower().endswith(".iso")]


def oci_images(config: Any, paths: Any) -> list[dict[str, Any]]:
    """The OCI images the console offers (name, size): OCI archives (``*.tar``) and OCI layout directories
    (with an ``oci-layout`` file) in ``console.import_dir``."""
    found = []
    for p in _entries(config, paths):
        if p.is_file() and p.name.endswith(".tar"):
            found.append({"name": p.name, "size": p.stat().st_size})
        elif p.is_dir() and (p / "oci-layout").is_file():
            blobs = p / "blobs"
            found.append({"name": p.name, "size": sum(f.stat().st_size for f in blobs.rglob("*") if f.is_file())
                          if blobs.is_dir() else 0})
    return found


def _offered(name: Any, offered: list[dict[str, Any]], what: str, config: Any, paths: Any) -> str:
    if not isinstance(name, str) or name not in {entry["name"] for entry in offered}:
        raise LayerbootError(f"no {what} {printable(str(name)[:80])!r} in {import_dir(config, paths)}",
                             hint="copy it there (console.import_dir) and choose it from the list")
    return name


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    params: dict[str, Any]
    state: str
    progress: str
    result: dict[str, Any]
    error: str
    started_by: str
    created: float
    updated: float
    finished: float | None = None
    owner: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: Any) -> "Job":
        return cls(row["id"], row["kind"], json.loads(row["params"]), row["state"], row["progress"],
                   json.loads(row["result"]), row["error"], row["started_by"], row["created"], row["updated"],
                   row["finished"], row["owner"])

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "params": self.params, "state": self.state,
                "progress": self.progress, "result": self.result, "error": self.error,
                "started_by": self.started_by, "created": iso(self.created), "updated": iso(self.updated),
                "finished": iso(self.finished),
                "seconds": round((self.finished or time.time()) - self.created, 1)}


def check_params(kind: str, params: Any, config: Any, paths: Any) -> dict[str, Any]:
    """The job's parameters, checked before anything runs; a bad one is one line naming it."""
    if kind not in KINDS:
        raise LayerbootError(f"a base import is one of {', '.join(KINDS)}, not {printable(str(kind)[:20])!r}")
    if not isinstance(params, dict):
        raise LayerbootError("the parameters of a base import are a JSON object")
    description = params.get("description", "") or ""
    if not isinstance(description, str) or len(description) > 200 or not description.isprintable():
        raise LayerbootError("description is at most 200 printable characters")
    if kind == "iso":
        return {"iso": _offered(params.get("iso"), isos(config, paths), "ISO image", config, paths),
                "description": description}
    if kind == "debootstrap":
        suite = params.get("suite") or "bookworm"
        if not isinstance(suite, str) or not SUITE_RE.fullmatch(suite):
            raise LayerbootError(f"suite {printable(str(suite)[:40])!r} is not a Debian suite name")
        include = params.get("include") or []
        if isinstance(include, str):
            include = [p for p in re.split(r"[\s,]+", include) if p]
        if not isinstance(include, list) or len(include) > 100 or not all(
                isinstance(p, str) and PACKAGE_RE.fullmatch(p) for p in include):
            raise LayerbootError("include is a list of Debian package names (at most 100)")
        return {"suite": suite, "include": include, "description": description}
    if not oci_available():
        raise LayerbootError("importing an OCI image needs 'layerboot base import-oci', which this layerboot "
                             "does not have yet", hint="import an ISO or a debootstrap suite instead")
    image = _offered(params.get("image"), oci_images(config, paths), "OCI image", config, paths)
    ref = params.get("ref") or ""
    if not isinstance(ref, str) or (ref and not REF_RE.fullmatch(ref)):
        raise LayerbootError(f"ref {printable(str(ref)[:40])!r} is not an image name of an OCI archive or layout")
    return {"image": image, "ref": ref, "description": description}


def run_import(kind: str, params: dict[str, Any], store: Any, config: Any) -> dict[str, Any]:
    """Do the import (in a worker thread); returns the digests it stored."""
    if kind == "iso":
        from layerboot.build.iso import import_iso
        found = import_iso(store, import_dir(config, store.paths) / params["iso"],
                           description=params["description"])
        return {"base": found.base.digest, "kernel": found.kernel.digest, "initrd": found.initrd.digest}
    if kind == "debootstrap":
        from layerboot.build.debootstrap import (DEFAULT_CACHE, NODE_PACKAGES, DebootstrapSpec, debootstrap_base,
                                                 host_arch, host_mirror)
        spec = DebootstrapSpec(suite=params["suite"], mirror=host_mirror().rstrip("/"),
                               include=NODE_PACKAGES + tuple(params["include"]), arch=host_arch())
        layer = debootstrap_base(store, spec, cache=DEFAULT_CACHE, description=params["description"])
        return {"base": layer.digest}
    module = importlib.import_module(OCI_IMPORTER)       # the OCI hook (see the module docstring)
    found = module.import_oci(store, import_dir(config, store.paths) / params["image"], ref=params["ref"] or None,
                              description=params["description"])
    return {"base": found.layers[0].digest}


class _Progress(logging.Handler):
    """Turns the log lines one worker thread writes into its job's progress line."""

    def __init__(self, jobs: "Jobs", job_id: str, thread: int) -> None:
        super().__init__(logging.INFO)
        self.jobs, self.job_id, self.thread = jobs, job_id, thread
        self.last = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread or time.monotonic() - self.last < PROGRESS_EVERY:
            return
        self.last = time.monotonic()
        try:
            self.jobs.db.execute("UPDATE jobs SET progress = ?, updated = ? WHERE id = ?",
                                 (printable(record.getMessage())[:300], time.time(), self.job_id))
        except LayerbootError:      # progress is best effort
            pass


class Jobs:
    def __init__(self, db: Any, store: Any, config: Any) -> None:
        self.db = db
        self.store = store
        self.config = config
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._pool: ThreadPoolExecutor | None = None

    def recover(self) -> int:
        """Fail the jobs dead daemons on this host left queued or running; returns how many."""
        host = socket.gethostname() + ":"
        failed = 0
        for row in self.db.all("SELECT id, owner FROM jobs WHERE state IN ('queued', 'running')"):
            owner = row["owner"]
            if owner == self.owner or not owner.startswith(host) or _alive(owner[len(host):]):
                continue
            self._finish(row["id"], "failed", error="interrupted: the layerbootd running it stopped")
            failed += 1
        return failed

    def start(self, kind: str, params: Any, started_by: str) -> Job:
        checked = check_params(kind, params, self.config, self.store.paths)
        job_id = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        now = time.time()
        self.db.execute("INSERT INTO jobs (id, kind, params, state, progress, started_by, owner, created, updated) "
                        "VALUES (?, ?, ?, 'queued', 'waiting for the import before it', ?, ?, ?, ?)",
                        (job_id, kind, json.dumps(checked, sort_keys=True), started_by, self.owner, now, now))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layerboot-job")
        self._pool.submit(self._run, job_id, kind, checked)
        log.info("job %s: %s import %s started by %s", job_id, kind, json.dumps(checked, sort_keys=True), started_by)
        return self.get(job_id)

    def _run(self, job_id: str, kind: str, params: dict[str, Any]) -> None:
        handler = _Progress(self, job_id, threading.get_ident())
        logger = logging.getLogger("layerboot")
        logger.addHandler(handler)
        try:
            self.db.execute("UPDATE jobs SET state = 'running', progress = 'starting', updated = ? WHERE id = ?",
                            (time.time(), job_id))
            result = run_import(kind, params, self.store, self.config)
        except LayerbootError as err:
            log.warning("job %s failed: %s", job_id, err.message)
            self._finish(job_id, "failed", error=err.message + (f" (hint: {err.hint})" if err.hint else ""))
        except Exception as err:  # noqa: BLE001 - a bug in an importer fails its job, not the daemon
            log.exception("job %s failed unexpectedly", job_id)
            self._finish(job_id, "failed", error=f"internal error: {type(err).__name__} (see the layerbootd log)")
        else:
            log.info("job %s done: %s", job_id, result)
            self._finish(job_id, "done", result=result)
        finally:
            logger.removeHandler(handler)

    def _finish(self, job_id: str, state: str, *, error: str = "", result: dict[str, Any] | None = None) -> None:
        now = time.time()
        self.db.execute("UPDATE jobs SET state = ?, error = ?, result = ?, progress = ?, updated = ?, finished = ? "
                        "WHERE id = ?", (state, error[:2000], json.dumps(result or {}, sort_keys=True),
                                         "finished" if state == "done" else "stopped", now, now, job_id))
        self.db.execute("DELETE FROM jobs WHERE finished IS NOT NULL AND id NOT IN "
                        "(SELECT id FROM jobs ORDER BY created DESC LIMIT ?)", (KEPT,))

    def get(self, job_id: str) -> Job:
        row = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFoundError(f"no job {printable(job_id[:40])!r}")
        return Job.from_row(row)

    def list(self, limit: int = 50) -> list[Job]:
        return [Job.from_row(r) for r in self.db.all("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,))]

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _alive(pid: str) -> bool:
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
