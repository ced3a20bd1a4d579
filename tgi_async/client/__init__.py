"""generate.v3 clients: one shard, all shards of a model, and the pb <-> plain data conversion."""
