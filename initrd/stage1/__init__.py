"""stage1: the Python PID 1 inside the layerboot initramfs (stdlib only, nothing done at import)."""
