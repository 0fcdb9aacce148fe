"""Everything rendered from the config, as pure functions.

Inputs, HCL, the Packer template, guest files, boot_command, plan, manifest.
"""
