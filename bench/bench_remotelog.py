#!/usr/bin/env python3
"""stage1's boot messages to the log server: its own sender (initrd/stage1/remotelog.py) against the stdlib's
``logging.handlers.SysLogHandler``, in one run.

    python3 bench/bench_remotelog.py [--runs 7] [--lines 40]

Each run is a fresh Debian ``python3.11 -S -I`` (the interpreter stage1's image ships) that imports the sender
from byte-compiled modules, as at boot, opens it towards a UDP receiver on 127.0.0.1 and sends ``--lines``
console lines. Printed: the median wall time of import + setup + sending, the modules each way adds to what
stage1 has already loaded (those would go into the image and be imported at every boot), and the ratio.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import socket
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from layerboot.build.initrd import PYTHON  # noqa: E402
from layerboot.run import run  # noqa: E402

PROBE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import stage1.main, stage1.net, stage1.fetch, stage1.http    # what a boot has loaded by the net stage
before = set(sys.modules)
port, lines, way = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
started = time.perf_counter()
if way == "stage1":
    from stage1 import remotelog
    remotelog.start(f"127.0.0.1:{port}", [], hostname="n1")
    for i in range(lines):
        remotelog.record("say", f"console line {i} of the boot")
else:
    import logging, logging.handlers
    handler = logging.handlers.SysLogHandler(address=("127.0.0.1", port))
    handler.ident = "layerboot-stage1: "
    log = logging.getLogger("stage1")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    for i in range(lines):
        log.info("console line %d of the boot", i)
elapsed = time.perf_counter() - started
print(repr((elapsed, sorted(set(sys.modules) - before))))
"""


def compiled_tree(work: Path) -> Path:
    """stage1 as source next to its .pyc (compiled once, so every run imports bytecode as the image does)."""
    tree = work / "tree"
    shutil.copytree(ROOT / "initrd" / "stage1", tree / "stage1")
    run([PYTHON, "-m", "compileall", "-q", str(tree)])
    run([PYTHON, "-c", "import logging.handlers"])        # the stdlib's own .pyc exist (Debian ships them)
    return tree


def one_run(tree: Path, way: str, lines: int) -> tuple[float, list[str]]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    try:
        result = run([PYTHON, "-S", "-I", "-c", PROBE, str(tree), str(receiver.getsockname()[1]), str(lines), way])
        got = sum(1 for _ in range(lines) if receiver.recv(65536))
    finally:
        receiver.close()
    if got != lines:
        raise SystemExit(f"{way}: {got} of {lines} messages arrived")
    elapsed, modules = ast.literal_eval(result.text.strip())
    return elapsed, modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-remotelog.") as work:
        tree = compiled_tree(Path(work))
        times: dict[str, list[float]] = {"stage1": [], "SysLogHandler": []}
        modules: dict[str, list[str]] = {}
        for _ in range(args.runs):
            for way in times:                     # interleaved, so load changes hit both
                elapsed, new = one_run(tree, "stage1" if way == "stage1" else "stdlib", args.lines)
                times[way].append(elapsed)
                modules[way] = new
    medians = {way: statistics.median(values) for way, values in times.items()}
    print(f"{args.lines} console lines over UDP, medians of {args.runs} fresh python3.11 -S -I runs (host CPU):")
    for way in times:
        print(f"  {way:<14} {medians[way] * 1000:7.2f} ms  new modules: {len(modules[way])} "
              f"({', '.join(modules[way][:12])}{' ...' if len(modules[way]) > 12 else ''})")
    print(f"  ratio SysLogHandler / stage1: {medians['SysLogHandler'] / medians['stage1']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"medians_s": medians, "modules": modules, "lines": args.lines}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
