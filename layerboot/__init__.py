"""layerboot: netboot diskless nodes from a signed base squashfs plus ordered overlay layers.

The package maps the repository's rooms: ``layerboot.overlays`` (store, profile and manifest model, bake),
``layerboot.server`` (daemon), ``layerboot.tools`` (CLIs), ``layerboot.build`` (image builders) and
``layerboot.initrd`` (initramfs module plus ``stage1``).  This top package holds the small shared helpers:
``run`` (the one command runner), ``log`` (errors and logging), ``paths``, ``settings`` and ``atomic``.
"""

__version__ = "0.1.0"
