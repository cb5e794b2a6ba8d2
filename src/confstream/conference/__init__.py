"""confstream.conference."""
