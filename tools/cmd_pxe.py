"""``layerboot pxe``: DHCP/proxy-DHCP + TFTP for PXE-booting nodes into layerbootd, via a supervised dnsmasq."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from layerboot.errors import LayerbootError
from layerboot.server import dnsmasq
from layerboot.server.pxe import (EFI_BINARIES, SHIM_BINARY, export_grub_nodes, plan, prepare_tftp_root,
                                  server_problem)
from layerboot.tools.context import Context
from layerboot.tools.parser import examples

GRUB_REFRESH = 15.0   # seconds between refreshes of the Secure Boot path's per-node GRUB entries
DESCRIPTION = """\
Serve PXE on one interface with dnsmasq (DNS off). Without --range it is a proxy-DHCP server: the existing
DHCP server keeps handing out addresses, dnsmasq only adds the boot information. With --range FIRST,LAST it
is the DHCP server for that range. PXE ROMs get Debian's iPXE over TFTP (undionly.kpxe for BIOS, snponly.efi
or ipxe.efi for UEFI); iPXE is sent on to <server-url>/boot/<mac>.ipxe. dnsmasq runs in the foreground and
is restarted if it dies; SIGTERM or Ctrl-C stops it.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pxe", help="run DHCP/proxy-DHCP + TFTP (dnsmasq) that chains nodes to layerbootd",
                            description=DESCRIPTION)
    parser.add_argument("--interface", "-i", metavar="IF", help="network interface to serve on (pxe.interface)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--proxy", action="store_true", help="proxy-DHCP only (the default unless pxe.range is set)")
    mode.add_argument("--range", dest="dhcp_range", metavar="FIRST,LAST",
                      help="be the DHCP server and hand out these addresses (pxe.range)")
    parser.add_argument("--server-url", metavar="URL",
                        help="layerbootd as the nodes reach it, e.g. http://10.0.0.1:8080 "
                             "(pxe.server_url, else server.public_url)")
    parser.add_argument("--tftp-root", type=Path, metavar="DIR",
                        help="directory served by TFTP (default: <store>/state/pxe/tftp)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="where the generated dnsmasq.conf and leases go (default: <store>/state/pxe)")
    parser.add_argument("--efi-binary", choices=EFI_BINARIES,
                        help="what UEFI clients get (pxe.efi_binary): iPXE (snponly.efi uses the firmware's NIC "
                             "driver), or shimx64.efi for Secure Boot: Debian's signed shim and GRUB, which boot "
                             "the GRUB entries written at start for every registered node")
    parser.add_argument("--print-config", action="store_true",
                        help="print the dnsmasq config and exit without starting anything")
    parser.set_defaults(func=cmd_pxe)
    examples(parser, "layerboot pxe -i eth1 --server-url http://10.0.0.1:8080                # proxy-DHCP",
             "layerboot pxe -i eth1 --range 10.0.0.100,10.0.0.199 --server-url http://10.0.0.1:8080",
             "layerboot pxe -i eth1 --server-url http://10.0.0.1:8080 --print-config",
             "systemctl enable --now layerboot-pxe       # as a service (pxe.* in the config)")


def cmd_pxe(ctx: Context) -> int:
    args, config = ctx.args, ctx.config
    interface = args.interface or config.pxe_interface
    server_url = args.server_url or config.pxe_server_url or config.server_public_url
    if not interface or not server_url:
        raise LayerbootError("layerboot pxe needs an interface and layerbootd's URL",
                             hint="pass --interface IF --server-url http://HOST:PORT (or set pxe.interface and "
                                  "pxe.server_url in the config)")
    dhcp_range = None if args.proxy else (args.dhcp_range or config.pxe_range or None)
    state_dir: Path = (args.state_dir or ctx.paths.state / "pxe").absolute()
    the_plan = plan(interface=interface, server_url=server_url,
                    tftp_root=(args.tftp_root or state_dir / "tftp").absolute(), state_dir=state_dir,
                    dhcp_range=dhcp_range, efi_binary=args.efi_binary or config.pxe_efi_binary)
    the_plan = _with_site_services(config, the_plan)
    if args.print_config:
        print(dnsmasq.render_config(the_plan), end="")
        return 0
    log = logging.getLogger("layerboot.pxe")
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)      # a long-running service says what it does without -v
    served = prepare_tftp_root(the_plan)
    if the_plan.efi_binary == SHIM_BINARY:
        _keep_grub_entries(ctx, the_plan, log)
    dnsmasq.write_config(the_plan)
    mode = "proxy-DHCP for " + str(the_plan.network) if the_plan.proxy else \
        f"DHCP {the_plan.range_start}-{the_plan.range_end}"
    log.info("serving %s on %s (%s); TFTP %s (%s); iPXE chains to %s", mode, the_plan.interface,
             the_plan.address, the_plan.tftp_root, ", ".join(p.name for p in served), the_plan.boot_url)
    log.info("config %s", the_plan.config_file)
    problem = server_problem(the_plan.server_url)
    if problem:
        log.warning("layerbootd does not answer at %s (%s): nodes will stop after DHCP until it does",
                    the_plan.server_url, problem)
    supervisor = dnsmasq.Supervisor(dnsmasq.dnsmasq_argv(the_plan))
    dnsmasq.stop_on_signals(supervisor)
    supervisor.run()
    return 0


