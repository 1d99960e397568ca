"""Object storage: one abstraction over fsspec with commit primitives, Parquet tables, and the layout of every key."""
