"""confstream.media."""
