"""Custom resources: schemas, the store protocol, and its backends (embedded SQLite, Kubernetes API)."""
