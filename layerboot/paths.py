"""Every on-disk location in one relocatable object, so nothing hardcodes /var/lib/layerboot."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STATE_DIR = Path("/var/lib/layerboot")
DEFAULT_CONFIG_FILE = Path("/etc/layerboot/layerboot.toml")


@dataclass(frozen=True)
class Paths:
    """The store's layout under one root directory.

    root/
      objects/<sha256>        immutable content (squashfs layers, kernels, initrds), named by their hash
      meta/<sha256>.json      the record for each object
      profiles/<name>/<N>.json  immutable profile generations
      manifests/<name>/<N>.json signed manifests, one per generation
      keys/                   the Ed25519 signing key pair
      incoming/               uploads waiting to be baked
      state/                  counters and locks (manifest serial, layerbootd.lock), the daemon's database,
                              admin token, boot-token key, power.toml
      state/services/         site services: the DNS hosts directory, the syslog node table, status.json
      tmp/                    scratch space on the same filesystem, for atomic renames
      quarantine/             objects that failed their hash check, moved aside (never served)
      imports/                live ISOs and OCI images offered for base import in the web console (console.import_dir)
    """

    root: Path

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def meta(self) -> Path:
        return self.root / "meta"

    @property
    def profiles(self) -> Path:
        return self.root / "profiles"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def signing_key(self) -> Path:
        return self.keys / "signing.key"

    @property
    def public_key(self) -> Path:
        return self.keys / "signing.pub"

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def serial_file(self) -> Path:
        return self.state / "manifest-serial"

    @property
    def database(self) -> Path:
        return self.state / "layerbootd.sqlite"

    @property
    def admin_token(self) -> Path:
        return self.state / "admin.token"

    @property
    def boot_token_key(self) -> Path:
        """layerbootd's HMAC key for boot tokens (mode 0600; replacing it invalidates every boot token)."""
        return self.state / "boot-token.key"

    @property
    def store_lock(self) -> Path:
        return self.state / "store.lock"

    @property
    def daemon_lock(self) -> Path:
        return self.state / "layerbootd.lock"

    @property
    def power_file(self) -> Path:
        """BMC credentials per node (root-only), unless monitor.power_file names another file."""
        return self.state / "power.toml"

    @property
    def imports(self) -> Path:
        """Live ISOs and OCI images the console offers for base import, unless console.import_dir says otherwise."""
        return self.root / "imports"

    @property
    def services(self) -> Path:
        """Site services' generated data (docs/services.md): read by dnsmasq and rsyslog, so world-readable."""
        return self.state / "services"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    def object(self, digest: str) -> Path:
        return self.objects / digest

    def object_meta(self, digest: str) -> Path:
        return self.meta / f"{digest}.json"

    def profile_dir(self, name: str) -> Path:
        return self.profiles / name

    def manifest_dir(self, name: str) -> Path:
        return self.manifests / name

    def all_dirs(self) -> list[Path]:
        return [self.root, self.objects, self.meta, self.profiles, self.manifests, self.keys,
                self.incoming, self.state, self.tmp]

    def create(self) -> None:
        for directory in self.all_dirs():
            directory.mkdir(parents=True, exist_ok=True)
        self.keys.chmod(0o700)
        self.store_lock.touch(exist_ok=True)
        self.adopt(*self.all_dirs(), self.store_lock)

    def adopt(self, *targets: Path) -> None:
        """Give what root just created in a store that belongs to another user (layerbootd's service user)
        to that user, so the daemon can write where the CLI wrote. Ownership follows the store's root
        directory; nothing happens in a root-owned store or when not running as root."""
        if os.geteuid() != 0:
            return
        try:
            owner = self.root.stat()
        except FileNotFoundError:
            return
        if owner.st_uid == 0:
            return
        for target in targets:
            try:
                os.chown(target, owner.st_uid, owner.st_gid, follow_symlinks=False)
            except FileNotFoundError:
                continue
