"""The boot benchmark's parts: the shared rootfs, a byte-counting HTTP server, a timed QEMU boot, and one
module per system measured (Debian live-boot, dracut livenet, layerboot). Imported by bench/bench_boot.py,
which puts bench/ on sys.path; nothing here is part of the installed layerboot package."""
