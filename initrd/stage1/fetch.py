"""Download the manifest's layers in parallel, hashing while streaming, resuming with HTTP Range on retries.

Each layer goes to ``<dir>/<digest>.part`` (or the path the caller names, e.g. on the cache disk) and is
renamed to its final name only when its size and sha256 match the signed manifest; nothing is loop-mounted
before that, and any failure removes the partial file. The per-byte path is ``recv_into`` into reused 1 MiB
buffers, ``os.write`` from them, and SHA-256 from them on a second thread when the node has two CPUs
(hashing.py). Threads come from ``_thread`` directly (``threading`` costs a dozen imports). With
``layerboot.cache=`` a LayerCache (initrd/stage1/cache.py) is asked first and given each verified layer. The
signed manifest's mirrors come before the origin (sources.py decides the order; a mirror that fails or sends
wrong bytes is dropped and the next source takes over).

``layerboot.verify=blocks`` (docs/stage1.md, "Verifying whole layers"): a layer the signed manifest gives a
dm-verity tree, served by the origin only, is received and written without SHA-256 (its size is still
enforced); its tree (1/128 of it) is fetched and hashed, and the layer is attached through dm-verity
(localverity.py) with the signed root: the kernel checks each block as it is read, the one-block read at
attach refuses a wrong root. Layers without a tree, or that a mirror may serve, are hashed whole as before.
"""

from __future__ import annotations

import os
import time

from .console import StageError, debug
from .http import HttpError, parse_content_range, request
from .verify import Layer

