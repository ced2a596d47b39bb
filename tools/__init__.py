"""tools room of layerboot."""
