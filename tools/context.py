"""What every command needs, built once from the global options: config, paths, store, profiles."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from layerboot.overlays.mirrors import MirrorPolicy
from layerboot.overlays.profile import Profiles
from layerboot.overlays.store import Store
from layerboot.paths import Paths
from layerboot.settings import load_config


@dataclass
class Context:
    args: argparse.Namespace

    @cached_property
    def config(self) -> Any:
        store = getattr(self.args, "store", None)
        return load_config(getattr(self.args, "config", None),
                           overrides={"store_root": Path(store) if store else None})

    @cached_property
    def paths(self) -> Paths:
        return Paths(Path(self.config.store_root))

    @cached_property
    def store(self) -> Store:
        store = Store(self.paths, compression=self.config.store_compression, block_size=self.config.store_block_size)
        return store

    def ready_store(self) -> Store:
        self.store.require_initialized()
        return self.store

    @cached_property
    def profiles(self) -> Profiles:
        return Profiles(self.ready_store(), mirrors=MirrorPolicy.from_config(self.config))
