"""The stream daemon: serves each streamed layer's network block device from HTTP Range requests, for the node's
whole life (``layerboot.fetch=stream``; stage1/stream.py starts it, docs/stage1.md "Streaming layers").

One device per layer, laid out as the data object zero-padded to whole 4 KiB blocks followed by its dm-verity
hash tree object, so dm-verity stacked on the device (by stage1, with the root hash from the signed manifest)
checks every block the node reads: this daemon is not trusted with integrity, only with fetching. The kernel's
nbd driver sends read requests over local socket pairs (nbd.py); each connection is one thread here that answers
them in order with bytes fetched from layerbootd (``GET /objects/...`` with ``Range:``, the node's credential,
a kept-alive connection), a mirror, or the node's cache disk:

* **Read-through cache** (with ``layerboot.cache=``): a sparse file per layer on the cache disk; a range already
  there (``SEEK_DATA``/``SEEK_HOLE``) is read from it, anything else is fetched and written into it, so the next
  boot reads it locally. It is checked like everything else, by dm-verity above: an altered block reads as EIO.
* **Chunks**: the device is fetched in aligned chunks (256 KiB), each once: the last 16 stay in memory (or in
  the cache file) for the next requests, which come in 4-128 KiB pieces and in no particular order.
* **The network going away** (a server restart, a blip, a moved mirror): every transient error (refused or reset
  connections, timeouts, 5xx, 429) is retried forever with a backoff up to 10 s, through every base URL in turn;
  the reading process waits meanwhile (like an NFS hard mount), and one line goes to the kernel log when the
  server is lost and one when it is back. ``giveup`` seconds (``layerboot.stream_giveup=``) turn a read that
  could not be fetched for that long into EIO instead. A refusal (401/403/404/410/416 from every base URL with
  every credential) is EIO at once. A 401 with the boot token (expired: ``server.boot_token_ttl``) switches to
  the node secret when the node claimed one.

stage1 forks it (stream.py); it renames itself ``@layerboot-stream`` (argv[0] starting with ``@``: systemd's
shutdown leaves such root-storage daemons alone), keeps only its own fds, ignores SIGTERM/SIGINT/SIGHUP, and has
oom_score_adj -1000. stage1's switch_root deletes the initramfs' files, so everything is imported and every file
it needs (the kernel log, the cache files, the stats file) is opened before it says ``ready``; server names are
resolved then too.
"""

from __future__ import annotations

import os
import time

from .http import HttpError, exchange, open_socket, parse_content_range, split_url
from .jsonlite import dumps
from .nbd import NBD_CMD_DISC, NBD_CMD_READ, NBD_REPLY_MAGIC, NBD_REQUEST_MAGIC, REPLY, REQUEST

BLOCK = 4096
CHUNK = 256 << 10          # fetched at once: a few squashfs blocks (128 KiB) per request, 64 dm-verity tree blocks
HELD = 16                  # chunks per device kept in memory when there is no cache file (4 MiB)
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
REFUSED = (403, 404, 410, 416)
EIO, EINVAL = 5, 22
SEEK_DATA, SEEK_HOLE = 3, 4
STATS_EVERY = 2.0


class Refused(Exception):
    """Every base URL refused the object with every credential: reads of it fail with EIO."""


class Log:
    """Lines for the kernel log (``/dev/kmsg``, opened before switch_root) and the stats file."""

    def __init__(self, kmsg: int) -> None:
        self.kmsg = kmsg

    def line(self, level: int, text: str) -> None:
        try:
            os.write(self.kmsg, f"<{level}>layerboot-stream: {text}\n".encode("utf-8", "replace"))
        except OSError:
            pass


class Origin:
    """Where the bytes come from: base URLs (the server, mirrors) and credentials, shared by every connection.

    Tracks whether the server is reachable, so a lost server is one log line and its return another.
    """

    def __init__(self, bases: list[str], credentials: list[str], addresses: dict[str, tuple[str, int]], log: Log,
                 *, giveup: float = 0.0, timeout: float = 10.0) -> None:
        import _thread

        self.bases, self.credentials, self.addresses = bases, credentials, addresses
        self.log, self.giveup, self.timeout = log, giveup, timeout
        self.lock = _thread.allocate_lock()
        self.credential = 0            # the credential in use (a 401 moves on to the next)
        self.base = 0                  # the base URL in use (an error moves on to the next)
        self.down_since = 0.0

    def failed(self, why: str) -> None:
        with self.lock:
            if not self.down_since:
                self.down_since = time.monotonic()
                self.log.line(4, f"server unreachable ({why}); reads that need the network wait and retry")
            self.base = (self.base + 1) % len(self.bases)

    def succeeded(self) -> None:
        if self.down_since:
            with self.lock:
                if self.down_since:
                    self.log.line(4, f"server back after {time.monotonic() - self.down_since:.0f} s "
                                     f"({self.bases[self.base]})")
                    self.down_since = 0.0

    def unauthorized(self, used: int) -> bool:
        """A 401 with credential ``used``: move on to the next one; False when there is none left."""
        with self.lock:
            if used + 1 < len(self.credentials) and self.credential == used:
                self.credential = used + 1
                self.log.line(4, "credential refused (401): using the next one (the node secret)")
            return self.credential > used


