"""The corpus side: reading and validating records, sharding, chunking, and what a run redoes (delta)."""
