"""build room of layerboot."""
