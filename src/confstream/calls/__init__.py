"""Calls run by voice applications (docs/voice.md): the voice webhook
(:mod:`confstream.calls.webhook`), ``<Say>`` speech (:mod:`confstream.calls.speech`) and the
call runtime that runs cXML on live calls (:mod:`confstream.calls.runtime`).

Layer 5, beside :mod:`confstream.services`: the services use it, it never imports them (the
runtime reaches them through the :class:`~confstream.calls.runtime.VoiceServices` protocol).
"""
