"""`invoke build-template`: preflight, the per-build key, the install status endpoint, and the builder that runs Packer."""
