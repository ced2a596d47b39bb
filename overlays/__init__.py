"""overlays room of layerboot."""
