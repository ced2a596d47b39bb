"""Run the layerboot CLI and SIGKILL it at one chosen point of an atomic commit: a real crash, on demand.

    python crashpoint.py REGEX layerboot-args...

The process kills itself (SIGKILL: no cleanup, no finally blocks, exactly like ``kill -9`` or the OOM
killer) just before the first ``os.replace``/``os.link`` whose destination matches REGEX, that is between
writing a temp file and publishing it under its real name.
"""

from __future__ import annotations

import os
import re
import signal
import sys


def main() -> None:
    pattern = re.compile(sys.argv[1])
    real_replace, real_link = os.replace, os.link

    def crash_if(destination: object) -> None:
        if pattern.search(os.fsdecode(destination)):   # type: ignore[arg-type]
            os.kill(os.getpid(), signal.SIGKILL)

    def replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        crash_if(dst)
        real_replace(src, dst, *args, **kwargs)   # type: ignore[arg-type]

    def link(src: object, dst: object, *args: object, **kwargs: object) -> None:
        crash_if(dst)
        real_link(src, dst, *args, **kwargs)   # type: ignore[arg-type]

    os.replace, os.link = replace, link   # type: ignore[assignment]
    from layerboot.tools.cli import main as cli
    sys.exit(cli(sys.argv[2:]))


if __name__ == "__main__":
    main()
