"""stage1's console lines to the site's log server, once the network is up.

Every line stage1 prints (console.say/error/debug) is also a syslog message: RFC 5424, APP-NAME
``layerboot-stage1`` (the server's rsyslog files it as NODE/layerboot/stage1.log), PROCID 1, the registered
``meta`` SD-ID with ``sequenceId`` and ``sysUpTime`` (hundredths of a second since the kernel started, so lines
keep their order and timing), TIMESTAMP ``-`` (the node's clock is not set yet: the server stamps it). Lines
said before the network was up are kept (at most MAX_PENDING) and sent first, so the modules stage and a failed
DHCP attempt reach the server too.

Where to: ``layerboot.syslog=`` (cmdline.py) — ``off``, ``ADDRESS[:PORT]``, ``udp://ADDRESS[:PORT]`` or
``tcp://ADDRESS[:PORT]``; by default the first log server of the DHCP answer (option 7), over UDP port 514
(RFC 5426: one message per datagram). TCP uses RFC 6587 octet counting; its connect and each send may take
SEND_TIMEOUT at most, and a server that does not take a line ends the forwarding (with one console line):
logging never holds up or fails a boot.

Nothing is imported here at import time and only ``_socket`` (already loaded by the net stage) later: the
stdlib's ``logging.handlers.SysLogHandler`` would bring logging, socket, threading & co. into the image and
the boot (measured in bench/bench_remotelog.py).
"""

from __future__ import annotations

APP_NAME = "layerboot-stage1"
FACILITY = 3                     # daemon
MAX_PENDING = 256                # lines kept until the network is up
MAX_BYTES = 2048                 # per message (RFC 5426: receivers SHOULD take 2048 octets)
DEFAULT_PORT = 514
SEND_TIMEOUT = 0.5               # seconds, TCP connect and each send
SEVERITY = {"error": 3, "say": 5, "debug": 7}

_pending: list[tuple[int, str, float]] = []
_sink = None
_sequence = 0
_done = False                    # forwarding ended (no log server, or it stopped taking lines): keep nothing


def _uptime() -> float:
    import time

    return time.clock_gettime(time.CLOCK_BOOTTIME)


def record(kind: str, text: str) -> str:
    """A console line (``kind`` error, say or debug): sent when a sink is open, else kept for it. Returns a line
    for the console (not to be recorded) when the log server stopped taking lines, else ""."""
    severity = SEVERITY.get(kind, 6)
    if _sink is not None:
        return _sink.send(severity, text, _uptime())
    if not _done and len(_pending) < MAX_PENDING:
        _pending.append((severity, text, _uptime()))
    return ""


def format_message(severity: int, text: str, *, hostname: str = "", uptime: float = 0.0, sequence: int = 1) -> bytes:
    """One RFC 5424 message (no trailing newline; the transport frames it)."""
    host = hostname if hostname and hostname.isascii() and hostname.isprintable() and " " not in hostname else "-"
    head = (f"<{FACILITY * 8 + severity}>1 - {host[:255]} {APP_NAME} 1 - "
            f'[meta sequenceId="{sequence}" sysUpTime="{int(uptime * 100)}"] ')
    return (head + text).encode("utf-8", "replace")[:MAX_BYTES]


def parse_target(spec: str, log_servers: list[str] | tuple[str, ...]) -> tuple[str, str, int] | None:
    """(protocol, address, port) for ``layerboot.syslog=`` (already checked by cmdline.py), or from DHCP."""
    if spec == "off":
        return None
    if not spec:
        return ("udp", log_servers[0], DEFAULT_PORT) if log_servers else None
    protocol, sep, rest = spec.partition("://")
    if not sep:
        protocol, rest = "udp", spec
    if rest.startswith("["):
        address, _, port = rest[1:].partition("]")
        port = port[1:]
    elif rest.count(":") == 1:
        address, _, port = rest.partition(":")
    else:
        address, port = rest, ""
    return protocol, address, int(port) if port else DEFAULT_PORT


class _Sink:
    def __init__(self, sock, protocol: str, hostname: str) -> None:  # noqa: ANN001
        self.sock, self.tcp, self.hostname = sock, protocol == "tcp", hostname

    def send(self, severity: int, text: str, uptime: float) -> str:
        global _sequence
        _sequence += 1
        message = format_message(severity, text, hostname=self.hostname, uptime=uptime, sequence=_sequence)
        try:
            if self.tcp:
                self.sock.sendall(b"%d %s" % (len(message), message))
            else:
                self.sock.send(message)
        except ConnectionRefusedError:
            if not self.tcp:     # UDP: an ICMP port unreachable for an earlier datagram; the next may arrive
                return ""
            return self._stop("connection refused")
        except OSError as err:
            return self._stop(err.strerror or str(err))
        return ""

    def _stop(self, why: str) -> str:
        global _sink, _done
        _sink, _done = None, True
        self.close()
        return f"boot messages to the log server stopped: {why}"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def start(spec: str, log_servers: list[str] | tuple[str, ...], *, hostname: str = "") -> str:
    """Open the sink after the net stage and send what was said so far; returns a line for the console ("" when
    there is no log server)."""
    global _sink, _done
    target = parse_target(spec, log_servers)
    if target is None:
        _pending.clear()
        _done = True
        return ""
    import _socket

    protocol, address, port = target
    family = _socket.AF_INET6 if ":" in address else _socket.AF_INET
    kind = _socket.SOCK_STREAM if protocol == "tcp" else _socket.SOCK_DGRAM
    sock = _socket.socket(family, kind, 0)
    sock.settimeout(SEND_TIMEOUT)
    shown = f"[{address}]:{port}" if family == _socket.AF_INET6 else f"{address}:{port}"
    try:
        sock.connect((address, port))
    except OSError as err:
        sock.close()
        _pending.clear()
        _done = True
        return f"boot messages not sent to {protocol}://{shown}: {err.strerror or err}"
    _sink = _Sink(sock, protocol, hostname)
    pending = list(_pending)
    _pending.clear()
    for severity, text, uptime in pending:
        if _sink is None:
            break
        _sink.send(severity, text, uptime)
    if _sink is None:
        return f"boot messages to the log server {protocol}://{shown} failed"
    return f"boot messages go to the log server {protocol}://{shown}"


def close() -> None:
    """Before switch_root: the socket is not inherited by init anyway (CLOEXEC), but a TCP stream is ended cleanly."""
    global _sink, _done
    if _sink is not None:
        _sink.close()
    _sink, _done = None, True
