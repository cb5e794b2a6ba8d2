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
  (the load generator's ``--janus URL`` mode), with ``--streams-sweep`` the streams-per-core
  sweep, with ``--compare`` the spread over earlier runs; the report ends with
  ``bench/history.md`` (what each performance change bought).

Tools for one change at a time (in-process, no server):

* :mod:`bench.icount` — instruction counts of the hot paths under callgrind (load-independent);
* :mod:`bench.micro` — CPU per participant-frame of the RTP path, and its pieces;
* :mod:`bench.memory` — memory per participant and per stream, and a full collection's cost.
"""
