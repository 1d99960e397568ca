"""Quality: search over a snapshot, retrieval metrics, golden sets, measurement and drift statistics."""