PARALLEL = 4
ENOSPC = 28
BLOCK = 4096


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
                timeout: float = 10.0, part: str | None = None, sources=None,  # noqa: ANN001
                hashing: bool = True) -> str:
    """Return the path of the verified layer file; raise FetchError with one clear line.

    The download goes to ``part`` (default ``<directory>/<digest>.part``) and is renamed to
    ``<directory>/<digest>`` once verified; on any failure nothing is left behind. With ``sources``
    (sources.Sources) it tries the base URLs :meth:`~sources.Sources.for_layer` names, in order: a mirror gets
    one try, and on an error the download resumes (Range) from the next source at once; a wrong size or hash
    starts it over from the next source. The origin (last, ``server`` without ``sources``) gets ``retries``.
    Without ``hashing`` (``layerboot.verify=blocks``: dm-verity checks the bytes later) only the size is
    checked; the caller then passes no mirrors.
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
        with HashSink(fd, hashing=hashing) as sink:
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
                size, digest = sink.size, sink.hexdigest() or layer.digest
                if (size, digest) == (layer.size, layer.digest) or origin:
                    break
                for bad in contributors:
                    sources.failed(bad, f"sent layer {layer.digest[:12]} with {size} bytes and sha256 {digest[:12]}, "
                                        "not the signed ones")
                contributors = []
                sink.restart()
            size, digest = sink.size, sink.hexdigest() or layer.digest   # not hashed: the size alone
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


def _blocks_layer(layer: Layer, directory: str, fetch, fetch_tree, cache) -> str:  # noqa: ANN001
    """``layerboot.verify=blocks`` for one layer: the download without SHA-256, its tree checked against the
    signed digest, both attached through dm-verity; returns ``/dev/dm-N``."""
    from .localverity import LocalVerityError, attach, tree_path

    if cache is not None:
        from .cache import CacheError

        part = fetch(layer, part=cache.tmp_path(layer.digest), hashing=False)
        try:
            return cache.admit_unhashed(layer, part, fetch_tree)
        except CacheError as err:
            raise FetchError(str(err)) from None
    path = fetch(layer, hashing=False)
    tree = tree_path(path)
    verity = layer.verity
    try:
        fetch_tree(Layer(verity.tree, verity.tree_size, verity.tree_path), tree + ".part")
        os.rename(tree + ".part", tree)
        return attach(path, tree, layer.size, verity.root, verity.tree_size,
                      name=f"layerboot-full-{layer.digest[:16]}")
    except (LocalVerityError, StageError) as err:
        for leftover in (path, tree, tree + ".part"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        raise FetchError(f"layer {layer.digest[:12]}: {err}") from None


def blocks_capable(layer: Layer, sources) -> bool:  # noqa: ANN001 - sources.Sources | None
    """Whether ``layerboot.verify=blocks`` applies to ``layer``: the signed manifest names its tree, the layer
    is whole 4 KiB blocks (a loop device cannot pad), and only the origin serves it (bytes from a mirror are
    hashed whole, so a mirror sending wrong bytes is still caught and dropped at fetch time)."""
    if layer.verity is None or layer.size % BLOCK or not layer.size:
        return False
    return sources is None or sources.for_layer(layer) == [sources.origin]


def fetch_layers(server: str, token: str, layers: tuple[Layer, ...], directory: str, *, retries: int = 4,
                 timeout: float = 10.0, cache=None, on_disk: bool = True,
                 sources=None, verify: str = "whole", online: bool = True) -> list[str]:  # noqa: ANN001
    """Fetch (or take from ``cache``) every layer; return what to mount, base first: verified files, or
    dm-verity devices (``/dev/dm-N``) for cached layers checked through their trees and ``verify="blocks"``.

    With a cache and ``on_disk`` (``layerboot.layers=cache``, the default with a cache) a layer is downloaded
    straight onto the cache filesystem and renamed in: no copy in RAM. Without ``on_disk`` it is downloaded
    into ``directory`` (RAM) and booted from there, and the cache gets a copy for the next boot. ``sources``
    (sources.Sources) adds the signed manifest's mirrors in front of ``server``. ``online`` False (the server
    is unreachable: a cached boot) fetches no missing dm-verity trees of cached layers.
    """
    import _thread

    from .console import say

    os.makedirs(directory, exist_ok=True)
    blocks = verify == "blocks" and (cache is None or on_disk)
    if blocks:
        from .localverity import VerityUnavailable, load_modules

        try:
            load_modules()
        except VerityUnavailable as err:
            say(f"layerboot.verify=blocks: {err}; hashing every layer whole")
            blocks = False
    elif verify == "blocks":
        say("layerboot.verify=blocks: the cache copy of layerboot.layers=ram is hashed anyway; hashing whole")
    counts = {"blocks": 0, "whole": 0, "mirrored": 0}
    counting = _thread.allocate_lock()

    def fetch(layer: Layer, **kwargs) -> str:  # noqa: ANN003
        return fetch_layer(server, token, layer, directory, retries=retries, timeout=timeout,
                           sources=None if kwargs.get("hashing") is False else sources, **kwargs)

    def fetch_tree(tree: Layer, dest: str) -> None:
        fetch_layer(server, token, tree, os.path.dirname(dest), retries=retries if online else 0,
                    timeout=timeout, part=dest, sources=sources)

    def job(index: int) -> str:
        layer = layers[index]
        if cache is not None:
            cached = cache.lookup(layer, fetch_tree if online else None)
            if cached:
                debug(f"layer {layer.digest[:12]}: from the cache" + (" through dm-verity"
                                                                       if cached.startswith("/dev/") else ""))
                return cached
        started = time.monotonic()
        if blocks and blocks_capable(layer, sources):
            path = _blocks_layer(layer, directory, fetch, fetch_tree, cache if on_disk else None)
            with counting:
                counts["blocks"] += 1
        elif cache is not None and on_disk:
            part = fetch(layer, part=cache.tmp_path(layer.digest))
            path = cache.admit(layer, part, verified=True, fetch_tree=fetch_tree)
        else:
            path = fetch(layer)
            if cache is not None:
                cache.admit(layer, path, fetch_tree=fetch_tree)
        if blocks and not path.startswith("/dev/"):
            with counting:
                counts["mirrored" if layer.verity is not None and layer.size % BLOCK == 0 else "whole"] += 1
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
    if blocks and (counts["blocks"] or counts["whole"] or counts["mirrored"]):
        say(f"layerboot.verify=blocks: {counts['blocks']} layers downloaded without hashing and attached through "
            f"dm-verity (every block checked as it is read), {counts['whole']} without a tree and "
            f"{counts['mirrored']} a mirror may serve hashed whole")
    if cache is not None and getattr(cache, "attached", 0):
        say(f"cache: {cache.attached} cached layers attached through dm-verity (signed root hashes, every block "
            "checked as it is read), nothing re-hashed for them")
    return [path for path in batch.results if path is not None]
