"""Rack mirrors: HTTP caches in front of layerbootd that serve the immutable objects near the nodes.

* :mod:`.nginx`: ``layerboot mirror nginx-config``, an nginx proxy_cache configuration for a mirror;
* which mirrors a manifest names is in overlays/mirrors.py (the ``mirrors.*`` settings), and which one a node
  uses for each object in initrd/stage1/sources.py. docs/scale.md has the deployment.
"""
