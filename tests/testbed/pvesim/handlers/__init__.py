"""API handlers, one module per area; each registers its routes on import."""