class Connection:
    """One kept-alive HTTP connection, owned by one worker thread."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.sock = None
        self.key: tuple[str, int] | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def fetch(self, path: str, size: int, start: int, view: memoryview) -> None:
        """Fill ``view`` with bytes ``start``... of the object at ``path`` (``size`` bytes); retries transient
        failures (see the module text); Refused when it cannot be had."""
        origin = self.origin
        attempt, refusals, first = 0, 0, time.monotonic()
        while True:
            base, credential = origin.base, origin.credential
            try:
                self._get(origin.bases[base], path, size, start, view, origin.credentials[credential]
                          if origin.credentials else "")
                origin.succeeded()
                return
            except HttpError as err:
                self.close()
                if err.status == 401 and origin.unauthorized(credential):
                    continue
                if err.status in REFUSED or err.status == 401:
                    refusals += 1
                    if refusals >= len(origin.bases):
                        raise Refused(str(err)) from None
                    with origin.lock:
                        origin.base = (base + 1) % len(origin.bases)
                    continue
                if attempt == 0 and err.status == 0 and self.key is not None:
                    attempt = 1            # a kept-alive connection the server had closed: once, at once
                    continue
                origin.failed(str(err))
                if origin.giveup and time.monotonic() - first > origin.giveup:
                    raise Refused(f"no answer for {origin.giveup:.0f} s (layerboot.stream_giveup=): {err}") \
                        from None
                time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
                attempt += 1

    def _get(self, base: str, path: str, size: int, start: int, view: memoryview, token: str) -> None:
        url = f"{base}/{path}"
        host, port, _ = split_url(url)
        key = self.origin.addresses.get(f"{host}:{port}", (host, port))
        if self.sock is None or self.key != key:
            self.close()
            self.sock = open_socket(key[0], key[1], self.origin.timeout)
            self.key = key
        end = start + len(view) - 1
        response = exchange(self.sock, "GET", url, token=token, headers={"Range": f"bytes={start}-{end}"},
                            keep_alive=True)
        if response.status != 206:
            raise HttpError(f"GET {url}: {response.status} {response.reason}"
                            + (" (the server ignores Range requests: cannot stream)" if response.status == 200
                               else ""), response.status or 502)
        first, last, total = parse_content_range(response.headers.get("content-range", ""), response.what)
        if (first, last) != (start, end) or total not in (None, size):
            raise HttpError(f"{response.what}: sent bytes {first}-{last}/{total} for bytes {start}-{end}/{size}",
                            502)
        filled = 0
        while filled < len(view):
            try:
                count = response.readinto(view[filled:])
            except OSError as err:
                raise HttpError(f"{response.what}: {err.strerror or err}") from None
            if not count:
                raise HttpError(f"{response.what}: the body ended after {filled} of {len(view)} bytes")
            filled += count
        if not response.reusable:
            self.close()


class Device:
    """One streamed layer: its device layout, the chunks held in memory or in the cache file, counters.

    The device is fetched in aligned chunks of ``chunk`` bytes (the kernel asks for 4-128 KiB at a time, in no
    particular order while a program starts): each chunk is fetched once, then read from the cache file when
    there is one, else from the last ``held`` chunks kept in memory (shared by the device's connections).
    """

    def __init__(self, spec: dict, log: Log, origin: Origin, *, chunk: int = CHUNK, held: int = HELD) -> None:
        import _thread

        self.digest = spec["digest"]
        self.size = spec["size"]                        # the layer's bytes
        self.data_end = -(-self.size // BLOCK) * BLOCK  # + zero padding to a whole block
        self.tree_size = spec["tree_size"]
        self.total = self.data_end + self.tree_size     # the device's size
        self.paths = (spec["path"], spec["tree_path"])
        self.cache = spec.get("cache_fd", -1)
        self.log, self.origin, self.chunk, self.held = log, origin, chunk, held
        self.memory: dict[int, bytearray] = {}          # chunk number -> bytes, oldest first
        self.lock = _thread.allocate_lock()
        self.fetched = self.requests = self.cached = self.errors = 0

    def regions(self, offset: int, length: int):  # noqa: ANN201 - yields (object, object offset, count, buffer offset)
        """Split a device range into pieces of the layer (0), its zero padding (-1) and its tree (1)."""
        end, done = offset + length, 0
        for kind, low, high in ((0, 0, self.size), (-1, self.size, self.data_end), (1, self.data_end, self.total)):
            if offset < high and end > low:
                first, last = max(offset, low), min(end, high)
                yield kind, first - low, last - first, first - offset
                done += last - first
        if done != length:
            raise ValueError(f"bytes {offset}-{end} are outside the device's {self.total}")

    def read(self, offset: int, length: int, http: "Connection") -> bytearray:
        """The device's bytes ``offset``..+``length``, fetching the chunks that are neither held nor cached."""
        if offset < 0 or length <= 0 or offset + length > self.total:
            raise ValueError(f"bytes {offset}+{length} are outside the device's {self.total}")
        self.requests += 1
        first, last = offset // self.chunk, (offset + length - 1) // self.chunk
        out = bytearray(length)
        missing: list[int] = []
        for number in range(first, last + 1):
            if not self._copy(number, offset, out):
                missing.append(number)
        while missing:                                  # contiguous runs of missing chunks: one fetch each
            run = 1
            while run < len(missing) and missing[run] == missing[0] + run:
                run += 1
            low = missing[0] * self.chunk
            data = bytearray(min((missing[0] + run) * self.chunk, self.total) - low)
            view = memoryview(data)
            for kind, at, count, into in self.regions(low, len(data)):
                if kind >= 0:
                    http.fetch(self.paths[kind], self.size if kind == 0 else self.tree_size, at,
                               view[into:into + count])
                    self.fetched += count
            self._keep(low, view)
            for index in range(run):
                piece = data[index * self.chunk:(index + 1) * self.chunk]
                self._hold(missing[index], piece)
                self._place(missing[index] * self.chunk, piece, offset, out)
            missing = missing[run:]
        return out

    def _copy(self, number: int, offset: int, out: bytearray) -> bool:
        """Put the part of chunk ``number`` that ``out`` (at ``offset``) needs into it, if held or cached."""
        with self.lock:
            piece = self.memory.pop(number, None)
            if piece is not None:
                self.memory[number] = piece             # most recently used last
        low = number * self.chunk
        if piece is None:
            size = min(self.chunk, self.total - low)
            if not self._cached(low, size):
                return False
            piece = bytearray(size)
            os.preadv(self.cache, [piece], low)
            self.cached += size
        self._place(low, piece, offset, out)
        return True

    @staticmethod
    def _place(low: int, piece: bytearray, offset: int, out: bytearray) -> None:
        start, end = max(low, offset), min(low + len(piece), offset + len(out))
        out[start - offset:end - offset] = piece[start - low:end - low]

    def _hold(self, number: int, piece: bytearray) -> None:
        if self.cache >= 0:                             # the cache file (and its page cache) holds it
            return
        with self.lock:
            self.memory[number] = piece
            while len(self.memory) > self.held:
                del self.memory[next(iter(self.memory))]

    def _cached(self, offset: int, length: int) -> bool:
        """Whether the cache file holds every byte of ``offset``+``length`` (written earlier: no holes)."""
        if self.cache < 0:
            return False
        try:
            return os.lseek(self.cache, offset, SEEK_DATA) == offset and \
                os.lseek(self.cache, offset, SEEK_HOLE) >= offset + length
        except OSError:                                 # ENXIO: nothing but holes from there on
            return False

    def _keep(self, offset: int, data: memoryview) -> None:
        if self.cache < 0:
            return
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(self.cache, data[written:], offset + written)
        except OSError as err:
            self.log.line(4, f"layer {self.digest[:12]}: the cache file cannot be written ({err.strerror}); "
                             "reading from the network only")
            self.cache = -1


class Worker:
    """Answers the kernel's requests on one connection of one device (a thread; its own HTTP connection)."""

    def __init__(self, device: Device, sock: int) -> None:
        import _socket

        self.device = device
        self.sock = _socket.socket(fileno=sock)
        self.sock.setblocking(True)
        self.http = Connection(device.origin)

    def run(self) -> None:
        header = bytearray(REQUEST.size)
        while True:
            if not self._recv_into(memoryview(header)):
                return
            magic, _, command, handle, offset, length = REQUEST.unpack(header)
            if magic != NBD_REQUEST_MAGIC or command == NBD_CMD_DISC:
                return
            if command != NBD_CMD_READ:
                self.sock.sendall(REPLY.pack(NBD_REPLY_MAGIC, EINVAL, handle))
                continue
            try:
                data = self.device.read(offset, length, self.http)
            except Exception as err:  # noqa: BLE001 - a failed read is EIO for that read, never a dead device
                self.device.errors += 1
                self.device.log.line(3, f"layer {self.device.digest[:12]}: bytes {offset}+{length} not read: "
                                        f"{err} (the reading process gets EIO)")
                self.sock.sendall(REPLY.pack(NBD_REPLY_MAGIC, EIO, handle))
                continue
            self.sock.sendall(REPLY.pack(NBD_REPLY_MAGIC, 0, handle))
            self.sock.sendall(data)

    def _recv_into(self, view: memoryview) -> bool:
        got = 0
        while got < len(view):
            count = self.sock.recv_into(view[got:])
            if not count:
                return False
            got += count
        return True


def _stats(fd: int, devices: list[Device], origin: Origin) -> None:
    last = None
    while True:
        time.sleep(STATS_EVERY)
        document = {"server_down_since": round(origin.down_since, 1) if origin.down_since else None,
                    "devices": [{"digest": d.digest, "fetched_bytes": d.fetched, "cache_bytes": d.cached,
                                 "requests": d.requests, "errors": d.errors} for d in devices]}
        text = dumps(document, sort_keys=True) + "\n"
        if text != last:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, text.encode(), 0)
            except OSError:
                pass
            last = text


