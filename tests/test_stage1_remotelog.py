"""stage1's boot messages to the log server (initrd/stage1/remotelog.py) against real sockets on loopback.

The whole path (node namespace -> the server's rsyslog -> NODE/layerboot/stage1.log) runs in
tests/test_services_daemons.py; the QEMU boot in tests/test_site_qemu.py.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from layerboot.initrd.stage1 import console, remotelog
from layerboot.initrd.stage1.cmdline import CmdlineError, parse_cmdline

RFC5424 = re.compile(rb'^<(\d+)>1 - (\S+) layerboot-stage1 1 - \[meta sequenceId="(\d+)" sysUpTime="(\d+)"\] (.*)$')


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    remotelog._pending.clear()
    remotelog._sink, remotelog._done, remotelog._sequence = None, False, 0
    yield
    remotelog.close()
    remotelog._pending.clear()
    remotelog._sink, remotelog._done, remotelog._sequence = None, False, 0


def test_message_format() -> None:
    message = remotelog.format_message(3, "FAILED: layers: x", hostname="n1", uptime=3.217, sequence=7)
    assert message == b'<27>1 - n1 layerboot-stage1 1 - [meta sequenceId="7" sysUpTime="321"] FAILED: layers: x'
    assert remotelog.format_message(5, "x", hostname="bad host").startswith(b"<29>1 - - layerboot-stage1")
    assert len(remotelog.format_message(5, "y" * 5000)) == remotelog.MAX_BYTES


def test_targets() -> None:
    assert remotelog.parse_target("", ["10.0.0.1", "10.0.0.2"]) == ("udp", "10.0.0.1", 514)
    assert remotelog.parse_target("", []) is None
    assert remotelog.parse_target("off", ["10.0.0.1"]) is None
    assert remotelog.parse_target("10.0.0.5:1514", []) == ("udp", "10.0.0.5", 1514)
    assert remotelog.parse_target("tcp://[fd00::1]:6514", []) == ("tcp", "fd00::1", 6514)
    assert remotelog.parse_target("tcp://[fd00::1]", []) == ("tcp", "fd00::1", 514)


def test_the_kernel_option_is_checked() -> None:
    assert parse_cmdline("layerboot.syslog=tcp://10.0.0.5:6514").syslog == "tcp://10.0.0.5:6514"
    assert parse_cmdline("layerboot.syslog=[fd00::1]").syslog == "[fd00::1]"
    assert parse_cmdline("layerboot.syslog=off").syslog == "off"
    for bad in ("logs.example.org", "tls://10.0.0.5", "10.0.0.5:99999", "fd00::1", "[fd00::1]x"):
        with pytest.raises(CmdlineError, match="layerboot.syslog="):
            parse_cmdline(f"layerboot.syslog={bad}")


def test_lines_said_before_the_network_go_first_over_udp() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    port = receiver.getsockname()[1]
    console.say("drivers: virtio_net")
    console.error("net: no DHCP answer on eth0")
    assert remotelog.start(f"127.0.0.1:{port}", [], hostname="n1") == \
        f"boot messages go to the log server udp://127.0.0.1:{port}"
    console.say("manifest: profile web generation 3")
    got = [RFC5424.match(receiver.recv(4096)) for _ in range(3)]
    assert [m.group(5) for m in got] == [b"drivers: virtio_net", b"FAILED: net: no DHCP answer on eth0",
                                         b"manifest: profile web generation 3"]
    assert [int(m.group(1)) for m in got] == [29, 27, 29]                  # daemon.notice, daemon.err
    assert [int(m.group(3)) for m in got] == [1, 2, 3]                     # sequence: the order they were said
    assert int(got[0].group(4)) <= int(got[2].group(4))                    # sysUpTime: when they were said
    receiver.close()


def test_tcp_frames_and_a_server_that_goes_away(capfd: pytest.CaptureFixture[str]) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    console.say("before")
    assert remotelog.start(f"tcp://127.0.0.1:{port}", [], hostname="").startswith("boot messages go to")
    connection, _ = listener.accept()
    console.say("after")
    remotelog.close()
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    frames = []
    while data:                                    # RFC 6587 octet counting: "LENGTH SP MESSAGE"
        length, _, rest = data.partition(b" ")
        frames.append(rest[:int(length)])
        data = rest[int(length):]
    assert [RFC5424.match(f).group(5) for f in frames] == [b"before", b"after"]
    connection.close()
    listener.close()

    # a server that refuses: one console line, nothing kept, the boot goes on
    capfd.readouterr()
    remotelog._done = False
    assert "boot messages not sent to tcp://127.0.0.1:" in remotelog.start(f"tcp://127.0.0.1:{port}", [])
    console.say("still booting")
    assert remotelog._pending == [] and "still booting" in capfd.readouterr().err


def test_no_log_server_keeps_nothing() -> None:
    console.say("x")
    assert remotelog.start("", []) == ""
    console.say("y")
    assert remotelog._pending == []
    remotelog._done = False
    for i in range(remotelog.MAX_PENDING + 10):
        remotelog.record("say", str(i))
    assert len(remotelog._pending) == remotelog.MAX_PENDING          # bounded before the network is up
