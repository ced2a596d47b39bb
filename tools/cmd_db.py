"""``layerboot db``: the schema version of layerbootd's database, and explicit migration."""

from __future__ import annotations

import argparse
import json

from layerboot.tools.context import Context
from layerboot.tools.parser import add_json, examples
from layerboot.tools.output import table


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "db", help="layerbootd's database: schema version, pending migrations, migrate",
        description="The database is server.database (PostgreSQL), or the store's SQLite file when that is "
                    "empty. layerbootd and the nodes/uploads commands migrate it when they open it unless "
                    "server.auto_migrate is false.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="status or migrate")
    p = actions.add_parser("status", help="show the schema version, the applied and the pending migrations",
                           description="The database's URL (without a password), schema version, applied and "
                                       "pending migrations. Creates nothing.")
    add_json(p)
    p.set_defaults(func=cmd_status)
    examples(p, "layerboot db status", "layerboot db status --json")
    p = actions.add_parser("migrate", help="apply the pending migrations (each in its own transaction)",
                           description="Apply the pending migrations, each in its own transaction.")
    p.set_defaults(func=cmd_migrate)
    examples(p, "layerboot db migrate", "layerboot --config /etc/layerboot/layerboot.toml db migrate")


def _database(ctx: Context):  # noqa: ANN202
    from layerboot.server.db import Database, database_target
    return Database(database_target(ctx.config, ctx.paths))


def cmd_status(ctx: Context) -> int:
    from layerboot.server.db.migrate import status
    db = _database(ctx)
    try:
        state = status(db)
    finally:
        db.close()
    if ctx.args.json:
        print(json.dumps({"database": db.display_url, **state.to_dict()}, indent=2, sort_keys=True))
        return 0
    print(f"database: {db.display_url}")
    if not state.exists:
        note = " (no database yet; created by 'layerboot db migrate' or on first use)"
    elif state.legacy:
        note = " (made before numbered migrations; migration 1 adopts it as it is)"
    elif state.version > state.latest:
        note = f" (NEWER than this layerboot, which knows up to {state.latest}: upgrade layerboot)"
    else:
        note = ""
    print(f"schema version: {state.version} of {state.latest}{note}")
    if state.applied:
        print(table(["VERSION", "NAME", "APPLIED"], [[a["version"], a["name"], a["applied"]] for a in state.applied]))
    if state.pending:
        print("pending:")
        print(table(["VERSION", "NAME", "WHAT"], [[m.number, m.name, m.summary] for m in state.pending]))
    elif state.version == state.latest:
        print("up to date")
    return 0


def cmd_migrate(ctx: Context) -> int:
    from layerboot.server.db.migrate import migrate
    db = _database(ctx)
    try:
        done = migrate(db)
        version = db.scalar("SELECT max(version) FROM schema_version")
    finally:
        db.close()
    for migration in done:
        print(f"applied migration {migration.number} ({migration.name}): {migration.summary}")
    print(f"{db.display_url}: schema version {version}" + ("" if done else " (nothing to do)"))
    return 0
