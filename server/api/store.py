"""Records of the store for the console, the API and the CLI's ``--json``: profiles and layers with their use.

Each record is built here once and printed by ``layerboot profile list --json`` / ``layer list --json`` the
same way ``GET /api/v1/profiles`` and ``/api/v1/layers`` send it.
"""

from __future__ import annotations

from typing import Any

from layerboot.errors import LayerbootError


def profile_summary(profiles: Any, name: str) -> dict[str, Any]:
    """A profile: its name, its current generation (the whole record) and how many generations it has."""
    current = profiles.current(name)
    return {"name": name, "generations": len(profiles.numbers(name)), "current": current.to_dict()}


def profile_summaries(profiles: Any) -> list[dict[str, Any]]:
    found = []
    for name in profiles.names():
        try:
            found.append(profile_summary(profiles, name))
        except LayerbootError:        # a profile whose newest generation is unreadable: fsck's business
            continue
    return found


def layer_usage(profiles: Any) -> dict[str, dict[str, list[str]]]:
    """digest -> {"current": profiles whose newest generation stacks it, "older": profiles where only older
    generations did}. Kernels, initrds and modules layers count as used too."""
    usage: dict[str, dict[str, list[str]]] = {}
    for name in profiles.names():
        numbers = profiles.numbers(name)
        for number in numbers:
            try:
                gen = profiles.generation(name, number)
            except LayerbootError:
                continue
            role = "current" if number == numbers[-1] else "older"
            for digest in (*gen.chain, gen.kernel, gen.initrd):
                if not digest:
                    continue
                entry = usage.setdefault(digest, {"current": [], "older": []})
                if name not in entry[role]:
                    entry[role].append(name)
    for entry in usage.values():
        entry["older"] = [n for n in entry["older"] if n not in entry["current"]]
    return usage


def layer_record(layer: Any, usage: dict[str, dict[str, list[str]]]) -> dict[str, Any]:
    used = usage.get(layer.digest, {"current": [], "older": []})
    return layer.to_dict() | {"used_by": used["current"], "used_before_by": used["older"]}


def layer_records(store: Any, profiles: Any) -> list[dict[str, Any]]:
    usage = layer_usage(profiles)
    return [layer_record(layer, usage) for layer in store.layers()]


def profile_detail(profiles: Any, name: str) -> dict[str, Any]:
    """A profile with every generation (newest first) and each layer's record in the current chain."""
    history = profiles.history(name)
    current = history[-1]
    store = profiles.store
    chain = []
    for digest in current.chain:
        try:
            layer = store.get(digest).to_dict()
        except LayerbootError:
            layer = {"digest": digest, "kind": "missing", "size": 0, "description": "not in the store"}
        chain.append(layer)
    return {"name": name, "current": current.to_dict(), "chain": chain,
            "generations": [g.to_dict() for g in reversed(history)]}
