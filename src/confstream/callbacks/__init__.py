"""confstream.callbacks."""
