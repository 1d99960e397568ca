"""Jobs: the build as plain steps, shard work units, and the migration and monitoring decisions."""
