"""Models: presets, sizing arithmetic and loading from local files or the hub."""
