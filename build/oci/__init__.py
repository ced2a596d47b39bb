"""OCI images as layerboot layers: ``layerboot base import-oci`` (how Warewulf users make their images).

* :mod:`.layout`: the image, from an OCI archive or an OCI layout directory. skopeo (a Debian package) copies
  any of them into a fresh layout of our own, locally, checking every blob's digest on the way; the manifest
  and config are then read from there.
* :mod:`.whiteouts`: an OCI layer tar's members as overlayfs upper-dir members: ``.wh.NAME`` becomes a
  whiteout (char 0/0 ``NAME``), ``.wh..wh..opq`` makes its directory opaque (``trusted.overlay.opaque=y``).
* :mod:`.importer`: flattened into one base layer (umoci unpacks the layers in order, applying whiteouts; the
  tree is packed like ``layer import``), or one layerboot layer per image layer (the first a base, the others
  overlays made on it), each streamed through the bake's checks into tar2sqfs.
"""
