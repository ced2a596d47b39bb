"""Download the manifest's layers in parallel, hashing while streaming, resuming with HTTP Range on retries.

Each layer goes to ``<dir>/<digest>.part`` and is renamed to ``<dir>/<digest>`` only when its size and sha256
match the signed manifest; nothing is loop-mounted before that. Threads come from ``_thread`` directly
(``threading`` costs a dozen imports). With ``layerboot.cache=`` a LayerCache (initrd/stage1/cache.py) is asked
first and given each verified layer.
"""

from __future__ import annotations

import os
import time

from .console import StageError, debug
from .http import HttpError, request
from .verify import Layer

try:
    from _sha256 import sha256
except ImportError:  # pragma: no cover - other builds
    from hashlib import sha256

CHUNK = 1 << 20
PARALLEL = 4


class FetchError(StageError):
    pass


def _attempt(url: str, token: str, part: str, hashers: list, timeout: float, limit: int) -> None:
    """One request: resume at the .part file's size (``hashers[0]`` already covers those bytes).

    When the server ignores Range and sends everything again, the file and ``hashers[0]`` start over. Reading
    stops once the file is longer than ``limit`` (the signed size): a server cannot fill the tmpfs.
    """
    have = os.path.getsize(part)
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = request("GET", url, token=token, headers=headers, timeout=timeout)
    try:
        if response.status == 200 and have:
            debug(f"{url}: server ignored Range; starting over")
            have = 0
            hashers[0] = sha256()
            open(part, "wb").close()
        elif response.status == 206:
            start = response.headers.get("content-range", "").replace("bytes ", "").split("-")[0]
            if start != str(have):
                raise HttpError(f"server resumed at {start!r}, not at byte {have}")
        elif response.status != 200:
            raise HttpError(f"GET {url.split('?')[0]}: {response.status} {response.reason}", response.status)
        hasher = hashers[0]
        with open(part, "ab") as out:
            while have <= limit:
                piece = response.read_chunk()
                if not piece:
                    break
                hasher.update(piece)
                out.write(piece)
                have += len(piece)
    except OSError as err:
        raise HttpError(f"GET {url.split('?')[0]}: {err.strerror or err}") from None
    finally:
        response.close()


def fetch_layer(server: str, token: str, layer: Layer, directory: str, *, retries: int = 4,
                timeout: float = 10.0) -> str:
    """Return the path of the verified layer file; raise FetchError with one clear line."""
    final = os.path.join(directory, layer.digest)
    part = final + ".part"
    url = f"{server}/{layer.path}"
    with open(part, "wb"):
        pass
    hashers = [sha256()]
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            _attempt(url, token, part, hashers, timeout, layer.size)
            break
        except HttpError as err:
            if err.status in (401, 403, 404, 410) or attempt == retries:
                os.unlink(part)
                raise FetchError(f"layer {layer.digest[:12]}: {err}") from None
            debug(f"layer {layer.digest[:12]}: {err}; retry {attempt + 1}/{retries} in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        size = os.path.getsize(part)
        if size >= layer.size:
            break
    size = os.path.getsize(part)
    digest = hashers[0].hexdigest()
    if size != layer.size or digest != layer.digest:
        os.unlink(part)
        raise FetchError(f"layer {layer.digest[:12]} failed verification: got {size} bytes with sha256 "
                         f"{digest[:12]}, the signed manifest says {layer.size} bytes {layer.digest[:12]}")
    os.rename(part, final)
    return final


class _Batch:
    """Run fetches on ``_thread`` workers; results land in manifest order, the first error stops new work."""

    def __init__(self, count: int, workers: int) -> None:
        import _thread

        self.lock = _thread.allocate_lock()
        self.results: list[str | None] = [None] * count
        self.errors: list[BaseException] = []
        self.running = workers
        self.next = 0

    def worker(self, job) -> None:  # noqa: ANN001
        try:
            while True:
                with self.lock:
                    if self.next >= len(self.results) or self.errors:
                        return
                    index = self.next
                    self.next += 1
                try:
                    self.results[index] = job(index)
                except BaseException as err:  # noqa: BLE001 - reported by the caller
                    with self.lock:
                        self.errors.append(err)
        finally:
            with self.lock:
                self.running -= 1

    def done(self) -> bool:
        with self.lock:
            return self.running == 0


def fetch_layers(server: str, token: str, layers: tuple[Layer, ...], directory: str, *, retries: int = 4,
                 timeout: float = 10.0, cache=None) -> list[str]:  # noqa: ANN001 - LayerCache | None
    """Fetch (or take from ``cache``) every layer; return the verified paths, base first."""
    import _thread

    os.makedirs(directory, exist_ok=True)

    def job(index: int) -> str:
        layer = layers[index]
        if cache is not None:
            cached = cache.lookup(layer.digest)
            if cached:
                debug(f"layer {layer.digest[:12]}: from the cache")
                return cached
        started = time.monotonic()
        path = fetch_layer(server, token, layer, directory, retries=retries, timeout=timeout)
        debug(f"layer {layer.digest[:12]}: {layer.size} bytes in {time.monotonic() - started:.2f}s")
        if cache is not None:
            admitted = cache.admit(layer.digest, path)
            if admitted != path and os.path.exists(path):
                os.unlink(path)   # copied onto the cache disk: do not keep a second copy in the /run tmpfs (RAM)
            path = admitted
        return path

    workers = min(PARALLEL, len(layers))
    batch = _Batch(len(layers), workers)
    for _ in range(workers):
        _thread.start_new_thread(batch.worker, (job,))
    while not batch.done():
        time.sleep(0.01)
    if batch.errors:
        error = batch.errors[0]
        if isinstance(error, StageError):
            raise error
        raise FetchError(f"fetching layers failed: {type(error).__name__}: {error}")
    return [path for path in batch.results if path is not None]
