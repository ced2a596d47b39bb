"""One simulated node of the boot storm (bench/bench_storm.py): stage1's own manifest, mirror and fetch code.

Run by stage1's interpreter inside the node's network namespace::

    python3.11 -SIB storm_node.py STAGE1_PARENT JOB_JSON

It imports stage1 exactly as the initramfs does and waits for one byte on stdin (the storm's start: every node
is spawned and imported first, then all are released at once). Then, as stage1's manifest and layers stages:

* ``layerboot`` mode: GET /nodes/MAC/manifest with the boot token, verify_envelope (Ed25519, profile, node),
  Sources.for_manifest + rank (the signed mirrors, nearest first), fetch_layers (4 at a time, SHA-256 on a
  second thread, resuming and falling back across mirrors), then POST the switch_root boot event;
* ``image`` mode (the nginx baseline): fetch_layer of one image with the same size and sha256 check.

Every byte is received and verified against the signed size and sha256 as at boot, but written to /dev/null:
a node's cache seam (``tmp_path``) hands fetch_layer a symlink to /dev/null, because 200 chains of a few
hundred MB do not fit in this machine's RAM. Prints one line ``STORM {json}`` with CLOCK_MONOTONIC times
(the bench's clock too), the bytes each source delivered, and the error if any.
"""

from __future__ import annotations

import os
import sys
import time


class DiscardCache:
    """fetch_layers' cache seam: nothing cached; downloads go to /dev/null through a per-layer symlink."""

    def __init__(self, scratch: str) -> None:
        self.scratch = scratch
        os.makedirs(scratch, exist_ok=True)

    def lookup(self, layer, fetch_tree=None) -> None:  # noqa: ANN001
        return None

    def tmp_path(self, digest: str) -> str:
        path = os.path.join(self.scratch, f".{digest}.tmp")
        if not os.path.islink(path):
            os.symlink("/dev/null", path)
        return path

    def admit(self, layer, path: str, *, verified: bool = False, fetch_tree=None) -> str:  # noqa: ANN001
        assert verified, "fetch_layer verified size and sha256 before handing it over"
        return path


def boot(job: dict, result: dict) -> None:
    from stage1.fetch import fetch_layer, fetch_layers
    from stage1.http import get_bytes, post_json
    from stage1.sources import Sources
    from stage1.verify import Layer, load_public_key, verify_envelope

    cache = DiscardCache(job["scratch"])
    if job["mode"] == "image":
        image = Layer(job["image"]["digest"], job["image"]["size"], job["image"]["path"])
        result["manifest"] = time.monotonic()
        fetch_layer(job["server"], "", image, job["scratch"], timeout=job["timeout"],
                    part=cache.tmp_path(image.digest))
        result["bytes"] = {job["server"]: image.size}
        return
    envelope = get_bytes(f"{job['server']}/nodes/{job['mac']}/manifest", token=job["token"], timeout=job["timeout"],
                         limit=1 << 20)
    manifest = verify_envelope(envelope, load_public_key(job["key"]), profile=job["profile"], node=job["mac"])
    result["manifest"] = time.monotonic()
    sources = None
    if manifest.mirrors:
        sources = Sources.for_manifest(job["server"], manifest)
        sources.rank()
        result["mirror_order"] = list(sources.mirrors)
    fetch_layers(job["server"], job["token"], manifest.layers, job["scratch"], timeout=job["timeout"],
                 cache=cache, on_disk=True, sources=sources)
    result["bytes"] = dict(sources.bytes) if sources else {job["server"]: sum(x.size for x in manifest.layers)}
    result["down"] = dict(sources.down) if sources else {}
    event = {"stage": "switch_root", "ok": True, "message": "", "profile": manifest.profile,
             "generation": manifest.generation, "serial": manifest.serial,
             "elapsed": round(time.monotonic() - result["started"], 3)}
    try:
        post_json(f"{job['server']}/nodes/{job['mac']}/events", event, token=job["token"], timeout=job["timeout"])
    except Exception as err:  # noqa: BLE001 - best effort, as in stage1
        result["event_error"] = str(err)


def main() -> None:
    sys.path.insert(0, sys.argv[1])
    from stage1.jsonlite import dumps, loads

    job = loads(sys.argv[2])
    import stage1.fetch, stage1.sources, stage1.verify, stage1.hashing  # noqa: E401, F401 - loaded before the start
    stage1.hashing.engine()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    os.read(0, 1)                                    # the storm starts
    result: dict = {"node": job["mac"], "ok": False, "started": time.monotonic()}
    try:
        boot(job, result)
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - reported in the result line
        result["error"] = f"{type(err).__name__}: {err}"
    result["done"] = time.monotonic()
    times = os.times()
    result["cpu"] = round(times.user + times.system, 3)
    sys.stdout.write("STORM " + dumps(result) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
