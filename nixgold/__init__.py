"""nixgold: a typed Python config -> a verified NixOS golden template on Proxmox VE."""

__version__ = "0.1.0"
