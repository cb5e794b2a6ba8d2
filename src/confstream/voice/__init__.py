"""Programmable voice: the cXML (TwiML) interpreter, sans-I/O (``docs/voice.md``).

``cxml`` parses a document into typed verbs; ``runner`` runs documents as a state machine
(actions out, inputs in). Neither touches a socket, a file or a clock; the call runner that
fetches documents and plays media is built on top of them.
"""
