"""Download the manifest's layers in parallel, hashing while streaming, resuming with HTTP Range on retries.

Each layer goes to ``<dir>/<digest>.part`` (or the path the caller names, e.g. on the cache disk) and is
renamed to its final name only when its size and sha256 match the signed manifest; nothing is loop-mounted
before that, and any failure removes the partial file. The per-byte path is ``recv_into`` into reused 1 MiB
buffers, ``os.write`` from them, and SHA-256 from them on a second thread when the node has two CPUs
(hashing.py). Threads come from ``_thread`` directly (``threading`` costs a dozen imports). With
``layerboot.cache=`` a LayerCache (initrd/stage1/cache.py) is asked first and given each verified layer. The
signed manifest's mirrors come before the origin (sources.py decides the order; a mirror that fails or sends
wrong bytes is dropped and the next source takes over).
"""

from __future__ import annotations

import os
import time

from .console import StageError, debug
from .http import HttpError, parse_content_range, request
from .verify import Layer

PARALLEL = 4
ENOSPC = 28


class FetchError(StageError):
    pass


def base_urls(server: str) -> list[str]:
    """Where streamed layers (stream.py) read blocks from, in order of preference (``layer.path`` is relative to
    each): the origin, ``layerboot.server=``. Whole downloads rank the signed manifest's mirrors first
    (sources.py); streaming does not use mirrors yet (docs/scale.md)."""
    return [server]


def _receive(response, sink, limit: int) -> None:  # noqa: ANN001 - http.Response, hashing.HashSink
    """Move the body into ``sink`` until it ends or the sink holds more than ``limit`` bytes."""
    while sink.size <= limit:
        view = sink.buffer()
        room = min(len(view), limit + 1 - sink.size)
        filled = 0
        try:
            while filled < room:
                try:
                    count = response.readinto(view[filled:room])
                except OSError as err:      # the network (timeouts, resets): retried; the disk's are not
                    raise HttpError(f"{response.what}: {err.strerror or err}") from None
                if not count:
                    break
                filled += count
        finally:
            sink.push(filled)          # what arrived before an error counts: the retry resumes after it
        if filled < room:
            return


def _attempt(url: str, token: str, sink, timeout: float, limit: int) -> None:  # noqa: ANN001 - HashSink
    """One request, resuming at ``sink.size``. A server that ignores Range restarts the file and the hash.

    Reading stops once more than ``limit`` (the signed size) bytes are in: a server cannot fill the disk.
    """
    have = sink.size
    headers = {"Range": f"bytes={have}-"} if have else {}
    response = request("GET", url, token=token, headers=headers, timeout=timeout)
    try:
        if response.status == 200 and have:
            debug(f"{url}: server ignored Range; starting over")
            sink.restart()
        elif response.status == 206:
            start, _, _ = parse_content_range(response.headers.get("content-range", ""), response.what)
            if start != have:
                raise HttpError(f"{response.what}: server resumed at byte {start}, not at byte {have}")
        elif response.status != 200:
            raise HttpError(f"GET {url.split('?')[0]}: {response.status} {response.reason}", response.status)
        _receive(response, sink, limit)
    finally:
        response.close()


def _write_error(layer: Layer, directory: str, err: OSError) -> FetchError:
    if err.errno == ENOSPC:
        where = f"RAM ({directory})" if directory.startswith("/run/layerboot/layers") else directory
        return FetchError(f"layer {layer.digest[:12]} ({layer.size / 1e6:.1f} MB): no space left in {where}; "
                          "the node needs room for its whole chain (docs/stage1.md, 'RAM and disk')")
    return FetchError(f"layer {layer.digest[:12]}: writing {directory}: {err.strerror or err}")


