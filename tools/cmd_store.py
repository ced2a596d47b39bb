"""``layerboot store``: create the store and check it."""

from __future__ import annotations

import argparse

from layerboot.errors import LayerbootError
from layerboot.tools.context import Context


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("store", help="create and check the layer store")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create an empty store (directories only; see 'key generate')")
    init.set_defaults(func=cmd_init)
    fsck = actions.add_parser("fsck", help="re-hash every object and cross-check the records")
    fsck.set_defaults(func=cmd_fsck)


def cmd_init(ctx: Context) -> int:
    ctx.store.init()
    print(f"store ready at {ctx.paths.root}")
    return 0


def cmd_fsck(ctx: Context) -> int:
    store = ctx.ready_store()
    problems = store.fsck()
    checked = len(set(store.digests()) | set(store.objects.digests()))
    for problem in problems:
        print(f"BAD {problem}")
    if problems:
        raise LayerbootError(f"fsck found {len(problems)} problem(s) in {checked} object(s)",
                             hint="a corrupt object must be re-imported or removed from the profiles using it")
    print(f"fsck: {checked} object(s) checked, all intact")
    return 0
