"""server room of layerboot."""
