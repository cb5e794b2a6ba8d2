"""confstream: conference audio server with live Conference Streams."""

__version__ = "0.1.0"
