"""The site services' real daemons for tests, in network namespaces (tests/pxenet.py) and tmp dirs only.

Each daemon reads layerboot's drop-in the way Debian's packaged main configuration does (rsyslog's
``$IncludeConfig /etc/rsyslog.d/*.conf``, chrony's ``confdir /etc/chrony/conf.d``, dnsmasq's ``conf-dir``), from a
main file written here whose other paths (pid files, sockets, work directories) all point into the test's tmp
dir, so nothing of the machine's own is touched. ``chronyd -x`` never sets this machine's clock.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from layerboot.run import Process

from pxenet import Lan, wait_for


@dataclass
class SiteLab:
    lan: Lan
    tmp: Path
    ns: str                          # the server's namespace

    @property
    def root(self) -> Path:          # services.root
        return self.tmp / "root"

    @property
    def logs(self) -> Path:          # services.syslog.dir
        return self.tmp / "logs"

    def pid_file(self, daemon: str) -> Path:
        return self.tmp / f"{daemon}.pid"

    def config(self, store: Path, address: str, networks: str, *, extra: str = "",
               enabled: tuple[str, ...] = ("syslog", "time", "dns")) -> Path:
        """A layerboot config with the services on, all their paths in tmp."""
        path = self.tmp / "layerboot.toml"
        path.write_text(f"""[store]
root = "{store}"
[services]
address = "{address}"
networks = ["{networks}"]
root = "{self.root}"
refresh_interval = 1
[services.syslog]
enabled = {str("syslog" in enabled).lower()}
dir = "{self.logs}"
pid_file = "{self.pid_file('rsyslogd')}"
node_spool = "{self.tmp}/node-spool"
[services.time]
enabled = {str("time" in enabled).lower()}
pid_file = "{self.pid_file('chronyd')}"
[services.dns]
enabled = {str("dns" in enabled).lower()}
pid_file = "{self.pid_file('dnsmasq')}"
{extra}""")
        return path

    def cli(self, config: Path, *args: str, check: bool = True):  # noqa: ANN201
        return self.lan.run(self.ns, [sys.executable, "-m", "layerboot", "-c", str(config), *args], check=check,
                            timeout=120)

    # -- the daemons --------------------------------------------------------------------------------------------
    def rsyslogd(self) -> Process:
        main = self.tmp / "rsyslog.conf"
        (self.tmp / "rsyslog-work").mkdir(exist_ok=True)
        main.write_text(f'global(workDirectory="{self.tmp}/rsyslog-work")\n'
                        f"$IncludeConfig {self.root}/etc/rsyslog.d/*.conf\n")
        return self._start("rsyslogd", ["rsyslogd", "-n", "-f", str(main), "-i", str(self.pid_file("rsyslogd"))])

    def chronyd(self) -> Process:
        main = self.tmp / "chrony.conf"
        main.write_text(f"confdir {self.root}/etc/chrony/conf.d\npidfile {self.pid_file('chronyd')}\n"
                        "cmdport 0\nbindcmdaddress /\n")
        return self._start("chronyd", ["chronyd", "-x", "-d", "-u", "root", "-f", str(main)])

    def dnsmasq(self) -> Process:
        return self._start("dnsmasq", ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--conf-file=/dev/null",
                                       f"--conf-dir={self.root}/etc/dnsmasq.d,*.conf", "--no-hosts",
                                       f"--pid-file={self.pid_file('dnsmasq')}", "--user=root", "--log-queries"])

    def _start(self, name: str, argv: list[str]) -> Process:
        self.pid_file(name).unlink(missing_ok=True)
        log = self.tmp / f"{name}.log"
        proc = self.lan.spawn(self.ns, argv, log=open(log, "ab"))
        assert wait_for(lambda: self.pid_file(name).exists() or proc.poll() is not None, 20), log.read_text()
        assert proc.poll() is None, log.read_text()
        return proc

    def stop(self, proc: Process) -> None:
        proc.terminate(timeout=10)
        self.lan.processes.remove(proc)

    # -- what arrives -------------------------------------------------------------------------------------------
    def wait_log(self, relative: str, text: str, timeout: float = 20) -> str:
        path = self.logs / relative

        def arrived() -> bool:
            return path.is_file() and text in path.read_text(errors="replace")
        assert wait_for(arrived, timeout), (f"{text!r} not in {path}; the log directory has: "
                                            f"{sorted(str(p.relative_to(self.logs)) for p in self.logs.rglob('*'))}")
        return path.read_text(errors="replace")
