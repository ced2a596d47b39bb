"""The supervisor behind `layerboot pxe`, on stand-in children (sh): restart, back-off, clean stop, and a first
start that dies at once reported as one error instead of a restart loop."""

from __future__ import annotations

import os
import threading
import time

import pytest

from layerboot.errors import LayerbootError
from layerboot.server.dnsmasq import Supervisor


def run_in_thread(supervisor: Supervisor) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def body() -> None:
        try:
            outcome["status"] = supervisor.run()
        except LayerbootError as err:
            outcome["error"] = err
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def wait(predicate, timeout: float = 10.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.05)
    return predicate()


def test_first_start_that_dies_at_once_is_an_error_not_a_loop() -> None:
    supervisor = Supervisor(["sh", "-c", "echo 'failed to bind DHCP server socket: Address in use' >&2; exit 2"],
                            on_line=lambda line: None)
    with pytest.raises(LayerbootError, match="did not start .status 2.: failed to bind DHCP server socket"):
        supervisor.run()
    assert supervisor.starts == 1


def test_a_child_that_dies_later_is_restarted_with_its_output_passed_on() -> None:
    lines: list[str] = []
    supervisor = Supervisor(["sh", "-c", "echo up $$; sleep 0.6; exit 3"], on_line=lines.append,
                            first_delay=0.1, startup_grace=0.3)
    thread, outcome = run_in_thread(supervisor)
    assert wait(lambda: supervisor.starts >= 3, 15)
    supervisor.stop()
    thread.join(10)
    assert not thread.is_alive() and "error" not in outcome
    pids = {line.split()[1] for line in lines if line.startswith("up ")}
    assert len(pids) >= 2          # really new processes, each one's output forwarded


def test_stop_terminates_the_child_promptly() -> None:
    lines: list[str] = []
    supervisor = Supervisor(["sh", "-c", "echo up $$; exec sleep 100"], on_line=lines.append)
    thread, outcome = run_in_thread(supervisor)
    assert wait(lambda: any(line.startswith("up ") for line in lines))
    pid = int(lines[0].split()[1])
    started = time.monotonic()
    supervisor.stop()
    thread.join(10)
    assert outcome == {"status": 0}
    assert time.monotonic() - started < 3
    assert not os.path.exists(f"/proc/{pid}")
    assert supervisor.starts == 1
