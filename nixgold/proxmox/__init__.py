"""The Proxmox VE API: the client (transport, retries, tasks), VMs (clones, destroy, ownership) and the guest agent."""
