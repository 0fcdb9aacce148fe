"""nixgold test bed: Proxmox API simulator, stand-in images, namespaced network."""
