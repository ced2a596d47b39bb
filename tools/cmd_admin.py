"""``layerboot admin``: accounts of the web console and the API, and their API tokens.

Works on the daemon's database directly (like ``layerboot nodes``), so it works whether layerbootd runs or
not; a running layerbootd sees a new account, password or token at once. Passwords are read from the
terminal (asked twice), or with ``--password-stdin`` from the first line of standard input (scripts); never
from the command line, where every user could read them in ``ps``.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from layerboot.errors import LayerbootError
from layerboot.server.monitor.model import iso
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import RESULT_JSON, add_json, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "admin", help="admin accounts of the web console and API, and their API tokens",
        description="Accounts log in to the console at http(s)://SERVER/console/ (docs/console.md); API tokens "
                    "let scripts call /api/v1 as an account ('Authorization: Bearer TOKEN').")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True,
                                    help="add, passwd, remove, list accounts; token")

    def password_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input (default: ask on the "
                            "terminal, twice)")

    p = actions.add_parser("add", help="create an account (asks for its password)",
                           description="Create a console and API account; its password is asked for twice on "
                                       "the terminal, or read with --password-stdin.")
    p.add_argument("name", help="account name: lowercase letters, digits, '_', '.', '-' (like a Unix user)")
    password_option(p)
    p.set_defaults(func=cmd_add)
    examples(p, "layerboot admin add alice",
             "printf '%s\\n' \"$PASSWORD\" | layerboot admin add ci --password-stdin")
    p = actions.add_parser("passwd", help="set an account's password (ends its console sessions)",
                           description="Set an account's password; its console sessions end.")
    p.add_argument("name", help="the account")
    password_option(p)
    p.set_defaults(func=cmd_passwd)
    examples(p, "layerboot admin passwd alice")
    p = actions.add_parser("remove", help="delete an account with its sessions and API tokens",
                           description="Delete an account with its sessions and API tokens (they stop at once).")
    p.add_argument("name", help="the account")
    p.set_defaults(func=cmd_remove)
    examples(p, "layerboot admin remove alice")
    p = actions.add_parser("list", help="accounts with their last login and live sessions",
                           description="Accounts with their creation, last login and live console sessions.")
    add_json(p)
    p.set_defaults(func=cmd_list)
    examples(p, "layerboot admin list", "layerboot admin list --json")

    p = actions.add_parser("token", help="API tokens: create, list, revoke",
                           description="API tokens let scripts call /api/v1 as an account.")
    tokens = p.add_subparsers(dest="token_action", metavar="ACTION", required=True, help="create, list or revoke")
    q = tokens.add_parser("create", help="make an API token for an account; prints it once",
                          description="Make an API token acting as an account; it is printed once, only its hash "
                                      "is stored.")
    q.add_argument("name", help="the account the token acts as")
    q.add_argument("--label", default="", help="what the token is for (shown by 'token list')")
    add_json(q, RESULT_JSON)
    q.set_defaults(func=cmd_token_create)
    examples(q, "layerboot admin token create alice --label 'inventory sync'")
    q = tokens.add_parser("list", help="API tokens (their ids, never the tokens)",
                          description="API tokens: id, account, label, created, last used (never the tokens).")
    add_json(q)
    q.set_defaults(func=cmd_token_list)
    examples(q, "layerboot admin token list", "layerboot admin token list --json")
    q = tokens.add_parser("revoke", help="stop an API token at once", description="Stop an API token at once.")
    q.add_argument("id", help="the token's id (the 8 hex digits after 'lbt1.')")
    q.set_defaults(func=cmd_token_revoke)
    examples(q, "layerboot admin token revoke 1a2b3c4d")


def _admins(ctx: Context):  # noqa: ANN202
    from layerboot.server.auth.admins import Admins, LoginLimits
    return Admins(ctx.database(), LoginLimits.from_config(ctx.config))


def read_password(ctx: Context) -> str:
    from layerboot.server.auth.admins import check_password
    if ctx.args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise LayerbootError("--password-stdin: standard input is empty")
        return check_password(line.rstrip("\r\n"))
    if not sys.stdin.isatty():
        raise LayerbootError("no terminal to ask for the password on", hint="pass --password-stdin and send it "
                                                                           "on standard input")
    first = check_password(getpass.getpass("Password: "))
    if getpass.getpass("Again: ") != first:
        raise LayerbootError("the two passwords differ; nothing changed")
    return first


def cmd_add(ctx: Context) -> int:
    admins = _admins(ctx)
    from layerboot.server.auth.admins import check_name
    check_name(ctx.args.name)
    if admins.find(ctx.args.name) is not None:
        raise LayerbootError(f"admin {ctx.args.name} exists already", hint=f"layerboot admin passwd {ctx.args.name}")
    admin = admins.add(ctx.args.name, read_password(ctx))
    print(f"admin {admin.name} created: log in at http(s)://SERVER:PORT/console/")
    return 0


def cmd_passwd(ctx: Context) -> int:
    admins = _admins(ctx)
    admins.get(ctx.args.name)
    admin = admins.set_password(ctx.args.name, read_password(ctx))
    print(f"admin {admin.name}: password changed; its console sessions are ended")
    return 0


def cmd_remove(ctx: Context) -> int:
    admins = _admins(ctx)
    admins.remove(ctx.args.name)
    print(f"admin {ctx.args.name} removed, with its sessions and API tokens")
    return 0


def cmd_list(ctx: Context) -> int:
    admins = _admins(ctx)
    accounts = [a.to_dict() | {"sessions": admins.sessions(a.name)} for a in admins.list()]
    if ctx.args.json:
        return print_json({"admins": accounts})
    print(table(["ADMIN", "CREATED", "LAST LOGIN", "SESSIONS"],
                [[a["name"], a["created"], a["last_login"] or "never", a["sessions"]] for a in accounts])
          if accounts else "no admin accounts yet (layerboot admin add NAME)")
    return 0


def cmd_token_create(ctx: Context) -> int:
    token, record = _admins(ctx).create_token(ctx.args.name, ctx.args.label)
    if ctx.args.json:
        return print_json(record.to_dict() | {"token": token})
    print(f"API token {record.id} for {record.admin} (shown once, only its hash is stored):")
    print(token)
    return 0


def cmd_token_list(ctx: Context) -> int:
    tokens = [t.to_dict() for t in _admins(ctx).tokens()]
    if ctx.args.json:
        return print_json({"tokens": tokens})
    print(table(["ID", "ADMIN", "LABEL", "CREATED", "LAST USED"],
                [[t["id"], t["admin"], t["name"] or "-", t["created"], t["last_used"] or "never"] for t in tokens])
          if tokens else "no API tokens (layerboot admin token create NAME)")
    return 0


def cmd_token_revoke(ctx: Context) -> int:
    token = _admins(ctx).revoke_token(ctx.args.id)
    print(f"API token {token.id} of {token.admin} revoked (created {iso(token.created)})")
    return 0
