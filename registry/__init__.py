"""Function manifests and (later) bundles, the Redis key schema and mesh membership."""