def resolve(bases: list[str]) -> dict[str, tuple[str, int]]:
    """Each base URL's host:port -> (address, port), looked up now: no resolver files after switch_root."""
    import _socket

    found = {}
    for base in bases:
        host, port, _ = split_url(base)
        try:
            _socket.inet_pton(_socket.AF_INET6 if ":" in host else _socket.AF_INET, host)
            continue
        except OSError:
            pass
        try:
            info = _socket.getaddrinfo(host.encode("ascii"), port, 0, _socket.SOCK_STREAM)[0][4]
            found[f"{host}:{port}"] = (info[0], info[1])
        except (OSError, UnicodeError):
            pass
    return found


def serve(config: dict) -> list:  # noqa: ANN201 - the started workers
    """Start a worker thread per connection of every device (and the stats writer); returns at once."""
    import _thread

    log = Log(config["kmsg_fd"])
    origin = Origin(config["bases"], config["credentials"], resolve(config["bases"]), log,
                    giveup=float(config.get("giveup", 0)), timeout=float(config.get("timeout", 10)))
    devices, workers = [], []
    for spec in config["devices"]:
        device = Device(spec, log, origin, chunk=int(config.get("chunk", CHUNK)))
        devices.append(device)
        for fd in spec["fds"]:
            worker = Worker(device, fd)
            workers.append(worker)
            _thread.start_new_thread(_guarded, (worker, log))
    if config.get("stats_fd", -1) >= 0:
        _thread.start_new_thread(_stats, (config["stats_fd"], devices, origin))
    return workers


