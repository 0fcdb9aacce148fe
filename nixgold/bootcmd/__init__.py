"""The boot_command.

Typed steps compiled for Packer (steps), Packer's grammar replayed as keys (grammar), what typing
costs (stats).
"""
