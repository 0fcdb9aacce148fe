"""Packer: which dialect, its environment, its machine-readable output, and the runner."""
