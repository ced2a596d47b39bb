"""A second QEMU guest that plays the switch in bond/VLAN boot tests: the LACP partner a real 802.3ad bond needs.

The host kernel of this test machine has neither bonding nor 802.1Q, so the switch side runs Debian's cloud
kernel too: a busybox initramfs bonds its eth0+eth1 in 802.3ad (lacp_rate fast), puts VLAN 42 on the bond and
bridges that VLAN to eth2 (untagged), which sits on the test Lan. The node under test connects its two NICs to
the switch's eth0/eth1 with QEMU UDP socket netdevs on the namespace's loopback. The switch prints
``SWITCH-READY <bond MAC>`` once configured and ``SWITCH-PARTNER <MAC>`` when LACP found its partner.
802.3ad needs ports that report speed and duplex: the bonded virtio NICs get QEMU's ``speed=1000,duplex=full``
(without them both bonds keep their ports out of the aggregator and nothing passes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from layerboot.build.busybox_tree import find_busybox
from layerboot.run import run

MODULES = ("virtio_pci", "virtio_net", "bonding", "8021q", "bridge")
SWITCH_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_pci virtio_net; do modprobe $m; done
modprobe bonding max_bonds=0; modprobe 8021q; modprobe bridge
n=0; while [ ! -e /sys/class/net/eth2 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
echo +bond0 > /sys/class/net/bonding_masters
echo 802.3ad > /sys/class/net/bond0/bonding/mode
echo fast > /sys/class/net/bond0/bonding/lacp_rate
echo 100 > /sys/class/net/bond0/bonding/miimon
for s in eth0 eth1; do ip link set $s down; echo +$s > /sys/class/net/bond0/bonding/slaves; done
ip link set bond0 up
vconfig add bond0 42 >/dev/null
brctl addbr br0; brctl addif br0 bond0.42; brctl addif br0 eth2   # STP off: ports forward at once
for d in bond0.42 eth2 br0; do ip link set $d up; done
echo "SWITCH-READY $(cat /sys/class/net/bond0/address)"
while true; do
  p=$(sed -n 's/^\s*Partner Mac Address: //p' /proc/net/bonding/bond0 | head -n1)
  if [ -n "$p" ] && [ "$p" != 00:00:00:00:00:00 ] && [ "$p" != "$seen" ]; then
    echo "SWITCH-PARTNER $p $(grep -c 'Aggregator ID' /proc/net/bonding/bond0)"; seen=$p
  fi
  sleep 1
done
"""


def switch_initrd(kernel, out: Path) -> Path:  # noqa: ANN001 - build.kernel.Kernel
    """A gzip'ed cpio initramfs: busybox, the init above, and the modules it loads (with their dependencies)."""
    tree = out.parent / "switch-root"
    if tree.exists():
        shutil.rmtree(tree)
    for d in ("bin", "proc", "sys", "dev", "etc"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(find_busybox(), tree / "bin/busybox")
    (tree / "init").write_text(SWITCH_INIT)
    (tree / "init").chmod(0o755)
    moddir = tree / "lib/modules" / kernel.version
    moddir.mkdir(parents=True)
    deps = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        path, _, needs = line.partition(":")
        deps[Path(path).name.removesuffix(".ko")] = [path, *needs.split()]
    wanted = {p for name in MODULES if name in deps for p in deps[name]}
    for rel in wanted:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(kernel.moddir / rel, moddir / rel)
    shutil.copy2(kernel.moddir / "modules.dep", moddir / "modules.dep")
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    archive = run(["cpio", "-o", "-H", "newc", "--quiet"], input=("\n".join(names) + "\n").encode(), cwd=tree,
                  timeout=120).stdout
    gz = run(["gzip", "-1", "-n"], input=archive, timeout=120).stdout
    out.write_bytes(gz)
    shutil.rmtree(tree)
    return out
