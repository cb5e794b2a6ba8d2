"""confstream.rtp."""
