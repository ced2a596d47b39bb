"""The upload content policy: privileged kinds of content an upload may carry only when its profile allows them.

A node's upload becomes part of what every node of the profile boots, so content that grants privileges on
those nodes is refused unless the admin allowed that class for the profile
(``layerboot uploads policy PROFILE --allow CLASS``):

* ``setuid``: regular files with the setuid or setgid bit (a setuid-root binary is root for every local user
  of every node; setgid directories only make new files inherit the group and stay allowed);
* ``caps``: file capabilities (the ``security.capability`` xattr, e.g. cap_net_raw or cap_sys_admin);
* ``devices``: character and block device nodes (e.g. a world-writable copy of /dev/mem or a disk);
  overlayfs whiteouts (char 0/0) are not devices and are always allowed.

The bake checks every member (HTTP and SFTP uploads end in the same bake, and ``layerboot bake`` applies the
same rules); ``layer import`` and ``squash`` work on what the admin already accepted and are not restricted.
"""

from __future__ import annotations

from collections.abc import Iterable

from layerboot.errors import LayerbootError
from layerboot.overlays.tarwriter import Attrs

CLASSES = ("setuid", "caps", "devices")
CAPABILITY_XATTR = "security.capability"


def parse_classes(values: Iterable[str]) -> frozenset[str]:
    """Comma-separated class lists (``setuid,caps``, ``all``, ``none``) into a set; unknown names are an error."""
    found: set[str] = set()
    for value in values:
        for word in (w.strip() for w in value.split(",")):
            if word == "all":
                found.update(CLASSES)
            elif word in CLASSES:
                found.add(word)
            elif word not in ("", "none"):
                raise LayerbootError(f"unknown content class {word!r}",
                                     hint=f"use {', '.join(CLASSES)}, all or none")
    return frozenset(found)


def format_classes(allow: Iterable[str]) -> str:
    """The stored and shown form: the classes in CLASSES order, comma-separated, or ``none``."""
    chosen = set(allow)
    return ",".join(c for c in CLASSES if c in chosen) or "none"


def content_violation(kind: str, attrs: Attrs, rdev: tuple[int, int], allow: frozenset[str]) -> str | None:
    """Why a member's content is refused under ``allow`` (one phrase naming the rule), or None."""
    found: list[tuple[str, str]] = []
    if kind == "file" and attrs.mode & 0o6000:
        bits = " and ".join(b for b, m in (("setuid", 0o4000), ("setgid", 0o2000)) if attrs.mode & m)
        found.append(("setuid", f"a {bits} file (mode {attrs.mode:04o})"))
    if any(name == CAPABILITY_XATTR for name, _ in attrs.xattrs):
        found.append(("caps", f"a file capability ({CAPABILITY_XATTR})"))
    if kind in ("chardev", "blockdev"):
        what = "character" if kind == "chardev" else "block"
        found.append(("devices", f"a {what} device node {rdev[0]}:{rdev[1]}"))
    for rule, what in found:
        if rule not in allow:
            return (f"{what} is refused by the upload content policy (rule {rule}; allow it with "
                    f"'layerboot uploads policy PROFILE --allow {rule}')")
    return None
