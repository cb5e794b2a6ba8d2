"""Developer tools shared by the demo, the benchmark and the tests (real peers, not mocks).

* :mod:`confstream.tools.net` — free ports, and RTP ranges outside the kernel's ephemeral ports.
* :mod:`confstream.tools.tls` — a throwaway CA (``trustme``, the ``dev`` extra) for local
  ``wss://`` and ``https://`` peers.
* :mod:`confstream.tools.server` — ``confstream serve`` in a subprocess.
* :mod:`confstream.tools.sipp` — sipp callers that join a conference.
* :mod:`confstream.tools.participants` — in-process tone participants and recording taps.
* :mod:`confstream.tools.metrics` — metric values read by their exported names.

The server itself never imports this package.
"""
