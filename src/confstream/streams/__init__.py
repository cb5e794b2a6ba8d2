"""confstream.streams."""
