"""layerboot: netboot diskless nodes from a signed base squashfs plus ordered overlay layers.

The package maps the repository's rooms: ``layerboot.overlays`` (store, profile and manifest model, bake),
``layerboot.server`` (daemon), ``layerboot.tools`` (CLIs), ``layerboot.build`` (image builders) and
``layerboot.initrd`` (initramfs module plus ``stage1``).  This top package holds the small shared helpers:
``run`` (the one command runner), ``log`` (errors and logging), ``paths``, ``settings`` and ``atomic``.
"""

__version__ = "0.1.0"

import os as _os

# In a source checkout the rooms are top-level folders (pyproject.toml's package-dir maps them into this
# package when it is installed). Find them from the checkout too, so that `python3 -m layerboot` and the tests,
# started in the checkout, run the checkout's code even where an installed copy (/opt/layerboot) exists.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_checkout, "overlays", "__init__.py")):
    __path__.append(_checkout)  # type: ignore[name-defined]  # noqa: F821 - a package's own __path__
del _os, _checkout
