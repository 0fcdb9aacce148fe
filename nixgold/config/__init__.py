"""The configuration: the typed model, loading (file < environment < flags), validation, and credentials."""
