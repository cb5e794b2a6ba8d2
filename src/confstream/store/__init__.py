"""confstream.store."""
