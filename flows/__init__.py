"""Prefect flows (reindex, ...) and the `embedpipe` CLI: thin layers over `pipeline` and `operators`."""