def _download(url: str, token: str, sink, layer: Layer, *, retries: int, timeout: float) -> None:  # noqa: ANN001
    """Fill ``sink`` from ``url`` (resuming at ``sink.size``), retrying ``retries`` times with backoff;
    raises the last HttpError. 401, 403, 404 and 410 are not retried."""
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            _attempt(url, token, sink, timeout, layer.size)
            return
        except HttpError as err:
            if err.status in (401, 403, 404, 410) or attempt == retries:
                raise
            debug(f"layer {layer.digest[:12]}: {err}; retry {attempt + 1}/{retries} in {delay:.1f}s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        if sink.size >= layer.size:
            return


def fetch_layer(server: str, token: str, layer: Layer, directory: str, *, retries: int = 4,
                timeout: float = 10.0, part: str | None = None, sources=None) -> str:  # noqa: ANN001
    """Return the path of the verified layer file; raise FetchError with one clear line.

    The download goes to ``part`` (default ``<directory>/<digest>.part``) and is renamed to
    ``<directory>/<digest>`` once verified; on any failure nothing is left behind. With ``sources``
    (sources.Sources) it tries the base URLs :meth:`~sources.Sources.for_layer` names, in order: a mirror gets
    one try, and on an error the download resumes (Range) from the next source at once; a wrong size or hash
    starts it over from the next source. The origin (last, ``server`` without ``sources``) gets ``retries``.
    """
    from .hashing import HashSink

    final = os.path.join(directory, layer.digest)
    part = part or final + ".part"
    bases = sources.for_layer(layer) if sources is not None else base_urls(server)
    where = os.path.dirname(part)
    try:
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise _write_error(layer, where, err) from None
    try:
        with HashSink(fd) as sink:
            contributors: list[str] = []          # sources whose bytes are in the sink now
            for index, base in enumerate(bases):
                origin = index == len(bases) - 1
                before = sink.size
                try:
                    _download(f"{base}/{layer.path}", token, sink, layer, retries=retries if origin else 0,
                              timeout=timeout)
                except HttpError as err:
                    if origin:
                        raise FetchError(f"layer {layer.digest[:12]}: {err}") from None
                    sources.failed(base, str(err))
                    continue
                except OSError as err:   # writing the file (the network's errors are HttpErrors)
                    raise _write_error(layer, where, err) from None
                finally:
                    if sink.size > before:
                        contributors.append(base)
                        if sources is not None:
                            sources.delivered(base, sink.size - before)
                size, digest = sink.size, sink.hexdigest()
                if (size, digest) == (layer.size, layer.digest) or origin:
                    break
                for bad in contributors:
                    sources.failed(bad, f"sent layer {layer.digest[:12]} with {size} bytes and sha256 {digest[:12]}, "
                                        "not the signed ones")
                contributors = []
                sink.restart()
            size, digest = sink.size, sink.hexdigest()
    except BaseException:
        os.close(fd)
        os.unlink(part)
        raise
    os.close(fd)
    if size != layer.size or digest != layer.digest:
        os.unlink(part)
        raise FetchError(f"layer {layer.digest[:12]} failed verification: got {size} bytes with sha256 "
                         f"{digest[:12]}, the signed manifest says {layer.size} bytes {layer.digest[:12]}")
    if part != final + ".part":
        return part          # the caller (the cache) renames it into place
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
                 timeout: float = 10.0, cache=None, on_disk: bool = True,
                 sources=None) -> list[str]:  # noqa: ANN001
    """Fetch (or take from ``cache``) every layer; return the verified paths, base first.

    With a cache and ``on_disk`` (``layerboot.layers=cache``, the default with a cache) a layer is downloaded
    straight onto the cache filesystem and renamed in: no copy in RAM. Without ``on_disk`` it is downloaded
    into ``directory`` (RAM) and booted from there, and the cache gets a copy for the next boot. ``sources``
    (sources.Sources) adds the signed manifest's mirrors in front of ``server``.
    """
    import _thread

    os.makedirs(directory, exist_ok=True)

    def job(index: int) -> str:
        layer = layers[index]
        if cache is not None:
            cached = cache.lookup(layer)
            if cached:
                debug(f"layer {layer.digest[:12]}: from the cache")
                return cached
        started = time.monotonic()
        if cache is not None and on_disk:
            part = fetch_layer(server, token, layer, directory, retries=retries, timeout=timeout,
                               part=cache.tmp_path(layer.digest), sources=sources)
            path = cache.admit(layer, part, verified=True)
        else:
            path = fetch_layer(server, token, layer, directory, retries=retries, timeout=timeout, sources=sources)
            if cache is not None:
                cache.admit(layer, path)
        debug(f"layer {layer.digest[:12]}: {layer.size} bytes in {time.monotonic() - started:.2f}s")
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
