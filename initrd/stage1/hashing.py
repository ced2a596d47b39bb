"""SHA-256 on stage1's per-byte path: the fastest engine in the image, on a second thread when that overlaps.

Chosen by measurement (bench/README.md, "Where the time goes"; ``bench/bench_fetch.py --guest`` repeats it):

* OpenSSL's SHA-256 through ``_hashlib`` (build/initrd.py ships it with libcrypto) is the fastest engine
  everywhere we measured: with SHA extensions it runs at the CPU's SHA-NI speed (about 1.7 GB/s on the CI
  host against 0.3 GB/s for Python's built-in ``_sha256``); under QEMU TCG, whose CPU models have no SHA
  extensions, its scalar assembly is still about 1.8x ``_sha256``, and ``import _hashlib`` costs ~0.05 s.
* The kernel's SHA-256 through AF_ALG (no libcrypto needed) was slower under TCG than both (the generic C
  driver; with ``-cpu max`` the AVX2 driver, which TCG emulates slowly), and splicing pages into it did not
  help; it is not used.
* ``_sha256`` (always built into CPython) remains the fallback when ``_hashlib`` is not in the image.

OpenSSL releases the GIL while it hashes (updates of 2 KiB and more), so on a node with two or more CPUs a
:class:`HashSink` hashes on its own thread over a ring of buffers while the caller receives the next one;
with one CPU, or with ``_sha256`` (which holds the GIL), it hashes inline. Data moves through reused
``bytearray`` buffers only: ``recv_into`` / ``readv`` into them, ``os.write`` and the hash straight from them.
Nothing here runs at import time.
"""

from __future__ import annotations

import os

BUFFER = 1 << 20        # one receive/write/hash unit: large enough that per-call costs vanish under TCG
RING = 4                # buffers in flight when hashing on a second thread
_engine: tuple = ()


def engine() -> tuple[str, object]:
    """(name, constructor) of the SHA-256 used for layers: ``openssl`` when shipped, else ``python``."""
    global _engine
    if not _engine:
        try:
            from _hashlib import openssl_sha256
            _engine = ("openssl", openssl_sha256)
        except ImportError:   # an image without libcrypto (e.g. another initramfs builder)
            from _sha256 import sha256
            _engine = ("python", sha256)
    return _engine


def sha256():  # noqa: ANN201 - a hash object (update/hexdigest)
    return engine()[1]()


def overlapping() -> bool:
    """Whether a hashing thread can run beside the receiving one: OpenSSL (drops the GIL) and a second CPU."""
    return engine()[0] == "openssl" and (os.cpu_count() or 1) > 1


def write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


class HashSink:
    """Bytes placed in :meth:`buffer` and committed with :meth:`push` are written to ``fd`` (if any) and hashed,
    in order. ``size`` counts the bytes pushed; :meth:`hexdigest` waits for the hash of all of them.

    Threaded (the default when :func:`overlapping`): ``RING`` buffers circulate between the caller, which
    fills and writes them, and a hashing thread; each slot has a ``free`` lock (held while the caller owns it)
    and a ``full`` lock (released when it is ready to hash), so no queue or threading module is needed.
    Always :meth:`close` it (it stops the thread); a sink is not shared between callers.
    """

    def __init__(self, fd: int | None = None, *, threaded: bool | None = None, size: int = BUFFER,
                 hashing: bool = True) -> None:
        self.fd = fd
        self.size = 0
        self.hashing = hashing            # False: receive and write only (layerboot.verify=blocks, fetch.py)
        self.hasher = sha256() if hashing else None
        self.threaded = (overlapping() if threaded is None else threaded) and hashing
        count = RING if self.threaded else 1
        self._buffers = [memoryview(bytearray(size)) for _ in range(count)]
        self._index = 0
        self._held = False
        self._error: BaseException | None = None
        if self.threaded:
            import _thread

            self._free = [_thread.allocate_lock() for _ in range(count)]
            self._full = [_thread.allocate_lock() for _ in range(count)]
            for lock in self._full:
                lock.acquire()
            self._lengths = [0] * count
            self._stopped = _thread.allocate_lock()
            self._stopped.acquire()
            _thread.start_new_thread(self._hash_loop, ())

    # -- the hashing thread ---------------------------------------------------------------------------------
    def _hash_loop(self) -> None:
        index, count = 0, len(self._buffers)
        while True:
            self._full[index].acquire()
            length = self._lengths[index]
            if length < 0:
                self._stopped.release()
                return
            if self._error is None:
                try:
                    self.hasher.update(self._buffers[index][:length])
                except BaseException as err:  # noqa: BLE001 - reported to the caller by hexdigest()
                    self._error = err
            self._free[index].release()
            index = (index + 1) % count

    # -- the caller's side ------------------------------------------------------------------------------------
    def buffer(self) -> memoryview:
        """The buffer to fill next (the same one again until it is pushed)."""
        if self.threaded and not self._held:
            self._free[self._index].acquire()      # wait until the thread has hashed what it held last time
        self._held = True
        return self._buffers[self._index]

    def push(self, length: int) -> None:
        """Write (when there is an ``fd``) and hash the first ``length`` bytes of :meth:`buffer`."""
        if not self._held:
            raise RuntimeError("push() without buffer()")
        view = self._buffers[self._index][:length]
        if self.fd is not None and length:
            write_all(self.fd, view)
        self.size += length
        self._held = False
        if not self.threaded:
            if self.hashing:
                self.hasher.update(view)
            return
        self._lengths[self._index] = length
        self._full[self._index].release()
        self._index = (self._index + 1) % len(self._buffers)

    def _drain(self) -> None:
        """Wait until the thread has hashed everything pushed."""
        if not self.threaded:
            return
        if self._held:                              # an unfilled buffer: give it back unused
            self._held = False
            self._free[self._index].release()
        for lock in self._free:
            lock.acquire()
        for lock in self._free:
            lock.release()

    def restart(self) -> None:
        """Forget everything pushed: the file is truncated and the hash starts over (a server ignored Range)."""
        self._drain()
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
        self.hasher, self.size, self._error = sha256() if self.hashing else None, 0, None

    def hexdigest(self) -> str:
        """The sha256 of everything pushed ("" for a sink that does not hash)."""
        self._drain()
        if self._error is not None:
            raise self._error
        return self.hasher.hexdigest() if self.hashing else ""

    def close(self) -> None:
        """Stop the hashing thread (idempotent)."""
        if not self.threaded or self._stopped is None:
            return
        self._drain()
        index = self._index
        self._free[index].acquire()
        self._lengths[index] = -1
        self._full[index].release()
        self._stopped.acquire()
        self._stopped = None

    def __enter__(self) -> "HashSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hash_file(path: str, copy_to: int | None = None) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read with ``readv`` into the sink's buffers; copied to ``copy_to`` too."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with HashSink(copy_to) as sink:
            while True:
                view = sink.buffer()
                count = os.readv(fd, [view])
                if not count:
                    break
                sink.push(count)
            return sink.hexdigest(), sink.size
    finally:
        os.close(fd)
