"""The Debian stand-ins for what only NixOS has: install.sh/cleanup.sh rendered from nixgold's own
templates (``templates/``, extending ``nixgold/templates``) and the NixOS template's cloud-init and
hostname behaviour (``nixos.py``), for the stand-in installer and the stand-in images."""