def _with_site_services(config, the_plan):  # noqa: ANN001, ANN202
    """The DHCP options of the enabled site services (docs/services.md), pointing at services.address or, when
    that is not set, at our address on the PXE interface. Proxy-DHCP cannot send them (it only answers PXE
    ROMs): then the site's DHCP server has to, and the log says which."""
    import dataclasses

    from layerboot.server.services.base import check_address
    from layerboot.server.services.manage import dhcp_options

    address = check_address(config.services_address, "services.address") if config.services_address else \
        str(the_plan.address)
    options = tuple(dhcp_options(config, address))
    if options and the_plan.proxy:
        logging.getLogger("layerboot.pxe").warning(
            "proxy-DHCP: the site's DHCP server must hand out the site services itself: %s", "; ".join(options))
        return the_plan
    return dataclasses.replace(the_plan, dhcp_options=options)


def _keep_grub_entries(ctx: Context, the_plan, log: logging.Logger) -> None:  # noqa: ANN001
    """The Secure Boot path's per-node GRUB files: written now, then refreshed every GRUB_REFRESH seconds in a
    thread (nodes registered or removed, a profile's new kernel, initrd or command line)."""
    import threading
    import time

    from layerboot.server.auth.boottoken import open_boot_tokens
    from layerboot.server.db import open_database
    from layerboot.server.fleet.netargs import fleet_cmdline
    from layerboot.server.fleet.queries import Fleet
    from layerboot.server.nodes import Registry

    db = open_database(ctx.config, ctx.paths)
    registry, fleet = Registry(db), Fleet(db)
    ttl = ctx.config.server_boot_token_ttl
    tokens = open_boot_tokens(ctx.paths.boot_token_key, ttl)   # the key layerbootd checks boot tokens with

    def export() -> None:
        nodes = [(node.mac, node.profile) for node in registry.all()]
        for line in export_grub_nodes(the_plan.tftp_root, the_plan.server_url, nodes, ctx.profiles,
                                      tokens.mint, max_age=ttl / 2,
                                      node_cmdline=lambda mac, cmdline: fleet_cmdline(fleet, ctx.config, mac, cmdline)):
            log.info("GRUB entry %s", line)

    export()

    def loop() -> None:
        while True:
            time.sleep(GRUB_REFRESH)
            try:
                export()
            except Exception as err:  # noqa: BLE001 - a bad moment (a profile being written) must not stop PXE
                log.warning("GRUB entries not refreshed: %s", err)
    threading.Thread(target=loop, name="grub-entries", daemon=True).start()
