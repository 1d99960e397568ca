"""Snapshots: publishing and reading versions, manifests, aliases with their quality gate, retention."""
