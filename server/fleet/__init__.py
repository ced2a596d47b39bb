"""Fleet identity: named nodes with interfaces, groups and clusters, per-node configuration, enrollment.

* :mod:`.records` — the typed records (Interface, Defaults, FleetNode, Group) and inheritance;
* :mod:`.ranges` — name ranges (``n[001-100]``) and counting MACs and IP addresses up;
* :mod:`.queries` — every query of the fleet tables (one module, SQLite and PostgreSQL alike);
* :mod:`.netargs` — a node's interfaces in dracut's kernel command line syntax (the per-node iPXE script);
* :mod:`.render`, :mod:`.hostkeys`, :mod:`.probe`, :mod:`.nodelayer` — the per-node layer from templates;
* :mod:`.manifest` — the per-node signed manifest (profile chain + node layer), through monitor/pins.py;
* :mod:`.exchange` — import and export as CSV and TOML;
* :mod:`.enroll`, :mod:`.discovery` — unknown machines: the discovery boot, pending records, acceptance.

docs/nodes.md is the reference; docs/guide.md walks through a 100-node cluster.
"""
