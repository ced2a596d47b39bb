"""``layerboot mirror``: the mirrors nodes are told about, and an nginx configuration for one."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.overlays.keys import load_public_key
from layerboot.overlays.manifest import verify_manifest
from layerboot.tools.context import Context
from layerboot.tools.output import table
from layerboot.tools.parser import add_json, examples, print_json

DESCRIPTION = """\
Objects (layers, kernels, initrds) are immutable and named by their sha256, so any HTTP cache can serve them.
The mirrors.* settings name such caches; every profile's signed manifest lists them, and nodes fetch layers
from the nearest (or the first listed) before this server, checking every byte against the signed hashes.
docs/scale.md describes the deployment, docs/security.md what a mirror can and cannot see.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("mirror", help="rack mirrors: what manifests name, nginx configuration for one",
                            description=DESCRIPTION)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, help="what to do")
    p = actions.add_parser("list", help="the mirrors each profile's manifests name: configured and published",
                           description="For every profile: its current generation, the mirrors the settings "
                                       "name for it, and whether its current signed manifest names the same.")
    add_json(p)
    p.set_defaults(func=cmd_list)
    examples(p, "layerboot mirror list", "layerboot mirror list --json")
    p = actions.add_parser("publish", help="sign a new generation of each profile whose current manifest does not "
                                           "name the configured mirrors yet",
                           description="A manifest names the mirrors configured when it was signed. After "
                                       "changing mirrors.*, this commits a new generation (same layers, kernel, "
                                       "initrd and command line; a new serial) of every profile whose current "
                                       "manifest names other mirrors, so nodes use the new list at their next "
                                       "boot. Profiles already up to date are left alone.")
    p.add_argument("profiles", nargs="*", metavar="PROFILE", help="only these profiles (default: all)")
    p.add_argument("-n", "--dry-run", action="store_true", help="say what would change, change nothing")
    p.set_defaults(func=cmd_publish)
    examples(p, "layerboot mirror publish --dry-run", "layerboot mirror publish web db")
    p = actions.add_parser(
        "nginx-config", help="write an nginx proxy_cache configuration for a rack mirror of this server",
        description="An nginx configuration that makes nginx a cache of this server's /objects/ (sliced, "
                    "one origin request per slice however many nodes ask: proxy_cache_lock; cached for good, "
                    "since objects never change; everything else answered 404). Without --full it is a file for "
                    "nginx's http {} block (/etc/nginx/conf.d/layerboot-mirror.conf on Debian); with --full a "
                    "complete nginx.conf to run with 'nginx -c FILE'. Add the mirror's URL to mirrors.urls and "
                    "run 'layerboot mirror publish'.")
    p.add_argument("--origin", metavar="URL", help="this server as the mirror reaches it, http://HOST:PORT "
                                                   "(default: server.public_url)")
    p.add_argument("--listen", default="8080", metavar="[ADDR:]PORT", help="where nginx listens (default 8080)")
    p.add_argument("--cache-dir", default="/var/cache/layerboot-mirror", metavar="DIR",
                   help="the cache directory (default %(default)s); nginx creates it")
    p.add_argument("--max-size", default="100g", metavar="SIZE",
                   help="most disk the cache may use (default %(default)s; the chains of every profile the "
                        "rack boots should fit)")
    p.add_argument("--slice", default="8m", metavar="SIZE", help="cache slice size (default %(default)s)")
    p.add_argument("--lock-timeout", default="60s", metavar="TIME",
                   help="how long a request waits for another one's fetch of the same slice before it asks "
                        "the origin itself, uncached (default %(default)s)")
    p.add_argument("--allow", action="append", default=[], metavar="CIDR",
                   help="client networks that may use the mirror (repeatable; default: anyone who reaches it)")
    p.add_argument("--full", action="store_true", help="a complete nginx.conf, not a conf.d snippet")
    p.add_argument("--user", default="www-data", help="--full: the worker user (default %(default)s)")
    p.add_argument("--run-dir", default="/run/layerboot-mirror", metavar="DIR",
                   help="--full: pid file, logs and temp files (default %(default)s)")
    p.add_argument("--foreground", action="store_true", help="--full: 'daemon off' (for systemd or a test)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="write it here (atomically), not to stdout")
    p.set_defaults(func=cmd_nginx_config)
    examples(p, "layerboot mirror nginx-config --origin http://10.0.0.1:8080 --allow 10.1.0.0/24 "
                "-o /etc/nginx/conf.d/layerboot-mirror.conf",
             "layerboot mirror nginx-config --full --foreground --listen 8081 -o /tmp/mirror.conf")


def _state(ctx: Context, profile: str) -> tuple[tuple[tuple[str, ...], str], tuple[tuple[str, ...], str], int]:
    """(configured, published, generation): each a (mirrors, order) pair, order "" without mirrors."""
    policy = ctx.profiles.mirrors
    wanted = policy.for_profile(profile)
    gen = ctx.profiles.current(profile)
    manifest = verify_manifest(ctx.profiles.signed_manifest(profile, gen.number),
                               load_public_key(ctx.paths.public_key), profile=profile)
    return ((wanted, policy.order if wanted else ""),
            (manifest.mirrors, manifest.mirror_order if manifest.mirrors else ""), gen.number)


def _shown(state: tuple[tuple[str, ...], str]) -> str:
    return f"{', '.join(state[0])} ({state[1]})" if state[0] else "none"


def cmd_list(ctx: Context) -> int:
    rows, records = [], []
    for profile in ctx.profiles.names():
        wanted, published, generation = _state(ctx, profile)
        records.append({"profile": profile, "generation": generation, "configured": list(wanted[0]),
                        "configured_order": wanted[1], "published": list(published[0]),
                        "published_order": published[1], "up_to_date": wanted == published})
        rows.append([profile, generation, _shown(wanted),
                     "same" if wanted == published else f"{_shown(published)}: run 'layerboot mirror publish'"])
    if ctx.args.json:
        return print_json({"profiles": records})
    if not rows:
        print("no profiles")
        return 0
    print(table(["PROFILE", "GEN", "MIRRORS (configured)", "CURRENT MANIFEST"], rows))
    return 0


def cmd_publish(ctx: Context) -> int:
    names = ctx.args.profiles or ctx.profiles.names()
    if not names:
        print("no profiles")
    for profile in names:
        wanted, published, generation = _state(ctx, profile)
        if wanted == published:
            print(f"{profile}: generation {generation} names the configured mirrors already ({_shown(wanted)})")
        elif ctx.args.dry_run:
            print(f"{profile}: would sign generation {generation + 1} naming mirrors {_shown(wanted)}")
        else:
            gen = ctx.profiles.republish(profile, f"mirrors: {_shown(wanted)}")
            print(f"{profile}: generation {gen.number} (serial {gen.serial}) names mirrors {_shown(wanted)}")
    return 0


def cmd_nginx_config(ctx: Context) -> int:
    from layerboot.atomic import write_text
    from layerboot.server.mirror.nginx import MirrorConfig, render

    a = ctx.args
    origin = a.origin or ctx.config.server_public_url
    if not origin:
        raise LayerbootError("which server should the mirror fetch from?",
                             hint="pass --origin http://HOST:PORT (this server as the mirror reaches it), or set "
                                  "server.public_url")
    text = render(MirrorConfig(origin=origin, listen=a.listen, cache_dir=a.cache_dir, max_size=a.max_size,
                               slice=a.slice, lock_timeout=a.lock_timeout, allow=tuple(a.allow), full=a.full,
                               user=a.user, run_dir=a.run_dir, daemon=not a.foreground))
    if a.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_text(a.output, text)
    except OSError as err:
        raise LayerbootError(f"cannot write {a.output}: {err.strerror}") from None
    print(f"wrote {a.output}" + (f" (run: nginx -c {a.output})" if a.full else
                                 " (then: nginx -t && systemctl reload nginx)"))
    return 0
