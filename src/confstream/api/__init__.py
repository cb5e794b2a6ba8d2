"""confstream.api."""
