"""confstream.sip."""
