"""initrd room of layerboot."""
