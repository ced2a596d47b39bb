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
    mac: str             # the MAC the script was asked for (the NIC iPXE runs on)
    profile: str
    token: str           # the boot token (read-only)
    kernel: str          # digests
    initrd: str
    cmdline: str         # the profile's, or a named node's own (server/fleet/netargs.py: with its network)
    node: str = ""       # the node's key MAC when it is not ``mac`` (booting from a second NIC)

    def kernel_args(self) -> list[str]:
        return [*self.cmdline.split(), BOOTIF, f"layerboot.server={self.base}",
                f"layerboot.node={self.node or self.mac}", f"layerboot.profile={self.profile}",
                f"layerboot.token={self.token}"]

    def render(self) -> str:
        """The script; CmdlineError (one line naming the value) if any value could change its commands."""
        check_cmdline(self.cmdline, what=f"the command line of profile {self.profile}")
        for what, value in (("the server URL", self.base), ("the MAC", self.mac), ("the node", self.node or self.mac),
                            ("the profile name", self.profile),
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


@dataclass(frozen=True)
class DiscoveryScript:
    """What an unknown MAC gets with ``server.unknown_mac = "discover"``: the discovery profile's kernel and
    initrd with ``layerboot.discover``, so stage1 reports the machine's hardware and waits to be accepted.

    With ``menu_timeout`` the script first shows a menu at the machine's console: after the timeout (or on
    Enter) the plain discovery boot; or an operator types the name of an existing node and a name for this
    machine, which stage1 sends along as a *request* to become a clone of that node (``nodes pending`` shows
    it; only an admin's ``nodes accept`` acts on it). The typed text reaches the kernel command line
    URI-encoded (``${...:uristring}``), so it stays one word whatever was typed.
    """

    base: str
    mac: str
    token: str
    kernel: str
    initrd: str
    cmdline: str              # the discovery profile's
    menu_timeout: int = 0     # seconds; 0: no menu

    def _boot(self, extra: list[str]) -> tuple[list[str], list[list[str]]]:
        kernel_url = f"{self.base}/objects/{self.kernel}?token={self.token}"
        initrd_url = f"{self.base}/objects/{self.initrd}?token={self.token}"
        args = [*self.cmdline.split(), BOOTIF, f"layerboot.server={self.base}", f"layerboot.node={self.mac}",
                "layerboot.discover", *extra]
        lines = [f"kernel {kernel_url} initrd=initrd {' '.join(args)}", f"initrd --name initrd {initrd_url}", "boot"]
        return lines, [["kernel", kernel_url, "initrd=initrd", *args], ["initrd", "--name", "initrd", initrd_url],
                       ["boot"]]

    def render(self) -> str:
        check_cmdline(self.cmdline, what="the command line of the discovery profile")
        for what, value in (("the server URL", self.base), ("the MAC", self.mac), ("the boot token", self.token),
                            ("the kernel digest", self.kernel), ("the initrd digest", self.initrd)):
            check_ipxe_word(value, what)
        plain, plain_cmds = self._boot([])
        lines = ["#!ipxe", f"echo layerboot: {self.mac} is not registered: discovery boot"]
        expected = [["echo", "layerboot:", self.mac, "is", "not", "registered:", "discovery", "boot"]]
        if self.menu_timeout:
            clone, clone_cmds = self._boot(["layerboot.clone=${lbclone:uristring}", "layerboot.name=${lbname:uristring}"])
            menu = [
                (f"menu layerboot: {self.mac} is not registered with this server",
                 ["menu", "layerboot:", self.mac, "is", "not", "registered", "with", "this", "server"]),
                ("item discover Report this machine and wait for an admin to accept it",
                 ["item", "discover", "Report", "this", "machine", "and", "wait", "for", "an", "admin", "to", "accept",
                  "it"]),
                ("item clone Ask to become a clone of an existing node (an admin accepts it)",
                 ["item", "clone", "Ask", "to", "become", "a", "clone", "of", "an", "existing", "node", "(an", "admin",
                  "accepts", "it)"]),
                (f"choose --timeout {self.menu_timeout * 1000} --default discover target || goto discover",
                 ["choose", "--timeout", str(self.menu_timeout * 1000), "--default", "discover", "target"],
                 ["goto", "discover"]),
                ("goto ${target}", ["goto", "${target}"]),
                (":clone", None),
                ("echo -n Clone of node: && read lbclone", ["echo", "-n", "Clone", "of", "node:"], ["read", "lbclone"]),
                ("echo -n Name for this machine: && read lbname", ["echo", "-n", "Name", "for", "this", "machine:"],
                 ["read", "lbname"]),
            ]
            for line, *commands in menu:
                lines.append(line)
                expected += [c for c in commands if c]
            lines += clone
            expected += clone_cmds
            lines.append(":discover")
        lines += plain
        expected += plain_cmds
        script = "\n".join(lines) + "\n"
        if ipxe_commands(script) != expected:
            raise CmdlineError(f"the discovery script for {self.mac} would not run as written; refusing to serve it")
        return script