def _guarded(worker: Worker, log: Log) -> None:
    try:
        worker.run()
    except BaseException as err:  # noqa: BLE001 - one line in the kernel log, never a traceback on the console
        log.line(3, f"layer {worker.device.digest[:12]}: connection stopped: {type(err).__name__}: {err}")


def rename(name: str) -> None:
    """Make ``/proc/PID/cmdline`` read ``name`` (and ``comm`` its first 15 bytes): the process' own argv memory is
    overwritten through /proc/self/mem, zero-padded to its end, so a forked daemon carries the ``@`` that
    systemd's shutdown looks for without exec'ing a new program. Best effort: a kernel that refuses leaves the
    old name."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])   # arg_start and arg_end: fields 48 and 49 of stat(5)
        text = name.encode("utf-8")[:max(0, end - start - 1)]
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(text + bytes(end - start - len(text)))
        with open("/proc/self/comm", "wb", buffering=0) as comm:
            comm.write(name.lstrip("@").encode("utf-8")[:15])
    except (OSError, IndexError, ValueError):
        pass


def _only(keep: set[int]) -> None:
    """Close every fd but ``keep`` and 2 (the console: a fatal error still shows); 0 and 1 become /dev/null."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1):
        os.dup2(null, fd)
    os.close(null)


def run_forked(config: dict, keep: list[int], ready: int, *, name: str) -> None:
    """The daemon's life, in the child stage1 forked (stream.py): own session, only its own fds, named ``name``
    (``@layerboot-stream``), SIGTERM/SIGINT/SIGHUP ignored, never chosen by the OOM killer; ``ready`` (or
    ``error: ...``) is written to the fd ``ready`` once every connection is served. Never returns."""
    import _signal

    try:
        os.setsid()
        _only(set(keep))
        rename(name)
        for signal in ("SIGTERM", "SIGINT", "SIGHUP"):
            _signal.signal(getattr(_signal, signal), _signal.SIG_IGN)
        try:
            with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
                f.write("-1000")
        except OSError:
            pass
        serve(config)
    except Exception as err:  # noqa: BLE001 - one line for stage1, which reports it; never a traceback
        os.write(ready, f"error: {type(err).__name__}: {err}\n".encode("utf-8", "replace"))
        os._exit(1)
    os.write(ready, b"ready\n")
    os.close(ready)
    while True:
        time.sleep(3600)
