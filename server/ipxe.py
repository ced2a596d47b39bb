"""The per-MAC iPXE script: rendered from checked values, then read back the way iPXE reads it.

Every value that goes into the script (base URL, MAC, profile, token, digests, the profile's command line) is
checked against iPXE's parsing rules (overlays/cmdline.py has them), and the rendered script is parsed again
with :func:`ipxe_commands`, a model of iPXE's own line, word, comment and separator handling: the script is
served only if it holds exactly the four commands layerbootd meant (echo, kernel, initrd, boot) with exactly
the words it meant. A value that would change that is a 409 naming it, never a different script.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerboot.overlays.cmdline import IPXE_SEPARATORS, CmdlineError, check_cmdline, check_ipxe_word

_SPACE = " \t\n\v\f\r"          # C isspace() in the "C" locale, which is what iPXE uses
# The NIC iPXE booted from (netX: the last one it opened), pxelinux/dracut style: stage1 configures that one.
BOOTIF = "BOOTIF=01-${netX/mac:hexhyp}"


def ipxe_commands(script: str) -> list[list[str]]:
    """The commands iPXE would run from ``script``, each as its word list (settings not expanded; labels and
    comments dropped). Lines end at LF, a CR before it is dropped, a trailing backslash joins the next line."""
    commands: list[list[str]] = []
    pending = ""
    for raw in script.split("\n"):
        line = pending + raw.removesuffix("\r")
        if line.endswith("\\"):
            pending = line[:-1]
            continue
        pending = ""
        words = line.translate({ord(c): " " for c in _SPACE}).split()
        if words and words[0].startswith(":"):       # a label
            words = words[1:]
        current: list[str] = []
        for word in words:
            if word.startswith("#"):
                break
            if word in IPXE_SEPARATORS:
                commands.append(current)
                current = []
                continue
            current.append(word)
        if current:
            commands.append(current)
    if pending:
        commands.append(pending.split())
    return [c for c in commands if c]


@dataclass(frozen=True)
class BootScript:
    base: str            # layerbootd's URL as the node reaches it
    mac: str
    profile: str
    token: str           # the boot token (read-only)
    kernel: str          # digests
    initrd: str
    cmdline: str         # the profile's

    def kernel_args(self) -> list[str]:
        return [*self.cmdline.split(), BOOTIF, f"layerboot.server={self.base}", f"layerboot.node={self.mac}",
                f"layerboot.profile={self.profile}", f"layerboot.token={self.token}"]

    def render(self) -> str:
        """The script; CmdlineError (one line naming the value) if any value could change its commands."""
        check_cmdline(self.cmdline, what=f"the command line of profile {self.profile}")
        for what, value in (("the server URL", self.base), ("the MAC", self.mac), ("the profile name", self.profile),
                            ("the boot token", self.token), ("the kernel digest", self.kernel),
                            ("the initrd digest", self.initrd)):
            check_ipxe_word(value, what)
        kernel_url = f"{self.base}/objects/{self.kernel}?token={self.token}"
        initrd_url = f"{self.base}/objects/{self.initrd}?token={self.token}"
        args = self.kernel_args()
        script = ("#!ipxe\n"
                  f"echo layerboot: booting {self.mac}\n"
                  f"kernel {kernel_url} initrd=initrd {' '.join(args)}\n"
                  f"initrd --name initrd {initrd_url}\n"
                  "boot\n")
        expected = [["echo", "layerboot:", "booting", self.mac], ["kernel", kernel_url, "initrd=initrd", *args],
                    ["initrd", "--name", "initrd", initrd_url], ["boot"]]
        if ipxe_commands(script) != expected:
            raise CmdlineError(f"the iPXE script for {self.mac} would not run as written (a value changes its "
                               "commands); refusing to serve it")
        return script
