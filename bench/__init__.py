"""The confstream benchmark: ``python -m bench.run`` (see docs/benchmarks.md).

Parts, each its own process so the server is measured alone:

* :mod:`bench.loadgen` — N SIP callers (digest auth, 20 ms PCMU RTP with speech-like audio and a
  loud marked burst per conference every second);
* :mod:`bench.sink` — a TLS WebSocket server (trustme chain) that receives the conference
  streams and timestamps each burst's arrival;
* :mod:`bench.run` — starts the server, the sink and the load generator, creates the streams,
  samples the server's CPU, memory and ``/metrics``, and hands the figures to
  :mod:`bench.report`, which writes ``docs/benchmarks.md`` and ``docs/benchmarks.png``;
  with ``--with-janus`` it runs the same RTP load against Janus AudioBridge for comparison
  (the load generator's ``--janus URL`` mode).
"""
